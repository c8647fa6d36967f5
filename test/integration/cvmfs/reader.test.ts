import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { openRepository, resign, serveRepository, type RepositoryOptions } from '../../../cvmfs/index.js';
import { deadUrl, faultyServer } from '../../lib/faulty-server.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import { tarOf } from '../../lib/tar-of.js';

const big = randomBytes(30 * 1024 * 1024 + 77);
const files: Record<string, Buffer> = { 'a.txt': Buffer.from('alpha'), 'dir/b.bin': randomBytes(100_000), 'dir/big.bin': big, 'empty': Buffer.alloc(0) };

async function sampleRepo(base: string): Promise<Fixture> {
  const repo = await makeRepo(base, 'read.example.org');
  await repo.ingest('/layers/one', await tarOf([
    ...Object.entries(files).map(([name, content]) => ({ type: 'file' as const, name, content, mode: 0o640, uid: 7, gid: 8,
      ...(name === 'a.txt' ? { pax: { 'SCHILY.xattr.user.color': 'blue' } } : {}) })),
    { type: 'symlink', name: 'link', target: 'a.txt' },
    { type: 'symlink', name: 'varlink', target: '$(ARCH:-amd64)/lib' },
    { type: 'link', name: 'hard', target: 'a.txt' },
    { type: 'character-device', name: 'null', major: 1, minor: 3 },
  ]));
  return repo;
}

function opts(repo: Fixture, servers: string[], cacheDir: string, extra: Partial<RepositoryOptions> = {}): RepositoryOptions {
  return { fqrn: repo.fqrn, servers, cacheDir, publicKeys: [{ name: 'repo.pub', pem: fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8') }],
    timeoutMs: 2000, maxRetries: 0, backoffInitMs: 10, ...extra };
}

t.test('reads what the writer wrote: tree, bytes, modes, links, xattrs, inodes, lazily', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => srv.close());
  const r = await openRepository(opts(repo, [srv.url], path.join(base, 'cache'), { env: { ARCH: 'arm64' } }));
  t.teardown(() => r.close());
  t.equal(r.revision, 2);
  const root = await r.stat('/');
  t.equal(root.inode, 256, 'root inode 256');
  t.equal(r.counters().catalogsAttached, 1, 'nested catalog not loaded before it is needed');
  const names = (await r.readdir('/layers/one')).map((d) => d.name).sort();
  t.same(names, ['.cvmfscatalog', 'a.txt', 'dir', 'empty', 'hard', 'link', 'null', 'varlink']);
  t.equal(r.counters().catalogsAttached, 2);
  for (const [name, content] of Object.entries(files)) t.ok((await r.readFile(`/layers/one/${name}`)).equals(content), `${name} bytes`);
  const a = await r.stat('/layers/one/a.txt');
  t.equal(a.mode, 0o100640);
  t.equal(a.uid, 7);
  t.equal((await r.stat('/layers/one/hard')).inode, a.inode, 'hardlinks share an inode');
  t.equal(a.linkcount, 2);
  t.equal(await r.readlink('/layers/one/link'), 'a.txt');
  t.equal(await r.readlink('/layers/one/varlink'), 'arm64/lib', '$(VAR:-default) expanded');
  t.equal((await r.getxattr('/layers/one/varlink', 'user.rawlink')).toString(), '$(ARCH:-amd64)/lib');
  t.equal((await r.getxattr('/layers/one/a.txt', 'user.color')).toString(), 'blue');
  t.ok((await r.listxattr('/layers/one/a.txt')).includes('user.color'));
  t.equal((await r.getxattr('/', 'user.fqrn')).toString(), repo.fqrn);
  t.equal((await r.stat('/layers/one/null')).rdev, 0x103n);
  await t.rejects(r.stat('/layers/one/nope'), { code: 'CVMFS_PATH_NOT_FOUND' });
  await t.rejects(r.readdir('/layers/one/a.txt'), { code: 'CVMFS_NOT_A_DIRECTORY' });
  await t.rejects(r.open('/layers/one/dir'), { code: 'CVMFS_NOT_A_FILE' });

  const before = r.counters().bytesFetched;
  const h = await r.open('/layers/one/dir/big.bin');
  const buf = Buffer.alloc(1000);
  const pos = 20 * 1024 * 1024;
  t.equal(await h.read(buf, 0, 1000, pos), 1000);
  t.ok(buf.equals(big.subarray(pos, pos + 1000)), 'read at an offset of a chunked file');
  await h.close();
  t.equal(r.counters().bytesFetched, before, 'whole file was already cached by readFile');
  const st = r.createReadStream('/layers/one/dir/big.bin');
  const parts: Buffer[] = [];
  for await (const c of st) parts.push(c as Buffer);
  t.ok(Buffer.concat(parts).equals(big), 'stream reads the whole chunked file');
  const c = JSON.parse((await r.getxattr('/', 'user.counters')).toString());
  t.ok(c.cacheHits > 0 && c.objectsFetched > 0, 'counters readable through the magic xattr');
});

