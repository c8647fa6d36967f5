/**
 * Fault tests: a trickling, stalled or truncating server must never stall a read. The first URL
 * misbehaves, the second is healthy: open and read succeed with the true bytes, at the cost of
 * about one timeout (or one low-speed window). When every server misbehaves, a coded error comes
 * back within a bounded time.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import t, { type Test } from 'tap';
import { CvmfsError, Fetcher, openRepository, serveRepository, type RepositoryOptions } from '../../../cvmfs/index.js';
import { faultyServer, type FaultyServer } from '../../lib/faulty-server.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import { tarOf } from '../../lib/tar-of.js';

/** Headroom for a loaded 2-core machine: every bound below separates the fixed behaviour from the
 *  broken one (a hang, a retry per object, a 10 s timeout), not fast from slow. */
const SLACK_MS = 6000;
const files: Record<string, Buffer> = { 'a.txt': Buffer.from('alpha\n'), 'mid.bin': randomBytes(200_000) };

async function sampleRepo(base: string): Promise<Fixture> {
  const repo = await makeRepo(base, 'hostile.example.org');
  await repo.ingest('/l', await tarOf(Object.entries(files).map(([name, content]) => ({ type: 'file' as const, name, content }))));
  return repo;
}

function opts(repo: Fixture, servers: string[], cacheDir: string, extra: Partial<RepositoryOptions> = {}): RepositoryOptions {
  return { fqrn: repo.fqrn, servers, cacheDir, publicKeys: [{ name: 'repo.pub', pem: fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8') }],
    timeoutMs: 1000, ...extra };
}

/** A consumer slower than the server: reads `step` bytes, then holds the stream for `holdMs`. */
async function readSlowly(body: Readable, step: number, holdMs: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    const c = (body.read(step) ?? body.read()) as Buffer | null;
    if (c) { parts.push(c); await new Promise((r) => setTimeout(r, holdMs)); continue; }
    if (body.readableEnded) return Buffer.concat(parts);
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => { body.off('readable', done); body.off('end', done); body.off('error', done); if (err) reject(err); else resolve(); };
      body.on('readable', done); body.on('end', done); body.on('error', done);
    });
  }
}

/** Opens the repository and reads every file; returns the elapsed time and the failover count. */
async function openAndRead(o: RepositoryOptions): Promise<{ ms: number; failovers: number; bytes: Record<string, Buffer> }> {
  const t0 = performance.now();
  const r = await openRepository(o);
  try {
    const bytes: Record<string, Buffer> = {};
    for (const name of Object.keys(files)) bytes[name] = await r.readFile(`/l/${name}`);
    return { ms: performance.now() - t0, failovers: r.counters().failovers, bytes };
  } finally { await r.close(); }
}

/** A faulty and a healthy server; `baselineMs` is what open + read costs from the healthy one
 *  alone, so that the assertions bound what the fault adds, not how busy the machine is. */
async function servers(t: Test, repo: Fixture, base: string): Promise<{ bad: FaultyServer; good: string; baselineMs: number }> {
  const bad = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => bad.close());
  const good = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => good.close());
  const baselineMs = (await openAndRead(opts(repo, [good.url], path.join(base, 'baseline')))).ms;
  return { bad, good: good.url, baselineMs };
}

t.test('stall: a first server that accepts and never answers costs one timeout, not a retry per object', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const { bad, good, baselineMs } = await servers(t, repo, base);
  bad.mode = 'stall';
  // Default maxRetries (1) and back-off (2 s): a timed-out host must not be retried.
  const got = await openAndRead(opts(repo, [bad.url, good], path.join(base, 'cache')));
  for (const [name, content] of Object.entries(files)) t.ok(got.bytes[name]!.equals(content), `${name}: true bytes`);
  const cost = got.ms - baselineMs;
  t.comment(`stalled first server: open + read in ${got.ms.toFixed(0)} ms, ${cost.toFixed(0)} ms more than from the healthy one alone (timeout 1000 ms)`);
  t.ok(cost < 1000 + SLACK_MS, `about one timeout, not one per object (${cost.toFixed(0)} ms; 22-44 s before the fix)`);
  t.same([...bad.log].sort(), ['.cvmfspublished', '.cvmfswhitelist'], 'the dead host is asked once, for the manifest and the whitelist at once; the nested certificate fetch starts at the healthy host');
  t.equal(got.failovers, 1);
});

