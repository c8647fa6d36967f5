/**
 * The plugin's metrics server on a real unix socket and on TCP, read by the built
 * `cvmfs-repo stats`: the table, --json, 404s, socket permissions, and the coded failures
 * (nothing listening, server error, stalled server).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { createPluginMetrics, listenMetrics, type RepositorySample } from '../../../plugin/metrics.js';

const run = promisify(execFile);
const CLI = path.resolve('dist/cvmfs/cli.js');

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

function get(target: { socketPath: string } | { port: number }, method: string, p: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ ...target, ...('port' in target ? { host: '127.0.0.1' } : {}), method, path: p }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const withPrefetch = (bytesFetched: number, cacheHits: number, cacheMisses: number) => ({
  revision: 3, rootHash: 'abc', offline: false, bytesFetched, objectsFetched: 17, cacheHits, cacheMisses, cacheUsedBytes: 99,
  prefetchObjects: 4, prefetchBytes: 4000, prefetchHits: 3, prefetchHitBytes: 3000, prefetchWasteBytes: 2_500_000,
});
const log = () => {};

/** Unix socket paths are limited to 107 bytes: t.testdir() paths under a deep checkout exceed it. */
function shortDir(t: Test): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'gdm-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('unix socket: GET /metrics only, 0600 in a 0700 directory, read by cvmfs-repo stats', async (t) => {
  if (!fs.existsSync(CLI)) { t.fail('dist/cvmfs/cli.js missing: run "npm run build" first'); return; }
  const socket = path.join(shortDir(t), 'sub', 'metrics.sock');
  const samples: RepositorySample[] = [
    { fqrn: 'b.example.org', counters: withPrefetch(0, 0, 0), mounted: false },
    { fqrn: 'a.example.org', counters: withPrefetch(1_234_567, 9, 1) },
  ];
  const srv = await listenMetrics(createPluginMetrics(async () => samples), { kind: 'unix', path: socket }, log);
  t.teardown(() => srv.close());
  t.equal(srv.url, `unix:${socket}`);
  t.equal(fs.statSync(socket).mode & 0o777, 0o600, 'socket private to its owner');
  t.equal(fs.statSync(path.dirname(socket)).mode & 0o777, 0o700, 'directory created private');

  const ok = await get({ socketPath: socket }, 'GET', '/metrics');
  t.equal(ok.status, 200);
  t.match(ok.type, /^text\/plain; version=0\.0\.4/);
  t.match(ok.body, /^cvmfs_client_bytes_fetched_total\{repository="a\.example\.org"\} 1234567$/m);
  t.equal((await get({ socketPath: socket }, 'GET', '/metrics?x=1')).status, 200, 'a query string is ignored');
  t.equal((await get({ socketPath: socket }, 'HEAD', '/metrics')).body, '', 'HEAD: no body');
  t.equal((await get({ socketPath: socket }, 'GET', '/')).status, 404);
  t.equal((await get({ socketPath: socket }, 'POST', '/metrics')).status, 404);

  const table = await cli(['stats', '--socket', socket]);
  t.equal(table.code, 0, table.stderr);
  const lines = table.stdout.trimEnd().split('\n');
  t.equal(lines.length, 3, 'a header and one row per repository');
  t.match(lines[0], /^REPOSITORY\s+MOUNTED\s+REVISION\s+OBJECTS\s+FETCHED MB\s+HITS\s+MISSES\s+HIT RATIO\s+PREFETCH HITS\s+PREFETCH WASTE MB$/);
  t.match(lines[1], /^a\.example\.org\s+yes\s+3\s+17\s+1\.2\s+9\s+1\s+90\.0%\s+3\s+2\.5$/, 'sorted by repository');
  t.match(lines[2], /^b\.example\.org\s+no\s+3\s+17\s+0\.0\s+0\s+0\s+-\s+3\s+2\.5$/, 'no reads: no ratio');

  const json = await cli(['stats', '--socket', socket, '--json']);
  t.equal(json.code, 0, json.stderr);
  const doc = JSON.parse(json.stdout) as { samples: { name: string; labels: Record<string, string>; value: number }[]; repositories: { repository: string; values: Record<string, number> }[] };
  t.same(doc.repositories.map((r) => r.repository), ['a.example.org', 'b.example.org']);
  t.equal(doc.repositories[0]!.values.bytes_fetched, 1_234_567);
  t.equal(doc.repositories[1]!.values.mounted, 0);
  t.ok(doc.samples.some((s) => s.name === 'cvmfs_client_prefetch_hits_total' && s.labels.repository === 'a.example.org' && s.value === 3));
  t.ok(doc.samples.every((s) => s.name.startsWith('cvmfs_client_')), 'only cvmfs_client_* samples');

  await srv.close();
  await srv.close();
  t.notOk(fs.existsSync(socket), 'close removes the socket, and is idempotent');
});

