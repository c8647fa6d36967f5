/**
 * The remote site, inside the far namespace: Debian's docker-registry and the repository served by
 * `cvmfs-repo serve` (the Stratum 1), each on the namespace's loopback behind its delay relay on
 * the far address (far.ts), plus the probe service. `probe()` measures the link as the clients see
 * it: a ping-like TCP echo and a bulk transfer, both through a relay and the shaped veth.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Link } from './net.js';

const run = promisify(execFile);
const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REGISTRY_PORT = 5000;
export const STRATUM1_PORT = 8000;
const PROBE_PORT = 9000;

export interface RelayCounters { connections: number; bytesDown: number; bytesUp: number }

export interface Site {
  /** `<far>:5000`, as image references name the registry. */
  readonly registryHost: string;
  /** `http://<far>:8000/cvmfs/@fqrn@` */
  readonly serverUrl: string;
  /** Lines of the registry's access log so far. */
  registryLog(): string[];
  startStratum1(repoDir: string): Promise<void>;
  setDelay(oneWayMs: number): Promise<void>;
  relayStats(): Promise<Record<string, RelayCounters>>;
  probe(mbit: number): Promise<{ rttMs: number; rttMinMs: number; mbit: number; bulkBytes: number }>;
  stop(): Promise<void>;
}

function waitLine(rl: readline.Interface, pred: (o: Record<string, unknown>) => boolean, ms: number, what: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { rl.off('line', on); reject(new Error(`timed out waiting for ${what}`)); }, ms);
    const on = (line: string) => {
      let o: Record<string, unknown>;
      try { o = JSON.parse(line) as Record<string, unknown>; } catch { return; }
      if (pred(o)) { clearTimeout(t); rl.off('line', on); resolve(o); }
    };
    rl.on('line', on);
  });
}

