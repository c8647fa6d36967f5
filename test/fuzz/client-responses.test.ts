/**
 * Property-based fault test of the client against generated server responses. A raw HTTP/1.1
 * server stands in front of a real repository and answers every request with what the case
 * prescribes for that object (correct, bit-flipped, truncated, extended with garbage, a smuggled
 * second response, a wrong status, slow, stalled, empty, a wrong Content-Length, another object's
 * bytes, an HTML error page, non-HTTP bytes…). The client gets two URLs: the second one honest, or
 * both hostile. Properties:
 *   - every open and read settles within a deadline;
 *   - bytes returned are exactly the true bytes (nothing unverified is served);
 *   - every failure is a CvmfsError with a code;
 *   - with an honest second server, everything succeeds.
 * FUZZ_SEED and FUZZ_RUNS override the fixed seed and the number of cases; FUZZ_PATH replays one
 * reported case (with its seed), FUZZ_SHRINK=1 shrinks a failure.
 */
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import t from 'tap';
import { CvmfsError, openRepository, type RepositoryOptions } from '../../cvmfs/index.js';
import { makeRepo } from '../lib/repo-fixture.js';
import { tarOf } from '../lib/tar-of.js';

const SEED = Number(process.env.FUZZ_SEED ?? 42);
const RUNS = Number(process.env.FUZZ_RUNS ?? 30);
/** Per case: open and read every file. Generous against the worst case of the limits below. */
const CASE_DEADLINE_MS = 30_000;
const LIMITS: Partial<RepositoryOptions> = {
  timeoutMs: 300, lowSpeedWindowMs: 300, lowSpeedLimitBytesPerSecond: 1024, deadlineMs: 3000,
  maxRetries: 1, backoffInitMs: 5,
};

type Action =
  | { readonly kind: 'correct' | 'correct-chunked' | 'correct-close' | 'empty' | 'html' | 'stall' | 'slow' | 'not-http' | 'squid-error' }
  | { readonly kind: 'bitflip'; readonly at: number; readonly bit: number }
  | { readonly kind: 'truncate' | 'short' | 'stall-body'; readonly at: number }
  | { readonly kind: 'extend' | 'overrun'; readonly garbage: Uint8Array }
  | { readonly kind: 'smuggle' }
  | { readonly kind: 'status'; readonly status: number }
  | { readonly kind: 'cl-long'; readonly extra: number; readonly close: boolean }
  | { readonly kind: 'other'; readonly pick: number };

const frac = fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true });
const action: fc.Arbitrary<Action> = fc.oneof(
  { weight: 12, arbitrary: fc.constant({ kind: 'correct' } as const) },
  { weight: 2, arbitrary: fc.constantFrom({ kind: 'correct-chunked' } as const, { kind: 'correct-close' } as const) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('bitflip' as const), at: frac, bit: fc.integer({ min: 0, max: 7 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constantFrom('truncate' as const, 'short' as const, 'stall-body' as const), at: frac }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constantFrom('extend' as const, 'overrun' as const), garbage: fc.uint8Array({ minLength: 1, maxLength: 64 }) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'smuggle' } as const) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('status' as const), status: fc.constantFrom(204, 206, 301, 302, 403, 404, 429, 500, 502, 503) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('cl-long' as const), extra: fc.integer({ min: 1, max: 1000 }), close: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('other' as const), pick: fc.nat() }) },
  { weight: 3, arbitrary: fc.constantFrom(...(['empty', 'html', 'stall', 'slow', 'not-http', 'squid-error'] as const).map((kind) => ({ kind }))) },
);

/** What one server does for each object: request k of an object gets `actions[min(k, last)]`. */
type Script = ReadonlyMap<string, readonly Action[]>;

function describe(a: Action): string {
  switch (a.kind) {
    case 'bitflip': return `bitflip@${a.at.toFixed(2)}`;
    case 'truncate': case 'short': case 'stall-body': return `${a.kind}@${a.at.toFixed(2)}`;
    case 'status': return `HTTP ${a.status}`;
    case 'cl-long': return `cl+${a.extra}${a.close ? '+close' : ''}`;
    default: return a.kind;
  }
}