t.test('chunked files fetch only the chunks a read touches (cold cache)', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => srv.close());
  const r = await openRepository(opts(repo, [srv.url], path.join(base, 'cache'), { chunkReadAhead: 0 }));
  t.teardown(() => r.close());
  const h = await r.open('/layers/one/dir/big.bin');
  const before = r.counters().bytesInflated;
  const buf = Buffer.alloc(10);
  await h.read(buf, 0, 10, 0);
  await h.close();
  const got = r.counters().bytesInflated - before;
  t.ok(got > 0 && got <= 16 * 1024 * 1024, `one chunk fetched (${got} bytes) of a ${big.length}-byte file`);
});

t.test('corrupted-object: EIO-worthy error, never wrong bytes; a second server with the good object succeeds', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const bad = await faultyServer(repo.dir, repo.fqrn);
  const good = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => Promise.all([bad.close(), good.close()]));
  const r1 = await openRepository(opts(repo, [bad.url], path.join(base, 'c1')));
  t.teardown(() => r1.close());
  const d = await r1.stat('/layers/one/dir/b.bin');
  bad.corrupt.add(d.hash!.slice(2));
  await t.rejects(r1.readFile('/layers/one/dir/b.bin'), { code: 'CVMFS_HASH_MISMATCH' }, 'corrupt object refused');
  t.equal(r1.counters().retriesNoCache, 1, 'retried once with no-cache');
  t.notOk(fs.existsSync(path.join(base, 'c1', d.hash!.slice(0, 2), d.hash!.slice(2))), 'nothing corrupt entered the cache');
  const r2 = await openRepository(opts(repo, [bad.url, good.url], path.join(base, 'c2')));
  t.teardown(() => r2.close());
  t.ok((await r2.readFile('/layers/one/dir/b.bin')).equals(files['dir/b.bin']!), 'good server serves it');
  t.equal(r2.counters().failovers, 1);
});

t.test('server-down-failover and all-servers-down with a warm cache (offline)', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const srv = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => srv.close());
  const dead = await deadUrl(repo.fqrn);
  const cache = path.join(base, 'cache');
  const r = await openRepository(opts(repo, [dead, srv.url], cache));
  t.equal((await r.readFile('/layers/one/a.txt')).toString(), 'alpha', 'first server down: failover');
  await r.close();
  srv.mode = '503';
  const off = await openRepository(opts(repo, [dead, srv.url], cache));
  t.teardown(() => off.close());
  t.ok(off.isOffline, 'offline mode');
  t.equal((await off.readFile('/layers/one/a.txt')).toString(), 'alpha', 'cached file still reads');
  await t.rejects(off.readFile('/layers/one/dir/b.bin'), { code: 'CVMFS_ALL_SERVERS_FAILED' }, 'uncached file: unavailable');
  await t.rejects(openRepository(opts(repo, [dead], path.join(base, 'cold'))), { code: 'CVMFS_ALL_SERVERS_FAILED', message: /cannot fetch \.cvmfspublished/ });
});

t.test('trust failures refuse to open, naming the cause', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const srv = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => srv.close());
  const manifest = fs.readFileSync(path.join(repo.dir, '.cvmfspublished'));
  const tampered = Buffer.from(manifest);
  tampered[manifest.indexOf('\nS') + 2] = 0x39;
  srv.override.set('.cvmfspublished', tampered);
  await t.rejects(openRepository(opts(repo, [srv.url], path.join(base, 'c1'))), { code: 'CVMFS_BAD_SIGNATURE', message: /altered|tampered/ }, 'tampered manifest');
  srv.override.clear();
  const other = await makeRepo(path.join(base, 'other'), 'read.example.org');
  await t.rejects(openRepository({ ...opts(repo, [srv.url], path.join(base, 'c2')), publicKeys: [{ name: 'other.pub', pem: fs.readFileSync(path.join(other.keys, 'read.example.org.pub'), 'utf8') }] }),
    { code: 'CVMFS_BAD_SIGNATURE', message: /not signed by any configured master key \(other\.pub\)/ }, 'wrong public key');
  await t.rejects(openRepository({ ...opts(repo, [srv.url.replace('read.example.org', 'read.example.org')], path.join(base, 'c3')), fqrn: 'wrong.example.org', servers: [srv.url] }),
    { code: 'CVMFS_NAME_MISMATCH', message: /manifest is for "read\.example\.org", expected "wrong\.example\.org"/ }, 'wrong repository name');
  await t.rejects(openRepository(opts(repo, [srv.url], path.join(base, 'c4'), { clock: { now: () => new Date(Date.now() + 40 * 86_400_000) } })),
    { code: 'CVMFS_WHITELIST_EXPIRED' }, 'expired whitelist');
  await resign({ storage: repo.storage, keysDir: repo.keys, days: 60 });
  const ok = await openRepository(opts(repo, [srv.url], path.join(base, 'c5'), { clock: { now: () => new Date(Date.now() + 40 * 86_400_000) } }));
  t.equal(ok.revision, 2, 'accepted after resign');
  await ok.close();
});