async function waitHttp(url: string, ms: number, proc: ChildProcess, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (proc.exitCode !== null) throw new Error(`${what} exited with ${proc.exitCode}`);
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await r.body?.cancel();
      if (r.status < 500) return;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function startSite(link: Link, dir: string, o: { fqrn: string; windowBytes: number }): Promise<Site> {
  fs.mkdirSync(dir, { recursive: true });
  const procs: ChildProcess[] = [];
  const regDir = path.join(dir, 'registry');
  fs.mkdirSync(path.join(regDir, 'storage'), { recursive: true });
  const regConf = path.join(regDir, 'config.yml');
  fs.writeFileSync(regConf, ['version: 0.1', 'log:', '  level: warn', '  accesslog:', '    disabled: false',
    'storage:', '  filesystem:', `    rootdirectory: ${path.join(regDir, 'storage')}`, '  maintenance:', '    uploadpurging:', '      enabled: false',
    'http:', `  addr: 127.0.0.1:${REGISTRY_PORT + 1}`, `  secret: ${randomBytes(16).toString('hex')}`, ''].join('\n'));
  const regLog = path.join(regDir, 'registry.log');
  const stop = async () => {
    for (const p of procs.reverse()) {
      if (p.exitCode !== null || p.signalCode !== null) continue;
      const exited = new Promise<void>((r) => p.once('exit', () => r()));
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
  };
  let agent: ChildProcess;
  let rl: readline.Interface;
  try {
    const out = fs.openSync(regLog, 'a');
    const reg = link.spawnFar('/usr/bin/docker-registry', ['serve', regConf], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    procs.push(reg);
    const farCfg = {
      farAddr: link.farAddr, probePort: PROBE_PORT + 1, windowBytes: o.windowBytes,
      relays: [{ name: 'registry', port: REGISTRY_PORT, toPort: REGISTRY_PORT + 1 }, { name: 'stratum1', port: STRATUM1_PORT, toPort: STRATUM1_PORT + 1 },
        { name: 'probe', port: PROBE_PORT, toPort: PROBE_PORT + 1 }],
    };
    agent = link.spawnFar(process.execPath, [path.join(HERE, 'far.js'), JSON.stringify(farCfg)], { stdio: ['pipe', 'pipe', 'inherit'] });
    procs.push(agent);
    rl = readline.createInterface({ input: agent.stdout! });
    await waitLine(rl, (m) => m.ready === true, 20_000, 'the far relays');
    await waitHttp(`http://${link.farAddr}:${REGISTRY_PORT}/v2/`, 20_000, reg, 'docker-registry');
  } catch (err) {
    await stop();
    throw err;
  }
  const send = (m: object) => agent.stdin!.write(JSON.stringify(m) + '\n');
  return {
    registryHost: `${link.farAddr}:${REGISTRY_PORT}`,
    serverUrl: `http://${link.farAddr}:${STRATUM1_PORT}/cvmfs/@fqrn@`,
    registryLog: () => fs.readFileSync(regLog, 'utf8').split('\n').filter((l) => /"(GET|HEAD|PUT|POST|PATCH) \/v2\//.test(l)),
    async startStratum1(repoDir) {
      const out = fs.openSync(path.join(dir, 'stratum1.log'), 'a');
      const s1 = link.spawnFar(process.execPath, [path.resolve('dist/cvmfs/cli.js'), 'serve', '--dir', repoDir, '--port', String(STRATUM1_PORT + 1), '--bind', '127.0.0.1'],
        { stdio: ['ignore', out, out] });
      fs.closeSync(out);
      procs.splice(1, 0, s1);
      await waitHttp(`http://${link.farAddr}:${STRATUM1_PORT}/cvmfs/${o.fqrn}/.cvmfspublished`, 20_000, s1, 'cvmfs-repo serve');
    },
    async setDelay(ms) {
      const done = waitLine(rl, (m) => m.delayMs === ms, 5000, 'the delay to be set');
      send({ delayMs: ms });
      await done;
    },
    async relayStats() {
      const got = waitLine(rl, (m) => typeof m.stats === 'object', 5000, 'relay stats');
      send({ stats: true });
      return (await got).stats as Record<string, RelayCounters>;
    },
    async probe(mbit) {
      const s = net.connect({ host: link.farAddr, port: PROBE_PORT, noDelay: true });
      await new Promise<void>((resolve, reject) => { s.once('connect', () => resolve()); s.once('error', reject); });
      const rtts: number[] = [];
      for (let i = 0; i < 21; i++) {
        const t0 = performance.now();
        await new Promise<void>((resolve) => { s.once('data', () => resolve()); s.write('p'); });
        rtts.push(performance.now() - t0);
        await new Promise((r) => setTimeout(r, 20));
      }
      rtts.sort((a, b) => a - b);
      // Bulk: ~3 s at the nominal rate (at least 16 MB); the rate over the body after the first byte.
      const bulkBytes = Math.max(16e6, Math.round((mbit * 1e6 / 8) * 3));
      const req = Buffer.alloc(5); req[0] = 0x62; req.writeUInt32BE(bulkBytes, 1);
      const rate = await new Promise<number>((resolve) => {
        let got = 0, first = 0, firstLen = 0;
        const on = (b: Buffer) => {
          if (!first) { first = performance.now(); firstLen = b.length; }
          got += b.length;
          if (got >= bulkBytes) { s.off('data', on); resolve(((got - firstLen) * 8) / ((performance.now() - first) / 1000) / 1e6); }
        };
        s.on('data', on);
        s.write(req);
      });
      s.destroy();
      return { rttMs: rtts[Math.floor(rtts.length / 2)]!, rttMinMs: rtts[0]!, mbit: rate, bulkBytes };
    },
    stop,
  };
}

export async function initRepo(repoDir: string, keysDir: string, fqrn: string): Promise<void> {
  await run(process.execPath, [path.resolve('dist/cvmfs/cli.js'), 'init', '--dir', repoDir, '--keys', keysDir, '--name', fqrn]);
}
