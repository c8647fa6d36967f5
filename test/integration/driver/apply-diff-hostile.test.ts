/**
 * Hostile layers against ApplyDiff, each named after its fault: metadata through symlinks
 * (mode-through-symlink, dir-time-through-symlink), uploads that stop (upload-stalled,
 * upload-cut-off, crash-mid-apply), whiteouts of '', '.' and '..' (whiteout-dot-names) and
 * overlayfs attributes smuggled as xattrs (overlay-xattr).
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import t, { type Test } from 'tap';
import { applyDiff } from '../../../driver/apply-diff.js';
import { GraphDriver } from '../../../driver/index.js';
import { createPluginApp, listenPlugin } from '../../../plugin/server.js';
import { notRoot, skipLoudly } from '../../lib/skip.js';
import { tarOf } from '../../lib/tar-of.js';

const ROOT_ONLY = 'HOSTILE APPLYDIFF TEST SKIPPED: needs root to chown and mknod';

function tmp(t: Test, prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A canary tree outside the layer: modes, owners and times that must not move. */
function canary(t: Test): { dir: string; snapshot: () => string } {
  const dir = tmp(t, 'canary-');
  fs.writeFileSync(path.join(dir, 'file'), 'host file', { mode: 0o644 });
  fs.mkdirSync(path.join(dir, 'sub'), { mode: 0o755 });
  const old = new Date('2001-01-01T00:00:00Z');
  fs.utimesSync(path.join(dir, 'sub'), old, old);
  fs.utimesSync(path.join(dir, 'file'), old, old);
  const snapshot = () => ['', 'file', 'sub'].map((n) => {
    const st = fs.lstatSync(path.join(dir, n));
    return `${n}:${(st.mode & 0o7777).toString(8)}:${st.uid}:${st.gid}:${st.mtimeMs}`;
  }).join(' ') + ' ' + fs.readdirSync(dir).sort().join(',');
  return { dir, snapshot };
}

t.test('mode-through-symlink: a set-ID symlink entry changes neither the link target nor anything outside', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const c = canary(t);
  const before = c.snapshot();
  const layer = tmp(t, 'layer-');
  await applyDiff(layer, Readable.from([await tarOf([
    { type: 'symlink', name: 'innocent', target: path.join(c.dir, 'file'), mode: 0o6777 },
    { type: 'symlink', name: 'dirlink', target: path.join(c.dir, 'sub'), mode: 0o7777, uid: 1234, gid: 1234 },
  ])]));
  t.equal(c.snapshot(), before, 'the host files keep their modes, owners and times');
  t.equal(fs.readlinkSync(path.join(layer, 'innocent')), path.join(c.dir, 'file'), 'the symlink itself is stored');
  t.equal(fs.lstatSync(path.join(layer, 'dirlink')).uid, 1234, 'its own owner is set (lchown)');
});

t.test('dir-time-through-symlink: a directory replaced by a symlink loses its pending time update', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const c = canary(t);
  const before = c.snapshot();
  const layer = tmp(t, 'layer-');
  await applyDiff(layer, Readable.from([await tarOf([
    { type: 'directory', name: 'a', mtime: new Date('2010-10-10T00:00:00Z') },
    { type: 'directory', name: 'a/sub', mtime: new Date('2010-10-10T00:00:00Z') },
    { type: 'symlink', name: 'a', target: c.dir },
  ])]));
  t.equal(c.snapshot(), before, 'the final pass over directory times did not reach through the symlink');
});

