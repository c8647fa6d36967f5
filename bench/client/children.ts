/**
 * Child processes of bench/client. The bench process serves the FUSE mount, so it must never read
 * the mount itself (it would deadlock): every read, stat and `ls` of the mount runs in a child.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const sh = (cmd: string) => new Promise<string>((resolve, reject) => {
  const c = spawn('bash', ['-c', cmd], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  c.stdout.on('data', (d: Buffer) => { out += d; });
  c.on('error', reject);
  c.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd}: exit ${code}`))));
});

/** Wall seconds of one shell command. */
export async function timed(cmd: string): Promise<number> {
  const t0 = performance.now();
  await sh(cmd);
  return (performance.now() - t0) / 1000;
}

/**
 * Reads (`cat`) or stats every name of its list. It loads the list, says `ready`, waits for a line
 * on stdin, and reports its own monotonic start and end (CLOCK_MONOTONIC, comparable across
 * processes) and its CPU seconds, so that interpreter start-up is never timed and N streams start
 * together.
 */
const WORKER_PY = `
import json, os, sys, time
mode, lst = sys.argv[1], sys.argv[2]
names = [l for l in open(lst).read().split('\\n') if l]
print('ready', flush=True)
sys.stdin.readline()
c0 = os.times(); t0 = time.monotonic()
total = 0
if mode == 'stat':
    for n in names: os.stat(n)
else:
    for n in names:
        with open(n, 'rb') as f: total += len(f.read())
t1 = time.monotonic(); c1 = os.times()
print(json.dumps({'t0': t0, 't1': t1, 'n': len(names), 'bytes': total,
                  'cpu': (c1.user - c0.user) + (c1.system - c0.system)}), flush=True)
`;

export interface StreamsResult {
  /** First start to last end, seconds. */
  readonly seconds: number;
  readonly n: number;
  readonly bytes: number;
  /** CPU seconds of the readers (user + system), summed. */
  readonly readerCpu: number;
}

/** The lines a child prints, one at a time; rejects when the child fails. */
export function lineReader(c: ChildProcess, what: string): () => Promise<string> {
  let buf = '';
  const waiters: ((l: string) => void)[] = [];
  const queue: string[] = [];
  const failed = new Promise<never>((_, reject) => {
    c.on('error', reject);
    c.on('exit', (code) => { if (code !== 0) reject(new Error(`${what}: exit ${code}`)); });
  });
  failed.catch(() => {});
  c.stdout!.on('data', (d: Buffer) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiters.shift();
      if (w) w(l); else queue.push(l);
    }
  });
  return () => Promise.race([failed, new Promise<string>((resolve) => {
    const l = queue.shift();
    if (l !== undefined) resolve(l); else waiters.push(resolve);
  })]);
}

/**
 * A child that prints `ready` when set up, starts on a line on stdin and prints one JSON line:
 * `go`/`done` run right before the start and right after the result, for snapshots.
 */
export async function readyGo<T>(cmd: string, args: readonly string[], hooks: { go?: () => void; done?: () => void } = {}): Promise<T> {
  const c = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const next = lineReader(c, `${cmd} ${args.join(' ')}`);
    const ready = await next();
    if (ready !== 'ready') throw new Error(`${cmd}: ${ready}`);
    hooks.go?.();
    c.stdin!.end('go\n');
    const res = JSON.parse(await next()) as T;
    hooks.done?.();
    if (c.exitCode === null) await new Promise((r) => c.once('exit', r));
    return res;
  } finally {
    if (c.exitCode === null) c.kill();
  }
}

export class PyRunner {
  private readonly script: string;
  private lists = 0;
  constructor(private readonly dir: string) {
    this.script = path.join(dir, 'worker.py');
    fs.writeFileSync(this.script, WORKER_PY);
  }

