/**
 * Hostile layers through a real dockerd on the managed plugin: a set-ID symlink aimed at the
 * plugin's own files (mode-through-symlink), a top-level `.wh...` (whiteout-dot-names), and a
 * `kill -9` of the plugin in the middle of an upload (crash-mid-apply).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { tarOf } from '../lib/tar-of.js';
import type { Daemon } from '../lib/dockerd.js';

const storeLayers = (d: Daemon) => fs.readdirSync(path.join(d.home, 'layers')).sort();
const modeOf = (p: string) => (fs.lstatSync(p).mode & 0o7777).toString(8);

export function hostileImageTests(t: Test, daemon: () => Daemon): void {
  t.test('mode-through-symlink and whiteout-dot-names through docker import: the plugin and its store are untouched', async (t) => {
    const d = daemon();
    // The plugin's rootfs as the host sees it: <data-root>/plugins/<id>/rootfs.
    const rootfs = path.join(d.home, '..', '..', 'rootfs');
    const pkg = path.join(rootfs, 'opt/cvmfs-graphdriver/package.json');
    t.ok(fs.existsSync(pkg), `the plugin rootfs is at ${rootfs}`);
    const before = [modeOf(rootfs), modeOf(pkg), modeOf(path.join(rootfs, 'state'))];
    await d.docker(['import', '-', 'hostile:links'], { input: await tarOf([
      { type: 'symlink', name: 'root-link', target: '/', mode: 0o7777 },
      { type: 'symlink', name: 'innocent', target: '/opt/cvmfs-graphdriver/package.json', mode: 0o6777 },
      { type: 'symlink', name: 'state', target: '/state', mode: 0o6777 },
    ]) });
    t.same([modeOf(rootfs), modeOf(pkg), modeOf(path.join(rootfs, 'state'))], before, 'no mode of the plugin\'s own files changed');
    await d.docker(['rmi', 'hostile:links']);

    const layers = storeLayers(d);
    const r = await d.docker(['import', '-', 'hostile:wh'], { input: await tarOf([{ type: 'file', name: 'keep', content: 'x' }, { type: 'file', name: '.wh...' }]), allowFail: true });
    t.not(r.code, 0, 'docker import fails');
    t.match(r.stderr, /DRIVER_TAR_BAD_WHITEOUT: entry "\.wh\.\.\."/, 'with the coded error naming the entry');
    t.ok(fs.existsSync(path.join(d.home, 'layers')), 'the layer store is intact');
    t.same(storeLayers(d), layers, 'the failed layer is gone, nothing else is');
  });

  t.test('crash-mid-apply: kill -9 of the plugin during an upload; the import ends, the half layer is removed', async (t) => {
    const d = daemon();
    const layers = storeLayers(d);
    const body = await tarOf([{ type: 'file', name: 'big', content: randomBytes(64 * 1024 * 1024) }]);
    const child = spawn('docker', ['import', '-', 'hostile:crash'], { env: { ...process.env, DOCKER_HOST: `unix://${path.join(d.dir, 'docker.sock')}` } });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.stdout.resume();
    const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1)));
    child.stdin.on('error', () => {});
    child.stdin.write(body.subarray(0, 8 * 1024 * 1024));
    const applying = () => storeLayers(d).some((id) => fs.existsSync(path.join(d.home, 'layers', id, 'applying')));
    for (let i = 0; i < 300 && !applying(); i++) await new Promise((r) => setTimeout(r, 100));
    t.ok(applying(), 'ApplyDiff is under way (its layer is marked)');
    await d.restartPlugin();
    child.stdin.end(body.subarray(8 * 1024 * 1024));
    const t0 = Date.now();
    const code = await Promise.race([exited, new Promise<number>((r) => setTimeout(() => r(-999), 120_000))]);
    t.not(code, -999, `docker import ended ${Date.now() - t0} ms after the crash (it used to hang for minutes)`);
    if (code === -999) child.kill('SIGKILL');
    if (code === 0) await d.docker(['rmi', 'hostile:crash']); // the daemon may have retried the whole upload
    else t.match(stderr, /DRIVER_|error/i, `the import failed with a message: ${stderr.trim().split('\n').pop()}`);
    t.notOk(applying(), 'no half-applied layer is left');
    t.same(storeLayers(d), layers, 'the store holds what it held before');
    t.comment(d.pluginLog().split('\n').filter((l) => /ApplyDiff|crash interrupted/.test(l)).slice(-3).join('\n'));
  });
}