t.test('whiteout-dot-names: .wh., .wh.. and .wh... are refused, naming the entry, and the layer is left empty', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  for (const name of ['.wh.', '.wh..', '.wh...', 'd/.wh..', 'd/.wh...', '.wh.x/y']) {
    const parent = tmp(t, 'parent-');
    const layer = path.join(parent, 'diff');
    fs.mkdirSync(layer);
    fs.writeFileSync(path.join(parent, 'layer.json'), '{}');
    await t.rejects(applyDiff(layer, Readable.from([await tarOf([
      { type: 'file', name: 'keep', content: 'x' }, { type: 'directory', name: 'd' }, { type: 'file', name, content: '' },
    ])])), { code: 'DRIVER_TAR_BAD_WHITEOUT', message: new RegExp(JSON.stringify(name).replace(/[.]/g, '\\.')) }, `${name} refused`);
    t.ok(fs.existsSync(layer), `${name}: the layer directory itself still exists`);
    t.same(fs.readdirSync(layer), [], `${name}: what the failed apply wrote is gone`);
    t.same(fs.readdirSync(parent).sort(), ['diff', 'layer.json'], `${name}: nothing beside the layer was touched`);
  }
  const layer = tmp(t, 'layer-');
  await applyDiff(layer, Readable.from([await tarOf([
    { type: 'file', name: '.wh..wh.aufs', content: '' }, { type: 'directory', name: '.wh..wh.plnk' }, { type: 'file', name: '.wh..wh.plnk/1.2', content: 'x' },
    { type: 'file', name: 'ok', content: 'y' },
  ])]));
  t.same(fs.readdirSync(layer), ['ok'], 'AUFS bookkeeping entries are skipped, as Docker skips them');
});

t.test('overlay-xattr and bad owners: refused with coded errors', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const layer = tmp(t, 'layer-');
  await t.rejects(applyDiff(layer, Readable.from([await tarOf([
    { type: 'directory', name: 'd', pax: { 'SCHILY.xattr.trusted.overlay.redirect': '/etc' } },
  ])])), { code: 'DRIVER_TAR_BAD_ENTRY', message: /entry "d" sets the overlayfs attribute "trusted.overlay.redirect"/ });
  await t.rejects(applyDiff(layer, Readable.from([await tarOf([{ type: 'file', name: 'f', pax: { uid: '4294967295' } }])])),
    { code: 'DRIVER_TAR_BAD_ENTRY', message: /entry "f" has the invalid uid/ }, '(uid_t)-1 is no owner');
  t.same(fs.readdirSync(layer), []);
});

t.test('upload-stalled and upload-cut-off: ApplyDiff settles with a code and removes what it wrote', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const whole = await tarOf([{ type: 'file', name: 'first', content: Buffer.alloc(3000, 1) }, { type: 'file', name: 'second', content: Buffer.alloc(1_000_000, 2) }]);
  const stalled = new PassThrough();
  stalled.write(whole.subarray(0, 8192));
  const layer = tmp(t, 'layer-');
  const t0 = Date.now();
  await t.rejects(applyDiff(layer, stalled, { idleTimeoutMs: 300 }), { code: 'DRIVER_UPLOAD_STALLED' }, 'a body that stops sending fails');
  t.ok(Date.now() - t0 < 3000, `settled after ${Date.now() - t0} ms (idle limit 300 ms)`);
  t.same(fs.readdirSync(layer), [], 'the half-written layer is emptied');

  const cut = new PassThrough();
  cut.write(whole.subarray(0, 8192));
  setTimeout(() => cut.destroy(new Error('socket hang up')), 50);
  await t.rejects(applyDiff(layer, cut, { idleTimeoutMs: 60_000 }), { code: 'DRIVER_UPLOAD_ABORTED', message: /socket hang up/ }, 'a body that breaks fails at once');
  t.same(fs.readdirSync(layer), []);

  const atBoundary = await tarOf([{ type: 'file', name: 'first', content: 'one' }, { type: 'file', name: 'second', content: 'two' }], { omitEndMarker: true });
  await t.rejects(applyDiff(layer, Readable.from([atBoundary.subarray(0, 1024)])), { code: 'DRIVER_TAR_CORRUPT', message: /end-of-archive marker/ },
    'a body closed at an entry boundary is not taken for a shorter layer');
  await t.rejects(applyDiff(layer, Readable.from([Buffer.alloc(0)])), { code: 'DRIVER_TAR_CORRUPT' }, 'nor is an empty body');
  t.same(fs.readdirSync(layer), []);
});

