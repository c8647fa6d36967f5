/** ApplyDiff details that Docker's layer tars rely on: later entries win, metadata is exact. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import t from 'tap';
import { applyDiff } from '../../../driver/apply-diff.js';
import { notRoot, skipLoudly } from '../../lib/skip.js';
import { tarOf } from '../../lib/tar-of.js';

const mtime = new Date('2020-02-02T02:02:02Z');

t.test('entries repeated in one tar replace the earlier ones; metadata is exact; small and large files', async (t) => {
  if (notRoot()) { skipLoudly(t, 'APPLYDIFF TEST SKIPPED: needs root to chown'); return; }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'applydiff-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const big = Buffer.alloc(5 * 1024 * 1024 + 17, 7);
  const size = await applyDiff(dir, Readable.from([await tarOf([
    { type: 'file', name: 'a', content: 'first' },
    { type: 'file', name: 'a', content: 'second', mode: 0o600, uid: 12, gid: 34, mtime },
    { type: 'directory', name: 'd' },
    { type: 'file', name: 'd/inside', content: 'x' },
    { type: 'file', name: 'd', content: 'now a file' },
    { type: 'file', name: 'x/y/deep', content: 'implied parents' },
    { type: 'symlink', name: 'x/y', target: '/elsewhere' },
    { type: 'file', name: 'big', content: big, mode: 0o2755, uid: 5, gid: 6, mtime },
    { type: 'link', name: 'big-link', target: 'big' },
  ])]));
  t.equal(fs.readFileSync(path.join(dir, 'a'), 'utf8'), 'second', 'the later entry wins');
  const a = fs.statSync(path.join(dir, 'a'));
  t.same([a.mode & 0o7777, a.uid, a.gid, a.mtime.getTime()], [0o600, 12, 34, mtime.getTime()], 'mode, owner and mtime of the later entry');
  t.equal(fs.readFileSync(path.join(dir, 'd'), 'utf8'), 'now a file', 'a directory replaced by a file');
  t.equal(fs.readlinkSync(path.join(dir, 'x/y')), '/elsewhere', 'a directory replaced by a symlink');
  t.ok(fs.readFileSync(path.join(dir, 'big')).equals(big), 'a large file streamed intact');
  const b = fs.statSync(path.join(dir, 'big'));
  t.same([b.mode & 0o7777, b.uid, b.gid, b.nlink], [0o2755, 5, 6, 2], 'setgid survives the chown; the hardlink shares the inode');
  t.equal(size, 'first'.length + 'second'.length + 1 + 'now a file'.length + 'implied parents'.length + big.length, 'Size sums the regular files written');

  await applyDiff(dir, Readable.from([await tarOf([{ type: 'file', name: 'a', content: 'third' }, { type: 'file', name: 'x/y/z', content: 'z' }])])).then(
    () => t.fail('writing through a symlink must be refused'), (err: Error) => t.match(err.message, /through the symlink x\/y/, 'a second apply checks what is on disk'));
  t.equal(fs.readFileSync(path.join(dir, 'a'), 'utf8'), 'third', 'and replaces existing files');

  const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'applydiff-outside-'));
  t.teardown(() => fs.rmSync(outside, { recursive: true, force: true }));
  const swapped = fs.mkdtempSync(path.join(os.tmpdir(), 'applydiff-swap-'));
  t.teardown(() => fs.rmSync(swapped, { recursive: true, force: true }));
  await t.rejects(applyDiff(swapped, Readable.from([await tarOf([
    { type: 'file', name: 'p/q/first', content: '1' }, { type: 'symlink', name: 'p/q', target: outside }, { type: 'file', name: 'p/q/evil', content: 'escaped' },
  ])])), { code: 'DRIVER_TAR_PATH_ESCAPE' }, 'a directory swapped for a symlink within one tar is not written through');
  t.same(fs.readdirSync(outside), [], 'nothing written outside the layer');
  fs.writeFileSync(path.join(outside, 'secret'), 'host file');
  const linked = fs.mkdtempSync(path.join(os.tmpdir(), 'applydiff-link-'));
  t.teardown(() => fs.rmSync(linked, { recursive: true, force: true }));
  await t.rejects(applyDiff(linked, Readable.from([await tarOf([
    { type: 'symlink', name: 's', target: outside }, { type: 'link', name: 'h', target: 's/secret' },
  ])])), { code: 'DRIVER_TAR_PATH_ESCAPE', message: /hardlink "h" points through the symlink s/ }, 'a hardlink through a symlink is refused');
  t.equal(fs.statSync(path.join(outside, 'secret')).nlink, 1, 'the host file got no second name');
});
