/**
 * A private dockerd (Debian docker.io 20.10) for end-to-end tests and benchmarks: own data root,
 * exec root, socket and pidfile under a temp dir; stopped by pid. The graphdriver is our plugin,
 * either managed (`docker plugin create` + `enable`, then `dockerd -s`, as worker nodes run it) or a
 * legacy (v1) host process on a unique socket in /run/docker/plugins (G11), or a built-in driver.
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
  if (!fs.existsSync('/dev/fuse')) return '/dev/fuse missing';
  return null;
}

export type DockerCall = (args: string[], opts?: { input?: Buffer; allowFail?: boolean }) => Promise<{ code: number; stdout: string; stderr: string }>;

export interface Daemon {
  readonly dir: string;
  readonly driverName: string;
  /** The driver's Home as the host sees it. */
  readonly home: string;
  readonly docker: DockerCall;
  /** DOCKER_HOST of this daemon (`unix://…`). */
  readonly dockerHost: string;
  pluginLog(): string;
  /** Kills the plugin process and waits until it serves again (no Init is resent: G2). */
  restartPlugin(): Promise<void>;
  stop(): Promise<void>;
}

async function waitFor(check: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (await check()) return; await new Promise((r) => setTimeout(r, 200)); }
  throw new Error(`timed out waiting for ${what}`);
}

/** One dockerd process at a time on a fixed data root and socket; restartable with other flags. */
class DockerdProcess {
  readonly sock: string;
  readonly env: NodeJS.ProcessEnv;
  private proc: ChildProcess | undefined;

  constructor(readonly dir: string) {
    this.sock = path.join(dir, 'docker.sock');
    this.env = { ...process.env, DOCKER_HOST: `unix://${this.sock}` };
  }

  readonly docker: DockerCall = async (args, opts = {}) => {
    const p = run(DOCKER, args, { env: this.env, maxBuffer: 1 << 28 });
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

  log(): string {
    const f = path.join(this.dir, 'dockerd.log');
    return fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
  }

  async start(args: string[]): Promise<void> {
    const logFd = fs.openSync(path.join(this.dir, 'dockerd.log'), 'a');
    this.proc = spawn(DOCKERD, [...args, '--data-root', path.join(this.dir, 'root'), '--exec-root', path.join(this.dir, 'exec'),
      '-H', `unix://${this.sock}`, '--pidfile', path.join(this.dir, 'docker.pid'), '--iptables=false', '--ip6tables=false', '--bridge=none'],
    { stdio: ['ignore', logFd, logFd] });
    fs.closeSync(logFd);
    const proc = this.proc;
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`dockerd exited with ${proc.exitCode}`);
      return (await this.docker(['info'], { allowFail: true })).code === 0;
    }, 60_000, 'dockerd').catch((err: Error) => { throw new Error(`${err.message}\n${this.log().slice(-3000)}`); });
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const pidFile = path.join(this.dir, 'docker.pid');
    const pid = fs.existsSync(pidFile) ? Number(fs.readFileSync(pidFile, 'utf8').trim()) || proc.pid : proc.pid;
    try { process.kill(pid!, 'SIGTERM'); } catch { /* gone */ }
    await new Promise((r) => { proc.once('exit', r); setTimeout(r, 30_000); });
  }

  /** Stops the daemon, unmounts what is left under the temp dir (its self bind mount, plugin mounts), removes it. */
  async destroy(): Promise<void> {
    await this.stop();
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(this.dir));
    for (const m of mounts.reverse()) await run('umount', ['-l', m]).catch(() => {});
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** dockerd on the legacy plugin (a host process of dist/plugin/main.js), or on a built-in driver. */
export async function startDaemon(o: { pluginEnv?: Record<string, string>; builtinDriver?: string; dockerdArgs?: string[] } = {}): Promise<Daemon> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-dockerd-'));
  const driverName = o.builtinDriver ?? `cvmfsgd-test-${randomBytes(4).toString('hex')}`;
  const socket = `/run/docker/plugins/${driverName}.sock`;
  fs.mkdirSync('/run/docker/plugins', { recursive: true });
  const main = path.resolve('dist/plugin/main.js');
  let plugin: ChildProcess | undefined;
  const pluginLogFile = path.join(dir, 'plugin.log');
  const startPlugin = async () => {
    const out = fs.openSync(pluginLogFile, 'a');
    plugin = spawn(process.execPath, [main, '--socket', socket, '--state-dir', path.join(dir, 'state'), '--log-level', 'debug'],
      { stdio: ['ignore', out, out], env: { ...process.env, ...o.pluginEnv } });
    fs.closeSync(out);
    await waitFor(() => fs.existsSync(socket), 10_000, 'the plugin socket');
  };
  // Traversable, so that a remapped root (--userns-remap) reaches the data root below.
  fs.chmodSync(dir, 0o711);
  const d = new DockerdProcess(dir);
  // The daemon first (it calls Cleanup on the plugin), then the plugin, then what is left.
  const destroy = async () => {
    await d.stop();
    const p = plugin;
    if (p && p.exitCode === null && p.signalCode === null) {
      p.kill('SIGTERM');
      await new Promise((r) => { p.once('exit', r); setTimeout(r, 5_000); });
    }
    fs.rmSync(socket, { force: true });
    await d.destroy();
  };
  try {
    if (!o.builtinDriver) await startPlugin();
    await d.start([...(o.builtinDriver ? [] : ['--experimental']), '-s', driverName, ...(o.dockerdArgs ?? [])]);
  } catch (err) {
    await destroy();
    throw err;
  }
  return {
    dir, driverName, home: path.join(dir, 'root', driverName), docker: d.docker, dockerHost: `unix://${d.sock}`,
    pluginLog: () => (fs.existsSync(pluginLogFile) ? fs.readFileSync(pluginLogFile, 'utf8') : ''),
    restartPlugin: async () => {
      if (!plugin) throw new Error('no plugin process: the daemon runs a built-in driver');
      const p = plugin;
      p.kill('SIGKILL');
      if (p.exitCode === null && p.signalCode === null) await new Promise((r) => p.once('exit', r));
      await startPlugin();
    },
    stop: destroy,
  };
}

