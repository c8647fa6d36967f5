/**
 * A private dockerd (Debian docker.io 20.10) using our plugin as its graphdriver, for end-to-end
 * tests: own data root, exec root, socket and pidfile under a temp dir; stopped by pid. The plugin
 * runs as a legacy (v1) host process on a unique socket in /run/docker/plugins (G11).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const DOCKERD = '/usr/sbin/dockerd';
export const DOCKER = '/usr/bin/docker';

export function dockerUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'not running as root';
  if (!fs.existsSync(DOCKERD) || !fs.existsSync(DOCKER)) return `${DOCKERD} or ${DOCKER} missing (Debian package docker.io)`;
  if (!fs.existsSync('/bin/busybox')) return '/bin/busybox missing (Debian package busybox-static)';
  return null;
}

export interface Daemon {
  readonly dir: string;
  readonly driverName: string;
  readonly home: string;
  docker(args: string[], opts?: { input?: Buffer; allowFail?: boolean }): Promise<{ code: number; stdout: string; stderr: string }>;
  pluginLog(): string;
  restartPlugin(): Promise<void>;
  stop(): Promise<void>;
}

async function waitFor(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (await check()) return; await new Promise((r) => setTimeout(r, 200)); }
  throw new Error(`timed out waiting for ${what}`);
}

export async function startDaemon(o: { pluginEnv?: Record<string, string>; builtinDriver?: string } = {}): Promise<Daemon> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-dockerd-'));
  const driverName = o.builtinDriver ?? `cvmfsgd-test-${randomBytes(4).toString('hex')}`;
  const socket = `/run/docker/plugins/${driverName}.sock`;
  fs.mkdirSync('/run/docker/plugins', { recursive: true });
  const main = path.resolve('dist/plugin/main.js');
  let plugin: ChildProcess;
  const pluginLogFile = path.join(dir, 'plugin.log');
  const startPlugin = async () => {
    const out = fs.openSync(pluginLogFile, 'a');
    plugin = spawn(process.execPath, [main, '--socket', socket, '--state-dir', path.join(dir, 'state'), '--log-level', 'debug'],
      { stdio: ['ignore', out, out], env: { ...process.env, ...o.pluginEnv } });
    await waitFor(async () => fs.existsSync(socket), 10_000, 'the plugin socket');
  };
  if (!o.builtinDriver) await startPlugin();
  const sock = path.join(dir, 'docker.sock');
  const logFd = fs.openSync(path.join(dir, 'dockerd.log'), 'a');
  const daemon = spawn(DOCKERD, [...(o.builtinDriver ? [] : ['--experimental']), '-s', driverName, '--data-root', path.join(dir, 'root'), '--exec-root', path.join(dir, 'exec'),
    '-H', `unix://${sock}`, '--pidfile', path.join(dir, 'docker.pid'), '--iptables=false', '--ip6tables=false', '--bridge=none'],
  { stdio: ['ignore', logFd, logFd] });
  const env = { ...process.env, DOCKER_HOST: `unix://${sock}` };
  const docker: Daemon['docker'] = async (args, opts = {}) => {
    const p = run(DOCKER, args, { env, maxBuffer: 1 << 28 });
    if (opts.input) p.child.stdin!.end(opts.input); else p.child.stdin?.end();
    try {
      const r = await p;
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      if (!opts.allowFail) throw new Error(`docker ${args.join(' ')}: exit ${e.code}: ${e.stderr}`);
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
  await waitFor(async () => (await docker(['info'], { allowFail: true })).code === 0, 60_000, 'dockerd').catch((err: Error) => {
    throw new Error(`${err.message}\n${fs.readFileSync(path.join(dir, 'dockerd.log'), 'utf8').slice(-3000)}`);
  });
  return {
    dir, driverName, home: path.join(dir, 'root', driverName), docker,
    pluginLog: () => (fs.existsSync(pluginLogFile) ? fs.readFileSync(pluginLogFile, 'utf8') : ''),
    restartPlugin: async () => {
      plugin.kill('SIGKILL');
      await new Promise((r) => plugin.once('exit', r));
      await startPlugin();
    },
    stop: async () => {
      const pid = Number(fs.readFileSync(path.join(dir, 'docker.pid'), 'utf8').trim() || daemon.pid);
      try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
      await new Promise((r) => { if (daemon.exitCode !== null) r(null); else { daemon.once('exit', r); setTimeout(r, 20_000); } });
      if (!o.builtinDriver) {
        plugin.kill('SIGTERM');
        await new Promise((r) => { if (plugin.exitCode !== null) r(null); else { plugin.once('exit', r); setTimeout(r, 5_000); } });
      }
      const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(dir));
      for (const m of mounts.reverse()) await run('umount', ['-l', m]).catch(() => {});
      fs.rmSync(socket, { force: true });
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A busybox image tar (rootfs), for `docker import`. */
export async function busyboxRootfsTar(dir: string): Promise<Buffer> {
  const root = path.join(dir, `bb-${randomBytes(3).toString('hex')}`);
  for (const d of ['bin', 'etc', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin/busybox'));
  fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
  const list = (await run('/bin/busybox', ['--list'])).stdout.split('\n').filter((a) => a && a !== 'busybox');
  for (const a of list) fs.symlinkSync('busybox', path.join(root, 'bin', a));
  const tarred = (await run('tar', ['-C', root, '-cf', '-', '.'], { encoding: 'buffer', maxBuffer: 1 << 26 })).stdout as unknown as Buffer;
  fs.rmSync(root, { recursive: true, force: true });
  return tarred;
}