  /** `streams` processes at once, each on its own slice (contiguous) of `names`. */
  async run(mode: 'cat' | 'stat', names: readonly string[], streams = 1, hooks: { go?: () => void; done?: () => void } = {}): Promise<StreamsResult> {
    const per = Math.ceil(names.length / streams);
    const files = Array.from({ length: streams }, (_, i) => {
      const f = path.join(this.dir, `list-${this.lists++}`);
      fs.writeFileSync(f, names.slice(i * per, (i + 1) * per).join('\n') + '\n');
      return f;
    });
    const children = files.map((f) => spawn('python3', [this.script, mode, f], { stdio: ['pipe', 'pipe', 'inherit'] }));
    try {
      const lines = children.map((c) => lineReader(c, `python3 ${mode}`));
      const ready = await Promise.all(lines.map((next) => next()));
      if (ready.some((l) => l !== 'ready')) throw new Error(`python3 ${mode}: ${ready.join(' / ')}`);
      hooks.go?.();
      for (const c of children) c.stdin!.end('go\n');
      const res = (await Promise.all(lines.map((next) => next()))).map((l) => JSON.parse(l) as { t0: number; t1: number; n: number; bytes: number; cpu: number });
      hooks.done?.();
      await Promise.all(children.map((c) => (c.exitCode !== null ? undefined : new Promise((r) => c.once('exit', r)))));
      return {
        seconds: Math.max(...res.map((r) => r.t1)) - Math.min(...res.map((r) => r.t0)),
        n: res.reduce((s, r) => s + r.n, 0),
        bytes: res.reduce((s, r) => s + r.bytes, 0),
        readerCpu: res.reduce((s, r) => s + r.cpu, 0),
      };
    } finally {
      for (const c of children) if (c.exitCode === null) c.kill();
      for (const f of files) fs.rmSync(f, { force: true });
    }
  }
}

/** Whether `echo 3 > /proc/sys/vm/drop_caches` works here (root, writable /proc/sys). */
export function canDropCaches(): boolean {
  if (process.getuid?.() !== 0) return false;
  try { fs.accessSync('/proc/sys/vm/drop_caches', fs.constants.W_OK); return true; } catch { return false; }
}

/** In a child: `sync` may reach the FUSE mount this process serves. */
export const dropCaches = () => sh('sync; echo 3 > /proc/sys/vm/drop_caches');

/** Reads every file under `dir` once, so that its pages are cached again. */
export const warmTree = (dir: string) => sh(`find '${dir}' -type f -print0 | xargs -0 -r cat > /dev/null`);

const CLK_TCK = (() => { try { return Number(execFileSync('getconf', ['CLK_TCK']).toString()) || 100; } catch { return 100; } })();

/** CPU seconds (user + system) a process has used, from /proc/PID/stat. */
export function processCpu(pid: number): number {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/** CPU seconds this process has used, all threads (the FUSE thread and libuv's pool included). */
export function selfCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Busy and total jiffies of the whole machine (/proc/stat), in seconds. */
export function machineCpu(): { busy: number; total: number } {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: (total - idle) / CLK_TCK, total: total / CLK_TCK };
}

/**
 * Waits until the machine is quiet: at most `maxBusy` of one core busy over `windowS`, checked
 * up to `maxWaitS`. This process is idle meanwhile, so what is busy is someone else. Returns the
 * seconds waited and the last busy fraction.
 */
export async function waitQuiet(o: { maxBusy?: number; windowS?: number; maxWaitS?: number } = {}): Promise<{ waited: number; busy: number }> {
  const maxBusy = o.maxBusy ?? 0.15, windowS = o.windowS ?? 3, maxWaitS = o.maxWaitS ?? 300;
  const t0 = performance.now();
  for (;;) {
    const a = machineCpu();
    await new Promise((r) => setTimeout(r, windowS * 1000));
    const b = machineCpu();
    const busy = (b.busy - a.busy) / windowS;
    const waited = (performance.now() - t0) / 1000;
    if (busy <= maxBusy || waited >= maxWaitS) return { waited, busy };
  }
}