function post(socket: string, p: string, body?: Buffer, hold = false): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method: 'POST', path: p, headers: { Host: '' } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (hold) { req.write(body); return; } // the uploader dies: the body never ends
    req.end(body);
  });
}

t.test('upload-stalled through the plugin: the daemon gets the coded error, and the layer lock is free', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const home = tmp(t, 'home-');
  const sockDir = tmp(t, 'sock-');
  const socket = path.join(sockDir, 'p.sock');
  const driver = new GraphDriver({ applyIdleTimeoutMs: 400 });
  const server = await listenPlugin(createPluginApp({ driver, stateDir: path.join(home, 'state'), log: () => {}, uploadIdleTimeoutMs: 400 }), socket);
  t.teardown(() => new Promise<void>((r) => { server.close(() => r()); server.closeAllConnections(); }));
  await post(socket, '/GraphDriver.Init', Buffer.from(JSON.stringify({ Home: path.join(home, 'd') })));
  await post(socket, '/GraphDriver.Create', Buffer.from('{"ID":"l1"}'));
  const tarBytes = await tarOf([{ type: 'file', name: 'big', content: Buffer.alloc(2_000_000, 3) }]);
  const t0 = Date.now();
  const r = await post(socket, '/GraphDriver.ApplyDiff?id=l1&parent=', tarBytes.subarray(0, 1024), true);
  t.equal(r.status, 500);
  t.match(r.text, /DRIVER_UPLOAD_STALLED/, 'the answer names the stall');
  t.ok(Date.now() - t0 < 5000, `answered after ${Date.now() - t0} ms`);
  const removed = await post(socket, '/GraphDriver.Remove', Buffer.from('{"ID":"l1"}'));
  t.same([removed.status, removed.text], [200, '{}'], 'Remove of the same layer is not stuck behind its lock');

  await post(socket, '/GraphDriver.Create', Buffer.from('{"ID":"l2"}'));
  const bad = await post(socket, '/GraphDriver.ApplyDiff?id=l2&parent=', Buffer.concat([await tarOf([{ type: 'file', name: '../x' }], { omitEndMarker: true }), Buffer.alloc(4096)]), true);
  t.match(bad.text, /DRIVER_TAR_PATH_ESCAPE/, 'a refused tar whose upload then stalls is answered too, after the idle limit');
});

t.test('crash-mid-apply: a restarted driver removes the half-applied layer', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const home = path.join(tmp(t, 'home-'), 'd');
  const d1 = new GraphDriver();
  await d1.init({ home, opts: [] });
  await d1.create('base', '', false);
  await d1.applyDiff('base', '', Readable.from([await tarOf([{ type: 'file', name: 'ok', content: 'x' }])]));
  await d1.create('half', 'base', false);
  const body = new PassThrough();
  body.write((await tarOf([{ type: 'file', name: 'part', content: Buffer.alloc(100_000) }])).subarray(0, 60_000));
  const pending = d1.applyDiff('half', 'base', body);
  pending.catch(() => {});
  await new Promise((r) => setTimeout(r, 200));
  // The plugin process dies here (kill -9): its marker and half a layer stay on disk.
  t.ok(fs.existsSync(path.join(home, 'layers', 'half', 'applying')), 'the layer is marked while ApplyDiff runs');
  const d2 = new GraphDriver();
  await d2.init({ home, opts: [] });
  t.notOk(d2.exists('half'), 'the half-applied layer is gone after the restart');
  t.notOk(fs.existsSync(path.join(home, 'layers', 'half')), 'with its directories');
  t.ok(d2.exists('base'), 'complete layers stay');
  body.destroy();
  await pending.catch(() => {});
});