interface HostileServer {
  readonly url: string;
  script: Script;
  counts: Map<string, number>;
  close(): Promise<void>;
}

/** A raw HTTP/1.1 server (keep-alive, one request at a time per connection) playing a script. */
async function hostileServer(dir: string, fqrn: string, objects: readonly string[]): Promise<HostileServer> {
  const prefix = `/cvmfs/${fqrn}/`;
  const bytes = new Map(objects.map((rel) => [rel, fs.readFileSync(path.join(dir, rel))]));
  const sockets = new Set<net.Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const state = { script: new Map() as Script, counts: new Map<string, number>() };
  const head = (status: number, headers: Record<string, string | number>) =>
    Buffer.from(`HTTP/1.1 ${status} X\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`, 'latin1');
  const later = (ms: number, f: () => void) => { const tm = setTimeout(() => { timers.delete(tm); f(); }, ms); timers.add(tm); };

  /** Answers one request; resolves when the connection may carry the next one. */
  function answer(sock: net.Socket, target: string): Promise<void> {
    const rel = target.startsWith(prefix) ? target.slice(prefix.length) : '';
    const body = bytes.get(rel);
    if (!body) { sock.write(head(404, { 'Content-Length': 0 })); return Promise.resolve(); }
    const n = state.counts.get(rel) ?? 0;
    state.counts.set(rel, n + 1);
    const actions = state.script.get(rel) ?? [{ kind: 'correct' }];
    const a = actions[Math.min(n, actions.length - 1)]!;
    const ok = (b: Buffer, extra: Record<string, string | number> = {}) => { sock.write(Buffer.concat([head(200, { 'Content-Length': b.length, ...extra }), b])); };
    const cut = (at: number) => Math.floor(body.length * at);
    switch (a.kind) {
      case 'correct': ok(body); return Promise.resolve();
      case 'correct-chunked': {
        const parts: Buffer[] = [head(200, { 'Transfer-Encoding': 'chunked' })];
        for (let i = 0; i < body.length; i += 7777) { const c = body.subarray(i, i + 7777); parts.push(Buffer.from(`${c.length.toString(16)}\r\n`), c, Buffer.from('\r\n')); }
        parts.push(Buffer.from('0\r\n\r\n'));
        sock.write(Buffer.concat(parts));
        return Promise.resolve();
      }
      case 'correct-close': sock.end(Buffer.concat([head(200, { Connection: 'close' }), body])); return new Promise(() => {});
      case 'empty': ok(Buffer.alloc(0)); return Promise.resolve();
      case 'html': ok(Buffer.from('<html><body><h1>502 Bad Gateway</h1></body></html>\n'), { 'Content-Type': 'text/html' }); return Promise.resolve();
      case 'squid-error': ok(body, { 'X-Squid-Error': 'ERR_CONNECT_FAIL 111' }); return Promise.resolve();
      case 'bitflip': { const b = Buffer.from(body); if (b.length) b[cut(a.at)]! ^= 1 << a.bit; ok(b); return Promise.resolve(); }
      case 'short': ok(body.subarray(0, cut(a.at))); return Promise.resolve();
      case 'truncate': sock.write(head(200, { 'Content-Length': body.length })); sock.end(body.subarray(0, cut(a.at))); return new Promise(() => {});
      case 'stall-body': sock.write(head(200, { 'Content-Length': body.length })); sock.write(body.subarray(0, cut(a.at))); return new Promise(() => {});
      case 'extend': ok(Buffer.concat([body, a.garbage])); return Promise.resolve();
      case 'overrun': sock.write(Buffer.concat([head(200, { 'Content-Length': body.length }), body, a.garbage])); return Promise.resolve();
      case 'smuggle': {
        // A true response followed by a second, unasked-for one: the next request on this
        // connection reads the smuggled answer.
        const fake = objects.map((o) => bytes.get(o)!).find((b) => b !== body) ?? Buffer.from('x');
        sock.write(Buffer.concat([head(200, { 'Content-Length': body.length }), body, head(200, { 'Content-Length': fake.length }), fake]));
        return Promise.resolve();
      }
      case 'status': sock.write(Buffer.concat([head(a.status, { 'Content-Length': 11 }), Buffer.from('not for you')])); return Promise.resolve();
      case 'cl-long':
        sock.write(Buffer.concat([head(200, { 'Content-Length': body.length + a.extra }), body]));
        if (a.close) sock.end();
        return new Promise(() => {});
      case 'other': { const others = objects.filter((o) => o !== rel); ok(bytes.get(others[a.pick % others.length]!)!); return Promise.resolve(); }
      case 'not-http': sock.end('SSH-2.0-OpenSSH_9.2\r\n'); return new Promise(() => {});
      case 'stall': return new Promise(() => {});
      case 'slow': {
        // Headers at once, then 1 byte every 60 ms: below the low-speed limit, above the idle timeout.
        sock.write(head(200, { 'Content-Length': body.length }));
        let i = 0;
        const step = () => { if (sock.destroyed || i >= body.length) return; sock.write(body.subarray(i, ++i)); later(60, step); };
        step();
        return new Promise(() => {});
      }
    }
  }

  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let busy = false;
    const pump = () => {
      if (busy) return;
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const line = buf.subarray(0, buf.indexOf('\r\n')).toString('latin1');
      buf = buf.subarray(end + 4);
      busy = true;
      void answer(sock, line.split(' ')[1] ?? '').then(() => { busy = false; pump(); });
    };
    sock.on('data', (d: Buffer) => { buf = Buffer.concat([buf, d]); pump(); });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return Object.assign(state, {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/cvmfs/${fqrn}`,
    close: () => new Promise<void>((r) => { for (const tm of timers) clearTimeout(tm); for (const s of sockets) s.destroy(); server.close(() => r()); }),
  });
}

/** The objects a client may ask for, in an order that does not depend on their hashes (suffix,
 *  then size), so that a seed replays the same faults on the same objects. */
function listObjects(dir: string): string[] {
  const data: { rel: string; size: number }[] = [];
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = `${rel}/${e.name}`;
      if (e.isDirectory()) { if (e.name !== 'txn') walk(r); } else data.push({ rel: r, size: fs.statSync(path.join(dir, r)).size });
    }
  };
  walk('data');
  const suffix = (rel: string) => /[A-Z]$/.exec(rel)?.[0] ?? '';
  data.sort((a, b) => suffix(a.rel).localeCompare(suffix(b.rel)) || a.size - b.size || a.rel.localeCompare(b.rel));
  return ['.cvmfspublished', '.cvmfswhitelist', ...data.map((d) => d.rel)];
}

/** Deterministic incompressible bytes (AES-CTR of zeros), so file objects are the same every run. */
function pseudoRandomBytes(n: number, label: string): Buffer {
  const key = createHash('sha256').update(label).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

t.test('generated server responses: the client settles, serves only true bytes, fails with codes', async (t) => {
  const tStart = performance.now();
  // Not t.testdir(): its path is fixed per test name, so two runs of this file at once (a whole
  // suite next to a single file) would delete each other's caches.
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'cvmfs-fuzz-client-'));
  t.teardown(() => fs.promises.rm(base, { recursive: true, force: true }));
  const repo = await makeRepo(base, 'fuzz.example.org');
  const files: Record<string, Buffer> = {
    'a.txt': Buffer.from('alpha\n'),
    'sub/b.bin': pseudoRandomBytes(100_000, 'b'),
    'sub/c.txt': Buffer.from('all work and no play makes jack a dull boy\n'.repeat(2000)),
    'big.bin': pseudoRandomBytes(5 * 1024 * 1024 + 3, 'big'), // above 4 MiB: chunked
  };
  await repo.ingest('/l', await tarOf(Object.entries(files).map(([name, content]) => ({ type: 'file' as const, name, content }))));
  const objects = listObjects(repo.dir);
  t.comment(`${objects.length} objects served: ${objects.map((o) => o.slice(-12)).join(' ')}`);
  const pem = fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8');
  const a = await hostileServer(repo.dir, repo.fqrn, objects);
  const b = await hostileServer(repo.dir, repo.fqrn, objects);
  t.teardown(() => Promise.all([a.close(), b.close()]));

  const scriptArb = fc.array(fc.array(action, { minLength: 1, maxLength: 3 }), { minLength: objects.length, maxLength: objects.length })
    .map((per): Script => new Map(objects.map((o, i) => [o, per[i]!])));
  let cases = 0;
  let succeeded = 0;
  let failed = 0;
  let slowest = 0;
  let totalMs = 0;
  const setupMs = performance.now() - tStart;
  const codes = new Map<string, number>();

  await fc.assert(fc.asyncProperty(scriptArb, fc.option(scriptArb, { freq: 2 }), async (scriptA, scriptB) => {
    cases++;
    const honestB = scriptB === null;
    a.script = scriptA; a.counts = new Map();
    b.script = scriptB ?? new Map(); b.counts = new Map();
    const cacheDir = path.join(base, `cache-${cases}`);
    const trace = () => `A: ${[...scriptA].filter(([, v]) => v.some((x) => x.kind !== 'correct')).map(([k, v]) => `${k.slice(-8)}=${v.map(describe).join(',')}`).join(' ')}`
      + `${honestB ? '; B honest' : `; B: ${[...scriptB].filter(([, v]) => v.some((x) => x.kind !== 'correct')).map(([k, v]) => `${k.slice(-8)}=${v.map(describe).join(',')}`).join(' ')}`}`;
    const outcomes: { what: string; ok: boolean; err?: unknown }[] = [];
    const t0 = performance.now();
    const run = (async () => {
      let repoHandle;
      try {
        repoHandle = await openRepository({ fqrn: repo.fqrn, servers: [a.url, b.url], cacheDir, publicKeys: [{ name: 'fuzz.pub', pem }], ...LIMITS });
      } catch (err) { outcomes.push({ what: 'open', ok: false, err }); return; }
      try {
        outcomes.push({ what: 'open', ok: true });
        for (const [name, content] of Object.entries(files)) {
          try {
            const got = await repoHandle.readFile(`/l/${name}`);
            if (!got.equals(content)) {
              throw new Error(`${name}: ${got.length} bytes served (sha1 ${createHash('sha1').update(got).digest('hex')}), not the true bytes`);
            }
            outcomes.push({ what: name, ok: true });
          } catch (err) {
            if (!(err instanceof CvmfsError)) throw err;
            outcomes.push({ what: name, ok: false, err });
          }
        }
      } finally { await repoHandle.close(); }
    })();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((r) => { timer = setTimeout(() => r('timeout'), CASE_DEADLINE_MS); });
    const settled = await Promise.race([run.then(() => 'done' as const), timedOut]).finally(() => clearTimeout(timer));
    const ms = performance.now() - t0;
    slowest = Math.max(slowest, ms);
    totalMs += ms;
    await fs.promises.rm(cacheDir, { recursive: true, force: true });
    if (settled === 'timeout') throw new Error(`did not settle within ${CASE_DEADLINE_MS} ms (${trace()})`);
    for (const o of outcomes) {
      if (o.ok) { succeeded++; continue; }
      failed++;
      if (!(o.err instanceof CvmfsError) || typeof o.err.code !== 'string') throw new Error(`${o.what}: failure without a code: ${o.err instanceof Error ? o.err.stack : String(o.err)} (${trace()})`);
      codes.set(o.err.code, (codes.get(o.err.code) ?? 0) + 1);
      if (honestB) throw new Error(`${o.what} failed although the second server is honest: ${o.err.message} (${trace()})`);
    }
    return true;
  }), { seed: SEED, numRuns: RUNS, endOnFailure: !process.env.FUZZ_SHRINK, ...(process.env.FUZZ_PATH ? { path: process.env.FUZZ_PATH } : {}) });

  t.comment(`${cases} cases run (seed ${SEED}): ${succeeded} operations succeeded, ${failed} failed with codes`
    + ` ${JSON.stringify(Object.fromEntries(codes))}; set-up ${setupMs.toFixed(0)} ms, cases ${totalMs.toFixed(0)} ms`
    + ` (mean ${(totalMs / Math.max(1, cases)).toFixed(0)} ms, slowest ${slowest.toFixed(0)} ms)`);
  t.equal(cases, RUNS, 'every case ran');
});