t.test('trickle: a first server sending 1 byte every 200 ms is dropped after the low-speed window', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const { bad, good, baselineMs } = await servers(t, repo, base);
  bad.mode = 'trickle';
  bad.trickleMs = 200;
  // The idle timeout (5 s) never fires on a trickle; only the low-speed limit catches it.
  const got = await openAndRead(opts(repo, [bad.url, good], path.join(base, 'cache'), { timeoutMs: 5000, lowSpeedWindowMs: 1000 }));
  for (const [name, content] of Object.entries(files)) t.ok(got.bytes[name]!.equals(content), `${name}: true bytes`);
  const cost = got.ms - baselineMs;
  t.comment(`trickling first server: open + read in ${got.ms.toFixed(0)} ms, ${cost.toFixed(0)} ms more than from the healthy one alone (low-speed window 1000 ms)`);
  t.ok(cost < 1000 + SLACK_MS, `within the window + slack (${cost.toFixed(0)} ms; the trickle alone would take minutes)`);
  t.same([...bad.log].sort(), ['.cvmfspublished', '.cvmfswhitelist'], 'manifest and whitelist asked at once, nothing after');
});

t.test('trickle: the 1-byte-per-5-s attacker of the report, with the default low-speed window', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const { bad, good, baselineMs } = await servers(t, repo, base);
  bad.mode = 'trickle';
  bad.trickleMs = 900; // under the 1000 ms idle timeout, so only the low-speed limit can catch it
  const got = await openAndRead(opts(repo, [bad.url, good], path.join(base, 'cache')));
  t.ok(got.bytes['mid.bin']!.equals(files['mid.bin']!), 'true bytes');
  t.ok(got.ms - baselineMs < 1000 + SLACK_MS, `dropped after the default window (= timeoutMs) + slack (${(got.ms - baselineMs).toFixed(0)} ms; the trickle alone would take minutes)`);
  t.same([...bad.log].sort(), ['.cvmfspublished', '.cvmfswhitelist'], 'dropped on the first objects (manifest and whitelist, asked at once) and not asked again');
});

t.test('stall-body: headers and half the body, then silence: one idle timeout', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const { bad, good, baselineMs } = await servers(t, repo, base);
  bad.modeOf = (rel) => (rel.startsWith('data/') && rel.endsWith('C') ? 'stall-body' : undefined); // catalogs only
  const got = await openAndRead(opts(repo, [bad.url, good], path.join(base, 'cache'), { lowSpeedLimitBytesPerSecond: 0 }));
  for (const [name, content] of Object.entries(files)) t.ok(got.bytes[name]!.equals(content), `${name}: true bytes`);
  t.ok(got.ms - baselineMs < 1000 + SLACK_MS, `about one timeout (${(got.ms - baselineMs).toFixed(0)} ms)`);
  t.equal(bad.log.filter((r) => r.endsWith('C')).length, 1, 'one catalog request to the bad host, then sticky failover');
});

t.test('truncate: a body that ends before its Content-Length is an error and fails over at once', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const { bad, good, baselineMs } = await servers(t, repo, base);
  bad.modeOf = (rel) => (rel.startsWith('data/') ? 'truncate' : undefined);
  const got = await openAndRead(opts(repo, [bad.url, good], path.join(base, 'cache'), { timeoutMs: 10_000 }));
  for (const [name, content] of Object.entries(files)) t.ok(got.bytes[name]!.equals(content), `${name}: true bytes`);
  t.ok(got.ms - baselineMs < SLACK_MS, `no 10 s timeout waited for (${(got.ms - baselineMs).toFixed(0)} ms)`);

  const only = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => only.close());
  only.mode = 'truncate';
  const f = new Fetcher({ servers: [only.url], timeoutMs: 10_000, backoffInitMs: 10 });
  t.teardown(() => f.close());
  const t0 = performance.now();
  await t.rejects(f.fetch('.cvmfspublished', async (body) => { for await (const _ of body) { /* drain */ } return true; }),
    { code: 'CVMFS_ALL_SERVERS_FAILED', message: /CVMFS_TRANSFER_TRUNCATED/ });
  t.ok(performance.now() - t0 < SLACK_MS, 'settles without waiting for the 10 s timeout');
});

