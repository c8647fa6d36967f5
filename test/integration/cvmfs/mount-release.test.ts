import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import v8 from 'node:v8';
import vm from 'node:vm';
import t from 'tap';
import { openRepository, serveRepository } from '../../../cvmfs/index.js';
import { mountRepository } from '../../../cvmfs/fuse/index.js';
import { skipWithoutFuse } from '../../lib/fuse-gate.js';
import { makeRepo } from '../../lib/repo-fixture.js';
import { tarOf } from '../../lib/tar-of.js';

const run = promisify(execFile);

t.test('an unmounted, closed repository can be collected (fuse-native keeps its instance forever)', async (t) => {
  if (skipWithoutFuse(t)) return;
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'mount-release-'));
  const repo = await makeRepo(base, 'release.example.org');
  await repo.ingest('/layer', await tarOf([{ type: 'file', name: 'a', content: Buffer.from('alpha') }]));
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(async () => { await srv.close(); fs.rmSync(base, { recursive: true, force: true }); });
  const pem = fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8');
  const cycle = async (k: number): Promise<WeakRef<object>> => {
    const r = await openRepository({ fqrn: repo.fqrn, servers: [srv.url], publicKeys: [{ name: 'k', pem }], cacheDir: path.join(base, `cache${k}`) });
    const mnt = path.join(base, `mnt${k}`);
    fs.mkdirSync(mnt);
    const m = await mountRepository(r, { mountpoint: mnt });
    // In a child process: this one serves the mount.
    t.equal((await run('cat', [path.join(mnt, 'layer', 'a')])).stdout, 'alpha', `mount ${k} reads`);
    await m.unmount();
    await r.close();
    return new WeakRef(r);
  };
  const refs: WeakRef<object>[] = [];
  for (let k = 0; k < 4; k++) refs.push(await cycle(k));
  for (let i = 0; i < 5; i++) { await new Promise((res) => setTimeout(res, 50)); gc(); }
  const alive = refs.filter((r) => r.deref() !== undefined).length;
  t.ok(alive <= 1, `${alive} of 4 closed repositories still reachable (4 before the fix; the last may still sit in a register)`);
});