t.test('TCP address: stats --url, no prefetch columns when none are reported; an empty plugin says so', async (t) => {
  if (!fs.existsSync(CLI)) { t.fail('dist/cvmfs/cli.js missing: run "npm run build" first'); return; }
  let samples: RepositorySample[] = [{ fqrn: 'c.example.org', counters: { bytesFetched: 5_000_000, objectsFetched: 2, cacheHits: 1, cacheMisses: 3, revision: 8 } }];
  const srv = await listenMetrics(createPluginMetrics(async () => samples), { kind: 'tcp', host: '127.0.0.1', port: 0 }, log);
  t.teardown(() => srv.close());
  t.match(srv.url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
  const base = srv.url.replace(/\/metrics$/, '');
  const r = await cli(['stats', '--url', base]);
  t.equal(r.code, 0, r.stderr);
  t.notMatch(r.stdout, /PREFETCH/);
  t.match(r.stdout, /^c\.example\.org\s+yes\s+8\s+2\s+5\.0\s+1\s+3\s+25\.0%$/m);
  samples = [];
  const empty = await cli(['stats', '--url', srv.url]);
  t.equal(empty.code, 0, empty.stderr);
  t.match(empty.stdout, /no repository mounted since the plugin started/);
});

t.test('a file that is not a socket is never replaced', async (t) => {
  const file = path.join(shortDir(t), 'metrics.sock');
  fs.writeFileSync(file, 'keep me');
  await t.rejects(listenMetrics(createPluginMetrics(async () => []), { kind: 'unix', path: file }, log), { message: /not a socket/ });
  t.equal(fs.readFileSync(file, 'utf8'), 'keep me');
});

t.test('metrics-server faults: nothing listening, render failure, stall; bad flags', async (t) => {
  if (!fs.existsSync(CLI)) { t.fail('dist/cvmfs/cli.js missing: run "npm run build" first'); return; }
  const dir = shortDir(t);
  let r = await cli(['stats', '--socket', path.join(dir, 'absent.sock')]);
  t.equal(r.code, 1);
  t.match(r.stderr, /CVMFS_CONNECTION_FAILED: cannot reach the plugin's metrics at .*absent\.sock: .*ENOENT.*CVMFSGD_METRICS/);

  const failing = await listenMetrics(createPluginMetrics(async () => { throw new Error('source broke'); }), { kind: 'unix', path: path.join(dir, 'f.sock') }, log);
  t.teardown(() => failing.close());
  r = await cli(['stats', '--socket', path.join(dir, 'f.sock')]);
  t.equal(r.code, 1);
  t.match(r.stderr, /CVMFS_HTTP_ERROR: .*f\.sock answered 500 to GET \/metrics/);

  // Accepts the connection and never answers.
  const stalled = net.createServer(() => {});
  await new Promise<void>((resolve) => stalled.listen(path.join(dir, 's.sock'), resolve));
  t.teardown(() => new Promise<void>((resolve) => stalled.close(() => resolve())));
  stalled.on('connection', (c) => t.teardown(() => c.destroy()));
  const t0 = Date.now();
  r = await cli(['stats', '--socket', path.join(dir, 's.sock')]);
  t.equal(r.code, 1);
  t.match(r.stderr, /CVMFS_TRANSFER_TIMEOUT: no answer from .*s\.sock within 5 s/);
  t.ok(Date.now() - t0 < 15_000, 'gives up after its timeout');

  r = await cli(['stats', '--socket', path.join(dir, 'x.sock'), '--url', 'http://127.0.0.1:1']);
  t.equal(r.code, 2);
  t.match(r.stderr, /CVMFS_BAD_ARGUMENT: stats takes --socket PATH or --url URL, not both/);
  r = await cli(['stats', '--url', 'https://127.0.0.1:1']);
  t.equal(r.code, 2);
  t.match(r.stderr, /only http:\/\//);
});