t.test('cache quota smaller than the working set: reads succeed, usage stays under quota, evictions counted', async (t) => {
  const base = t.testdir();
  const repo = await makeRepo(base, 'quota.example.org');
  const contents = Array.from({ length: 40 }, () => randomBytes(256 * 1024));
  await repo.ingest('/q', await tarOf(contents.map((c, i) => ({ type: 'file' as const, name: `f${i}`, content: c }))));
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => srv.close());
  const quota = 2 * 1024 * 1024;
  const r = await openRepository(opts(repo, [srv.url], path.join(base, 'cache'), { quotaBytes: quota }));
  t.teardown(() => r.close());
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < contents.length; i++) t.ok((await r.readFile(`/q/f${i}`)).equals(contents[i]!), `round ${round} f${i}`);
  }
  const c = r.counters();
  t.ok(c.cacheUsedBytes <= quota, `cache uses ${c.cacheUsedBytes} ≤ ${quota}`);
  t.ok(c.evictions > 0, `${c.evictions} evictions`);
  const onDisk = fs.readdirSync(path.join(base, 'cache')).filter((d) => /^[0-9a-f]{2}$/.test(d))
    .reduce((n, d) => n + fs.readdirSync(path.join(base, 'cache', d)).reduce((m, f) => m + fs.statSync(path.join(base, 'cache', d, f)).size, 0), 0);
  t.ok(onDisk <= quota, `bytes on disk ${onDisk} ≤ quota`);
});

t.test('a new revision becomes visible after the TTL', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => srv.close());
  const r = await openRepository(opts(repo, [srv.url], path.join(base, 'cache'), { maxTtlSeconds: 1 }));
  t.teardown(() => r.close());
  await t.rejects(r.stat('/layers/two'), { code: 'CVMFS_PATH_NOT_FOUND' });
  await repo.ingest('/layers/two', await tarOf([{ type: 'file', name: 'new', content: 'fresh' }]));
  let seen = false;
  for (let i = 0; i < 40 && !seen; i++) {
    await new Promise((res) => setTimeout(res, 100));
    seen = await r.stat('/layers/two/new').then(() => true, () => false);
  }
  t.ok(seen, 'new layer visible');
  t.equal(r.revision, 3);
  t.equal((await r.readFile('/layers/two/new')).toString(), 'fresh');
  t.equal((await r.readFile('/layers/one/a.txt')).toString(), 'alpha', 'old content still there');
});

t.test('HTTP proxies: requests go through the configured proxy; a dead proxy fails over to the next', async (t) => {
  const base = t.testdir();
  const repo = await sampleRepo(base);
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => srv.close());
  const http = await import('node:http');
  const seen: string[] = [];
  const proxy = http.createServer((req, res) => {
    seen.push(req.url ?? '');
    http.get(req.url!, (up) => { res.writeHead(up.statusCode ?? 502, up.headers); up.pipe(res); }).on('error', () => res.writeHead(502).end());
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => { proxy.close(() => r()); proxy.closeAllConnections(); }));
  const port = (proxy.address() as { port: number }).port;
  const dead = new URL(await deadUrl(repo.fqrn)).host;
  const r = await openRepository(opts(repo, [srv.url], path.join(base, 'cache'), { proxy: `http://${dead};http://127.0.0.1:${port}` }));
  t.teardown(() => r.close());
  t.equal((await r.readFile('/layers/one/a.txt')).toString(), 'alpha');
  t.ok(seen.some((u) => u.endsWith('/.cvmfspublished')), 'manifest fetched through the proxy');
  t.ok(seen.every((u) => u.startsWith(srv.url)), 'proxy receives absolute URLs');
});