t.test('all servers trickling: a coded error within a bounded time, listing each attempt', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const a = await faultyServer(repo.dir, repo.fqrn);
  const b = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => Promise.all([a.close(), b.close()]));
  for (const s of [a, b]) { s.mode = 'trickle'; s.trickleMs = 100; }
  const t0 = performance.now();
  const err = await openRepository(opts(repo, [a.url, b.url], path.join(base, 'cache'), { timeoutMs: 5000, lowSpeedWindowMs: 1000 }))
    .then(() => undefined, (e: unknown) => e);
  const ms = performance.now() - t0;
  t.ok(err instanceof CvmfsError, 'a CvmfsError');
  t.match(err, { code: 'CVMFS_ALL_SERVERS_FAILED', kind: 'unavailable' });
  const msg = (err as Error).message;
  t.equal(msg.match(/CVMFS_TRANSFER_TOO_SLOW/g)?.length, 2, `both attempts named:\n${msg}`);
  t.ok(msg.includes(a.url) && msg.includes(b.url), 'each URL named');
  t.ok(ms < 2 * 1000 + SLACK_MS, `two windows + slack (${ms.toFixed(0)} ms)`);
});

t.test('deadline: a server fast enough for the low-speed limit but never done is cut at the deadline', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const { bad, good, baselineMs } = await servers(t, repo, base);
  const r0 = await openRepository(opts(repo, [good], path.join(base, 'probe')));
  const mid = (await r0.stat('/l/mid.bin')).hash!;
  await r0.close();
  // 64 bytes every 20 ms = 3.2 KB/s, above the 1 KiB/s limit; the ~200 KB object would take a minute.
  bad.trickleMs = 20;
  bad.trickleBytes = 64;
  bad.modeOf = (rel) => (rel.includes(mid.slice(2)) ? 'trickle' : undefined);
  const got = await openAndRead(opts(repo, [bad.url, good], path.join(base, 'cache'), { deadlineMs: 1500 }));
  t.ok(got.bytes['mid.bin']!.equals(files['mid.bin']!), 'true bytes from the second server');
  t.ok(got.ms - baselineMs < 1500 + SLACK_MS, `cut at the deadline (${(got.ms - baselineMs).toFixed(0)} ms)`);

  bad.modeOf = undefined;
  bad.mode = 'trickle';
  const f = new Fetcher({ servers: [bad.url], timeoutMs: 1000, deadlineMs: 800, maxRetries: 3 });
  t.teardown(() => f.close());
  const asked = bad.log.length;
  const t0 = performance.now();
  await t.rejects(f.fetch(`data/${mid.slice(0, 2)}/${mid.slice(2)}`, async (body) => { for await (const _ of body) { /* drain */ } }),
    { code: 'CVMFS_ALL_SERVERS_FAILED', message: /CVMFS_TRANSFER_DEADLINE/ });
  const ms = performance.now() - t0;
  t.equal(bad.log.length - asked, 1, 'no retry of the slow host');
  t.ok(ms < 800 + SLACK_MS, `one deadline (${ms.toFixed(0)} ms)`);
});

t.test('a slow consumer is not a slow server: the clock stops while the consumer holds the stream', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const { good } = await servers(t, repo, base);
  const r0 = await openRepository(opts(repo, [good], path.join(base, 'probe')));
  const mid = (await r0.stat('/l/mid.bin')).hash!;
  await r0.close();
  const rel = `data/${mid.slice(0, 2)}/${mid.slice(2)}`;
  const raw = fs.readFileSync(path.join(repo.dir, rel));
  const f = new Fetcher({ servers: [good], timeoutMs: 200, lowSpeedWindowMs: 200, deadlineMs: 400, maxRetries: 0 });
  t.teardown(() => f.close());
  const t0 = performance.now();
  // 32 KiB per 300 ms: ~2 s for the body; each hold is longer than the idle timeout, the whole
  // read far longer than the low-speed window and the deadline.
  const got = await f.fetch(rel, (body) => readSlowly(body, 32 * 1024, 300));
  const ms = performance.now() - t0;
  t.ok(got.equals(raw), 'whole body');
  t.ok(ms > 1000, `the consumer really was slow (${ms.toFixed(0)} ms)`);
  t.equal(f.metrics.requests, 1, 'one request, no failure');
});

t.test('an AbortSignal settles a fetch at once', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const { bad } = await servers(t, repo, base);
  bad.mode = 'stall';
  const f = new Fetcher({ servers: [bad.url], timeoutMs: 10_000 });
  t.teardown(() => f.close());
  const t0 = performance.now();
  await t.rejects(f.fetch('.cvmfspublished', async () => 1, { signal: AbortSignal.timeout(100) }), { code: 'CVMFS_ABORTED' });
  t.ok(performance.now() - t0 < SLACK_MS, 'settled at the abort, not at the 10 s timeout');
});
