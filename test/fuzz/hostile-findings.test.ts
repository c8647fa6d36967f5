/**
 * The findings of the hostile-tar property suites (test/fuzz/*.test.ts), each as its minimal tar.
 * Each is a plain regression test now that it is fixed:
 *   - upload-idle-counts-our-time (fixed): the idle watchdog counted ApplyDiff's own work (input
 *     ended, or paused by its backpressure) as a stalled upload;
 *   - after-end-marker (fixed): entries after the end-of-archive marker are applied and ingested,
 *     although GNU tar and Go's archive/tar (Docker's own extractor) stop there;
 *   - hardlink-to-directory, kernel-refused-xattr, mtime-out-of-range (fixed): input errors come
 *     back as DRIVER_IO_FAILED (an 'unavailable' kind) or as "truncated or corrupt".
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import t, { type Test } from 'tap';
import { applyDiff } from '../../driver/apply-diff.js';
import { makeRepo } from '../lib/repo-fixture.js';
import { notRoot, skipLoudly } from '../lib/skip.js';
import { tarOf } from '../lib/tar-of.js';

const ROOT_ONLY = 'HOSTILE FINDINGS TEST SKIPPED: needs root to chown and mknod';
/** An assertion about an open bug: it runs, and while it fails it shows as `not ok … # TODO`. */

function layerDir(t: Test): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'finding-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A tar whose end-of-archive marker is followed by one more entry and a second marker. */
async function hiddenAfterEnd(): Promise<Buffer> {
  return Buffer.concat([await tarOf([{ type: 'file', name: 'shown', content: 'shown' }]), await tarOf([{ type: 'file', name: 'hidden', content: 'hidden' }])]);
}

t.test('upload-idle-counts-our-time: a whole body that takes longer to apply than the idle limit is no stall', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  // 60 FIFOs: one mknod process each, far longer than 100 ms in all.
  const tar = await tarOf(Array.from({ length: 60 }, (_, i) => ({ type: 'fifo' as const, name: `p${i}` })));
  const layer = layerDir(t);
  await applyDiff(layer, Readable.from([tar]), { idleTimeoutMs: 100 });
  t.equal(fs.readdirSync(layer).length, 60, 'the body arrived in one chunk and ended: applied');
  const layer2 = layerDir(t);
  const body = new PassThrough();
  void (async () => {
    for (let o = 0; o < tar.length; o += 4096) if (!body.write(tar.subarray(o, o + 4096))) await new Promise((r) => body.once('drain', r));
    body.end();
  })();
  await applyDiff(layer2, body, { idleTimeoutMs: 100 });
  t.equal(fs.readdirSync(layer2).length, 60, 'a body held back by our own backpressure: applied');
  const stalled = new PassThrough();
  stalled.write(tar.subarray(0, 4096));
  await t.rejects(applyDiff(layerDir(t), stalled, { idleTimeoutMs: 100 }), { code: 'DRIVER_UPLOAD_STALLED' }, 'an uploader that stops is still a stall');
});

t.test('after-end-marker: ApplyDiff ignores or refuses what follows the end-of-archive marker', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const layer = layerDir(t);
  const r = await applyDiff(layer, Readable.from([await hiddenAfterEnd()])).then(() => 'applied', (e: { code?: string }) => String(e.code));
  t.notOk(r === 'applied' && fs.existsSync(path.join(layer, 'hidden')), `"hidden" after the end marker must not be applied (${r})`);
});

t.test('after-end-marker: the writer ignores or refuses what follows the end-of-archive marker', async (t) => {
  const repo = await makeRepo(t.testdir());
  const r = await repo.ingest('/layers/x', await hiddenAfterEnd()).then(() => 'ingested', (e: { code?: string }) => String(e.code));
  const read = await repo.read();
  t.notOk(r === 'ingested' && read.entries.has('/layers/x/hidden'), `"hidden" after the end marker must not be ingested (${r})`);
});

t.test('input errors are tar errors, not I/O failures', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const cases: [string, Buffer][] = [
    ['hardlink-to-directory', await tarOf([{ type: 'directory', name: 'd' }, { type: 'link', name: 'h', target: 'd' }])],
    ['kernel-refused-xattr', await tarOf([{ type: 'symlink', name: 's', target: 'x', pax: { 'SCHILY.xattr.user.k': 'v' } }])],
    ['mtime-out-of-range', await tarOf([{ type: 'file', name: 'f', content: 'x', pax: { mtime: '999999999999999' } }])],
  ];
  for (const [name, tar] of cases) {
    await t.rejects(applyDiff(layerDir(t), Readable.from([tar])), { code: /^DRIVER_TAR_(BAD_ENTRY|CORRUPT)$/, message: /entry "/ }, `${name}: a tar error naming the entry`);
  }
});
