/**
 * Recording what a container start reads (`docker2cvmfs record`, `convert --record`): the image's
 * layers are mounted from the repository through our own client (served from its directory on
 * loopback), stacked with overlayfs as the graphdriver stacks them, and the image's command runs
 * once in fresh mount, PID, IPC, UTS and network namespaces, chrooted into the stack, as root,
 * until it exits or the time limit. The files the client opened meanwhile, in first-open order,
 * become the access list that thin.json carries (`prefetch`), as [layer index, path in layer].
 * Needs root, FUSE and overlayfs. The process serving the FUSE mount never reads it itself.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { mountRepository } from '../cvmfs/fuse/index.js';
import { openRepository } from '../cvmfs/reader/index.js';
import { serveRepository } from '../cvmfs/server/http-server.js';
import { ConvertError } from './errors.js';
import type { ImageConfig } from './image.js';

export interface RecordOptions {
  /** A local repository directory (DirStorage), and the directory of its keys. */
  readonly repoDir: string;
  readonly keysDir: string;
  readonly fqrn: string;
  /** Repository paths of the layer directories, base layer first. */
  readonly layers: readonly string[];
  readonly config: ImageConfig;
  /** Replaces Entrypoint + Cmd. */
  readonly command?: readonly string[];
  /** The command is killed after this long; what it read until then is kept. Default 60 s. */
  readonly timeoutMs?: number;
  readonly log?: (line: string) => void;
}

export interface Recording {
  /** [index into `layers`, path inside that layer], in first-open order. */
  readonly files: readonly (readonly [number, string])[];
  readonly exitCode: number | null;
  readonly timedOut: boolean;
  readonly seconds: number;
  /** Bytes of the recorded files. */
  readonly bytes: number;
}

const DEFAULT_TIMEOUT_MS = 60_000;

const run = (cmd: string, args: readonly string[]) => new Promise<void>((resolve, reject) => {
  const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  c.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  c.on('error', reject);
  c.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}: ${err.trim()}`))));
});

function commandOf(config: ImageConfig, override?: readonly string[]): string[] {
  if (override?.length) return [...override];
  const c = (config.config ?? {}) as { Entrypoint?: unknown; Cmd?: unknown };
  const list = (v: unknown) => (Array.isArray(v) && v.every((x) => typeof x === 'string') ? v as string[] : []);
  const cmd = [...list(c.Entrypoint), ...list(c.Cmd)];
  if (cmd.length === 0) throw new ConvertError('D2C_USAGE', 'the image has neither Entrypoint nor Cmd: give the command to record after --');
  return cmd;
}

function envOf(config: ImageConfig): Record<string, string> {
  const env: Record<string, string> = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' };
  const list = (config.config as { Env?: unknown } | undefined)?.Env;
  if (Array.isArray(list)) {
    for (const e of list) {
      if (typeof e !== 'string') continue;
      const i = e.indexOf('=');
      if (i > 0) env[e.slice(0, i)] = e.slice(i + 1);
    }
  }
  return env;
}

/** The overlay stack's root needs these to exist for a start to look like a container's. */
async function prepareUpper(upper: string): Promise<void> {
  for (const d of ['proc', 'dev', 'tmp']) await fs.mkdir(path.join(upper, d), { recursive: true });
}

export async function recordStartup(o: RecordOptions): Promise<Recording> {
  if (process.getuid?.() !== 0) throw new ConvertError('D2C_USAGE', 'recording a start-up runs the image in namespaces with FUSE and overlayfs: it needs root');
  if (o.layers.length === 0) throw new ConvertError('D2C_USAGE', 'the image has no layers to record');
  const log = o.log ?? (() => {});
  const command = commandOf(o.config, o.command);
  const cwdRaw = (o.config.config as { WorkingDir?: unknown } | undefined)?.WorkingDir;
  const cwd = typeof cwdRaw === 'string' && cwdRaw.startsWith('/') ? cwdRaw : '/';
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'd2c-record-'));
  await fs.chmod(work, 0o700);
  const mnt = path.join(work, 'cvmfs'), upper = path.join(work, 'upper'), wd = path.join(work, 'work'), merged = path.join(work, 'merged');
  for (const d of [mnt, upper, wd, merged]) await fs.mkdir(d);
  const cleanup: (() => Promise<unknown>)[] = [];
  const t0 = performance.now();
  try {
    const srv = await serveRepository({ dir: o.repoDir, fqrn: o.fqrn });
    cleanup.unshift(() => srv.close());
    const pem = await fs.readFile(path.join(o.keysDir, `${o.fqrn}.pub`), 'utf8');
    const repo = await openRepository({ fqrn: o.fqrn, servers: [srv.url], publicKeys: [{ name: `${o.fqrn}.pub`, pem }],
      cacheDir: path.join(work, 'cache'), expandSymlinks: false, siblingPrefetch: false });
    cleanup.unshift(() => repo.close());
    const m = await mountRepository(repo, { mountpoint: mnt, overlayWhiteouts: true });
    cleanup.unshift(() => m.unmount());
    // Short lower names (as the driver's l/ links), so that many layers fit in one page of mount data.
    const links = path.join(work, 'l');
    await fs.mkdir(links);
    for (const [i, l] of o.layers.entries()) await fs.symlink(path.join(mnt, l), path.join(links, String(i)));
    await prepareUpper(upper);
    const lower = o.layers.map((_, i) => String(i)).reverse().join(':');
    await new Promise<void>((resolve, reject) => {
      // mount(8) with a relative lowerdir, run in the link directory.
      const c = spawn('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${wd}`, merged], { cwd: links, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      c.on('error', reject);
      c.on('close', (code) => (code === 0 ? resolve() : reject(new ConvertError('D2C_IO_FAILED', `overlay mount of the image's layers failed: ${err.trim()}`))));
    });
    cleanup.unshift(() => run('umount', ['-l', merged]));
    const recorder = repo.recordOpens();
    log(`recording the start of: ${command.join(' ')}`);
    const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const { exitCode, timedOut } = await new Promise<{ exitCode: number | null; timedOut: boolean }>((resolve, reject) => {
      const c = spawn('unshare', ['--mount', '--pid', '--fork', '--ipc', '--uts', '--net', '--kill-child', '--mount-proc',
        `--root=${merged}`, `--wd=${cwd}`, '--', ...command], { env: envOf(o.config), stdio: ['ignore', 2, 2] });
      let timedOut = false;
      const timer = setTimeout(() => { timedOut = true; c.kill('SIGKILL'); }, timeoutMs);
      c.on('error', (err) => { clearTimeout(timer); reject(new ConvertError('D2C_IO_FAILED', `cannot run unshare: ${err.message}`, { cause: err })); });
      c.on('close', (code) => { clearTimeout(timer); resolve({ exitCode: code, timedOut }); });
    });
    const opened = recorder.stop();
    const files: [number, string][] = [];
    let bytes = 0;
    for (const p of opened) {
      // The client opened it in one layer's directory: the file overlayfs showed.
      const i = o.layers.findIndex((l) => p.startsWith(l + '/'));
      if (i < 0) continue;
      files.push([i, p.slice(o.layers[i]!.length + 1)]);
      bytes += Number((await repo.stat(p)).size);
    }
    return { files, exitCode, timedOut, seconds: (performance.now() - t0) / 1000, bytes };
  } finally {
    for (const f of cleanup) await f().catch((err: Error) => log(`record cleanup: ${err.message}`));
    await fs.rm(work, { recursive: true, force: true }).catch(() => {});
  }
}