export interface ManagedOptions {
  /** `docker plugin set` values: plugin env (KEY=VALUE). */
  readonly pluginEnv?: Record<string, string>;
  /** Host directory mounted as the plugin's /etc/cvmfs-graphdriver (keys/, repositories.json). */
  readonly configDir?: string;
  /** Called with the build output (for its printed rootfs size). */
  readonly onBuild?: (stdout: string) => void;
  /** More dockerd flags (e.g. --userns-remap), for both the installing daemon and the one on the plugin. */
  readonly dockerdArgs?: readonly string[];
}

/**
 * dockerd on the managed plugin, installed as a worker node installs it: `make plugin`'s script
 * against this daemon, `docker plugin set`, `enable`, then dockerd restarted with `-s`.
 */
export async function startManagedDaemon(o: ManagedOptions = {}): Promise<Daemon> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-managed-'));
  const name = `cvmfsgd-managed-${randomBytes(3).toString('hex')}`;
  fs.chmodSync(dir, 0o711);
  const d = new DockerdProcess(dir);
  try {
    // Plugins are stored under the data root, which --userns-remap moves: install with the same flags.
    await d.start([...(o.dockerdArgs ?? [])]);
    const built = await run('bash', ['scripts/build-plugin.sh'], { env: { ...d.env, PLUGIN_NAME: name, PLUGIN_OUT: path.join(dir, 'plugin-build') }, maxBuffer: 1 << 24 });
    o.onBuild?.(built.stdout);
    const settings = [...(o.configDir ? [`config.source=${o.configDir}`] : []), ...Object.entries(o.pluginEnv ?? {}).map(([k, v]) => `${k}=${v}`)];
    if (settings.length) await d.docker(['plugin', 'set', name, ...settings]);
    await d.docker(['plugin', 'enable', name]);
    await d.stop();
    await d.start(['--experimental', '-s', name, ...(o.dockerdArgs ?? [])]);
  } catch (err) {
    await d.destroy();
    throw err;
  }
  const id = (await d.docker(['plugin', 'inspect', '-f', '{{.Id}}', name])).stdout.trim();
  const dataRoot = (await d.docker(['info', '-f', '{{.DockerRootDir}}'])).stdout.trim();
  // The plugin runs in a container (cgroup) named by the plugin ID.
  const pluginPids = () => fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try { return fs.readFileSync(`/proc/${p}/cgroup`, 'utf8').includes(id) && fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('plugin/main.js'); } catch { return false; }
  }).map(Number);
  return {
    dir, driverName: name, home: path.join(dataRoot, 'plugins', id, 'propagated-mount', name), docker: d.docker, dockerHost: `unix://${d.sock}`,
    pluginLog: () => d.log().split('\n').filter((l) => l.includes(`plugin=${id}`)).join('\n'),
    restartPlugin: async () => {
      const before = pluginPids();
      if (before.length !== 1) throw new Error(`expected one plugin process, found ${before.length}`);
      process.kill(before[0]!, 'SIGKILL');
      await waitFor(() => { const now = pluginPids(); return now.length === 1 && now[0] !== before[0]; }, 30_000, 'the daemon to restart the plugin');
      await waitFor(async () => (await d.docker(['info'], { allowFail: true })).code === 0, 30_000, 'the restarted plugin');
    },
    stop: () => d.destroy(),
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
