/** dockerd --userns-remap: layers stored with host owners, tars carrying container owners. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import t from 'tap';
import tar from 'tar-stream';
import { GraphDriver } from '../../../driver/index.js';
import { tarOf } from '../../lib/tar-of.js';
import { notRoot, skipLoudly } from '../../lib/skip.js';

const MAP = [{ containerId: 0, hostId: 100000, size: 65536 }];

async function headers(stream: Readable): Promise<Map<string, tar.Header>> {
  const out = new Map<string, tar.Header>();
  const ex = tar.extract();
  stream.pipe(ex as unknown as NodeJS.WritableStream);
  for await (const e of ex) { out.set(e.header.name, e.header); e.resume(); }
  return out;
}

t.test('owners shift into the host range on ApplyDiff and back on Diff', async (t) => {
  if (notRoot()) { skipLoudly(t, 'USERNS DRIVER TEST SKIPPED: needs root to chown'); return; }
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'userns-'));
  t.teardown(() => fs.rmSync(home, { recursive: true, force: true }));
  const d = new GraphDriver();
  await t.rejects(d.init({ home, opts: [], uidMaps: [{ containerId: 0, hostId: 100000, size: 0 }], gidMaps: [] }), { code: 'DRIVER_BAD_REQUEST' }, 'an empty range is refused');
  await d.init({ home, opts: [], uidMaps: MAP, gidMaps: MAP });
  const hs = fs.statSync(home);
  t.equal(hs.mode & 0o777, 0o710, 'Home lets the remapped root group through');
  t.equal(hs.gid, 100000);

  await d.create('base', '', false);
  const size = await d.applyDiff('base', '', Readable.from([await tarOf([
    { type: 'directory', name: 'etc', uid: 0, gid: 0 },
    { type: 'file', name: 'etc/user-file', content: 'u', uid: 1000, gid: 1001, mode: 0o4755 },
    { type: 'file', name: 'a/b/implicit', content: 'i' },
    { type: 'symlink', name: 'etc/link', target: 'user-file', uid: 5, gid: 6 },
  ])]));
  t.equal(size, 2);
  const diffDir = d.metadata('base').UpperDir!;
  const owner = (rel: string) => { const st = fs.lstatSync(path.join(diffDir, rel)); return `${st.uid}:${st.gid}`; };
  t.equal(owner(''), '100000:100000', 'the layer root belongs to the remapped root');
  t.equal(owner('etc'), '100000:100000');
  t.equal(owner('etc/user-file'), '101000:101001', 'uid 1000 is stored as host uid 101000');
  t.equal(fs.statSync(path.join(diffDir, 'etc/user-file')).mode & 0o7777, 0o4755, 'setuid kept after the chown');
  t.equal(owner('a'), '100000:100000', 'directories implied by a path belong to the remapped root');
  t.equal(owner('etc/link'), '100005:100006', 'symlinks too');

  const out = await headers(d.diff('base', ''));
  t.same([out.get('etc/')?.uid, out.get('etc/user-file')?.uid, out.get('etc/user-file')?.gid, out.get('etc/link')?.uid], [0, 1000, 1001, 5],
    'Diff gives container owners back');

  await d.create('top', 'base', false);
  await t.rejects(d.applyDiff('top', 'base', Readable.from([await tarOf([{ type: 'file', name: 'far', content: 'x', uid: 70000, gid: 0 }])])),
    { code: 'DRIVER_TAR_CORRUPT', message: /entry "far" is owned by 70000:0, which the daemon's user namespace map \(--userns-remap\) does not cover/ },
    'an owner outside the map is named');
  await d.create('rw', 'base', true);
  const st = fs.statSync(d.metadata('rw').UpperDir!);
  t.equal(`${st.uid}:${st.gid}`, '100000:100000', 'a container layer root belongs to the remapped root');

  const again = new GraphDriver();
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'userns-state-'));
  t.teardown(() => fs.rmSync(state, { recursive: true, force: true }));
  await d.init({ home, opts: [], uidMaps: MAP, gidMaps: MAP }, state);
  t.ok(await again.resume(state), 'a restarted plugin resumes');
  t.same((await headers(again.diff('base', ''))).get('etc/user-file')?.uid, 1000, 'with the same ID map');
});
