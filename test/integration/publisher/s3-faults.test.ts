/**
 * s3-stall-headers, s3-stall-body, s3-unreachable: every S3 call settles. A store that never
 * answers, one that stops sending in the middle of a body, and one that is not there fail the
 * job (after its retries) with a coded reason, and the repository stays as it was.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { S3ObjectStore, startPublisher } from '../../../publisher/index.js';
import { makeRepo } from '../../lib/repo-fixture.js';
import { S3RVER_CREDENTIALS } from '../../lib/s3.js';
import { minioEvent, postEvent, statusText, waitFor } from '../../lib/publisher.js';

const FQRN = 'faults.example.org';
const KEY = 'c'.repeat(64);

/** An "S3 endpoint" that misbehaves on every GetObject. */
async function badStore(t: Test, mode: 'silent' | 'stall-body'): Promise<string> {
  const sockets = new Set<import('node:net').Socket>();
  const server = http.createServer((req, res) => {
    if (mode === 'silent') return; // never answers
    res.writeHead(200, { 'Content-Length': '100000', ETag: '"abc"', 'Content-Type': 'application/octet-stream' });
    res.write(Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0])); // a gzip header, then nothing more
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => { for (const s of sockets) s.destroy(); return new Promise<void>((r) => server.close(() => r())); });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function run(t: Test, endpoint: string, code: RegExp): Promise<void> {
  const base = t.testdir();
  const repo = await makeRepo(base, FQRN);
  const before = repo.manifest();
  const pub = await startPublisher({
    repoDir: repo.dir, keysDir: repo.keys, fqrn: FQRN, stateDir: path.join(base, 'state'), port: 0, retryDelayMs: 50, threads: 1,
    objects: new S3ObjectStore({ endpoint, credentials: S3RVER_CREDENTIALS, headersTimeoutMs: 400, idleTimeoutMs: 400 }),
  });
  t.teardown(() => pub.close());
  t.equal((await postEvent(pub.url, minioEvent('layers', [{ key: KEY, etag: 'e1', size: 100000 }]))).status, 200);
  const s = await waitFor(pub.url, KEY, undefined, (x) => x.state === 'failed', 60_000);
  t.match(s.code, code, `${s.reason}`);
  t.match((await statusText(pub.url, KEY)).text, /^failed: PUB_/);
  t.ok(repo.manifest().equals(before), 'the repository is unchanged');
}

t.test('s3-stall-headers: a store that never answers', (t) => badStore(t, 'silent').then((u) => run(t, u, /^PUB_S3_TIMEOUT$/)));
t.test('s3-stall-body: a store that stops sending mid-body', (t) => badStore(t, 'stall-body').then((u) => run(t, u, /^PUB_S3_TIMEOUT$/)));
t.test('s3-unreachable: nothing listens at the endpoint', (t) => run(t, 'http://127.0.0.1:9', /^PUB_S3_FAILED$/));
