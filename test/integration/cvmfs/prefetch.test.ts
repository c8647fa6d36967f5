import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { openRepository, serveRepository, type RepositoryOptions } from '../../../cvmfs/index.js';
import { mountRepository } from '../../../cvmfs/fuse/index.js';
import { faultyServer } from '../../lib/faulty-server.js';
import { skipWithoutFuse } from '../../lib/fuse-gate.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import { tarOf } from '../../lib/tar-of.js';

const run = promisify(execFile);

/** 3 directories of 40 small files, a few medium ones, one chunked file (above 16 MiB: at least two chunks). */
const files = new Map<string, Buffer>();
for (let d = 0; d < 3; d++) for (let i = 0; i < 40; i++) files.set(`d${d}/f${i}`, randomBytes(100 + ((d * 40 + i) * 997) % 6000));
for (let i = 0; i < 4; i++) files.set(`mid/m${i}`, randomBytes(300_000 + i));
files.set('big/chunked.bin', randomBytes(20 * 1024 * 1024 + 5));

async function repoWithFiles(base: string): Promise<Fixture> {
  const repo = await makeRepo(base, 'prefetch.example.org');
  await repo.ingest('/layer', await tarOf([...files].map(([name, content]) => ({ type: 'file' as const, name, content }))));
  return repo;
}

function opts(repo: Fixture, servers: string[], cacheDir: string, extra: Partial<RepositoryOptions> = {}): RepositoryOptions {
  return { fqrn: repo.fqrn, servers, cacheDir, publicKeys: [{ name: 'repo.pub', pem: fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8') }],
    timeoutMs: 2000, maxRetries: 0, backoffInitMs: 10, ...extra };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

t.test('a prefetch list: fetched once, in bounds, counted as hits when read; bad entries harmless', async (t) => {
  const base = t.testdir();
  const repo = await repoWithFiles(base);
  const srv = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => srv.close());
  const r = await openRepository(opts(repo, [srv.url], path.join(base, 'cache'), { siblingPrefetch: false }));
  t.teardown(() => r.close());
  const list = ['/layer/d0/f1', '/layer/d0/f2', '/layer/mid/m0', '/layer/big/chunked.bin',
    '/layer/nope', '/layer/../layer/d0/f3', '/layer/d0', '/layer/d0/f1\0x', '/layer/d0/f1'];
  const chunks = Number((await r.getxattr('/layer/big/chunked.bin', 'user.chunks')).toString());
  t.ok(chunks >= 2, `the big file is chunked (${chunks} chunks)`);
  const before = srv.log.length;
  const rep = await r.prefetch(list, { concurrency: 4 });
  t.equal(rep.considered, list.length);
  t.equal(rep.missing, 3, 'a missing path, a path with .., a path with NUL');
  t.equal(rep.notFiles, 1, 'a directory');
  t.equal(rep.objects, 3 + chunks, 'two small objects, one medium, the chunks; the repeated path once');
  t.equal(rep.alreadyCached, 1, 'the second mention of a path finds its object present');
  t.equal(rep.failed, 0);
  const fetched = srv.log.length - before;
  t.equal(fetched, 3 + chunks, 'one request per object');
  const c0 = r.counters();
  t.equal(c0.prefetchObjects, 3 + chunks);
  t.equal(c0.prefetchWasteBytes, c0.prefetchBytes, 'nothing read yet: all waste so far');
  for (const p of ['d0/f1', 'd0/f2', 'mid/m0', 'big/chunked.bin']) t.ok((await r.readFile(`/layer/${p}`)).equals(files.get(p)!), `${p} bytes`);
  t.equal(srv.log.length - before, 3 + chunks, 'the reads fetched nothing more');
  const c1 = r.counters();
  t.equal(c1.prefetchHits, 3 + chunks, 'every prefetched object was then read');
  t.equal(c1.prefetchWasteBytes, 0);

  const budget = await r.prefetch(['/layer/mid/m1', '/layer/mid/m2', '/layer/d1/f0'], { maxBytes: 350_000 });
  t.equal(budget.objects, 2, 'm1 fits; m2 would pass the byte budget; the small file still fits');
  t.equal(budget.overBudget, 1);
  const capped = await r.prefetch(['/layer/d2/f0', '/layer/d2/f1', '/layer/d2/f2'], { maxFiles: 2 });
  t.equal(capped.considered, 2, 'maxFiles bounds the list');
  const huge = (function* () { for (let i = 0; ; i++) yield `/layer/missing/${i}`; })();
  const endless = await r.prefetch(huge, { maxFiles: 1000 });
  t.equal(endless.considered, 1000, 'an endless list stops at maxFiles');
  t.equal(endless.missing, 1000);
});

t.test('reads during a prefetch wait for its downloads: every byte right, no object fetched twice', async (t) => {
  const base = t.testdir();
  const repo = await repoWithFiles(base);
  const srv = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => srv.close());
  const r = await openRepository(opts(repo, [srv.url], path.join(base, 'cache'), { siblingPrefetch: false }));
  t.teardown(() => r.close());
  const names = [...files.keys()];
  const before = srv.log.length;
  const pf = r.prefetch(names.map((n) => `/layer/${n}`), { concurrency: 8 });
  const reads = await Promise.all([...names, ...names.slice(0, 30), ...names.reverse()].map(async (n) => ({ n, b: await r.readFile(`/layer/${n}`) })));
  const rep = await pf;
  for (const { n, b } of reads) if (!b.equals(files.get(n)!)) t.fail(`${n}: wrong bytes`);
  t.pass(`${reads.length} concurrent reads verified`);
  const objects = srv.log.slice(before).filter((p) => p.startsWith('data/'));
  t.equal(new Set(objects).size, objects.length, 'no object was requested twice');
  t.equal(rep.failed, 0);
});

t.test('a server that dies mid-prefetch: reads fail over to the next one', async (t) => {
  const base = t.testdir();
  const repo = await repoWithFiles(base);
  const bad = await faultyServer(repo.dir, repo.fqrn);
  const good = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => Promise.all([bad.close(), good.close()]));
  const r = await openRepository(opts(repo, [bad.url, good.url], path.join(base, 'cache'), { siblingPrefetch: false }));
  t.teardown(() => r.close());
  let served = 0;
  bad.modeOf = (rel) => (rel.startsWith('data/') && ++served > 5 ? 'truncate' : undefined);
  const names = [...files.keys()].filter((n) => n.startsWith('d1/'));
  const pf = r.prefetch(names.map((n) => `/layer/${n}`), { concurrency: 4 });
  for (const n of names) t.ok((await r.readFile(`/layer/${n}`)).equals(files.get(n)!), `${n}`);
  const rep = await pf;
  t.equal(rep.failed, 0, 'the prefetch failed over too');
  t.ok(r.counters().failovers >= 1, 'failed over');
});

t.test('sibling prefetch: a cold small open fetches the small files that follow it; the window of a directory grows with its opens', async (t) => {
  const base = t.testdir();
  const repo = await repoWithFiles(base);
  const srv = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => srv.close());
  const r = await openRepository(opts(repo, [srv.url], path.join(base, 'cache'), { siblingPrefetch: { maxFiles: 10, maxBytes: 1 << 20, maxFileBytes: 64 * 1024 } }));
  t.teardown(() => r.close());
  const settle = async (n: number) => { for (let i = 0; i < 100 && r.counters().prefetchObjects < n; i++) await new Promise((res) => setTimeout(res, 20)); };
  const objects = () => srv.log.filter((p) => p.startsWith('data/') && !p.endsWith('C')).length; // file objects, not catalogs
  const o0 = objects();
  t.ok((await r.readFile('/layer/d0/f0')).equals(files.get('d0/f0')!));
  await settle(10);
  t.equal(r.counters().prefetchObjects, 10, 'one window of maxFiles siblings');
  t.equal(objects() - o0, 11, 'the file and its ten followers, one request each');
  // Name order after f0: f1, f10, f11, … f18.
  for (const n of ['f1', 'f10', 'f18']) t.ok((await r.readFile(`/layer/d0/${n}`)).equals(files.get(`d0/${n}`)!), `${n} read`);
  t.equal(objects() - o0, 11, 'the followers were already there');
  t.equal(r.counters().prefetchHits, 3, 'each a prefetch hit');
  // A scan of the directory: every file read, each byte right, the window kept ahead.
  const names = [...files.keys()].filter((n) => n.startsWith('d0/'));
  for (const n of names) if (!(await r.readFile(`/layer/${n}`)).equals(files.get(n)!)) t.fail(`${n}: wrong bytes`);
  t.equal(objects() - o0, names.length, 'the scan fetched each file once');
  t.ok(r.counters().prefetchObjects <= 10 + 2 * (names.length + 3), 'prefetched at most maxFiles + 2 × opened in the directory');
  t.equal(r.counters().prefetchWasteBytes, 0, 'every prefetched sibling was read');

  const none = await openRepository(opts(repo, [srv.url], path.join(base, 'cache2')));
  t.teardown(() => none.close());
  await none.readFile('/layer/d1/f0');
  await new Promise((res) => setTimeout(res, 100));
  t.equal(none.counters().prefetchObjects, 0, 'off by default');
});

t.test('a bounded entry cache answers like the catalogs, entries and misses, across evictions', async (t) => {
  const base = t.testdir();
  const repo = await repoWithFiles(base);
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => srv.close());
  const small = await openRepository(opts(repo, [srv.url], path.join(base, 'c1'), { direntCacheEntries: 7 }));
  const plain = await openRepository(opts(repo, [srv.url], path.join(base, 'c2'), { direntCacheEntries: 0 }));
  t.teardown(() => Promise.all([small.close(), plain.close()]));
  const paths = [...[...files.keys()].map((n) => `/layer/${n}`), '/layer/d0', '/layer', '/', '/layer/none', '/none/deeper'];
  for (let round = 0; round < 3; round++) {
    for (const p of paths) {
      const [a, b] = await Promise.all([small.stat(p).catch((e: { code: string }) => e.code), plain.stat(p).catch((e: { code: string }) => e.code)]);
      if (JSON.stringify(a, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v)) !== JSON.stringify(b, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))) t.fail(`${p}: ${String(a)} vs ${String(b)}`);
    }
    await small.readdir('/layer/d1');
  }
  t.pass(`${paths.length * 3} lookups agree`);
});

t.test('FUSE: many readers of the same and different files while a prefetch runs, every byte verified', async (t) => {
  if (skipWithoutFuse(t)) return;
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'prefetch-fuse-'));
  const repo = await repoWithFiles(base);
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  const r = await openRepository(opts(repo, [srv.url], path.join(base, 'cache')));
  const mnt = path.join(base, 'mnt');
  fs.mkdirSync(mnt);
  const m = await mountRepository(r, { mountpoint: mnt });
  t.teardown(async () => { await m.unmount().catch(() => {}); await r.close(); await srv.close(); fs.rmSync(base, { recursive: true, force: true }); });
  const names = [...files.keys()];
  const pf = r.prefetch(names.map((n) => `/layer/${n}`), { concurrency: 8 });
  // Eight readers in child processes (this process serves the mount), each over all files in its own order.
  const want = names.map((n) => `${sha(files.get(n)!)}  ${path.join(mnt, 'layer', n)}`).sort().join('\n');
  const outs = await Promise.all(Array.from({ length: 8 }, (_, k) => {
    const order = k % 2 ? [...names].reverse() : names.slice(k * 7).concat(names.slice(0, k * 7));
    return run('sha256sum', order.map((n) => path.join(mnt, 'layer', n)), { maxBuffer: 1 << 24 }).then((o) => o.stdout.trim().split('\n').sort().join('\n'));
  }));
  for (const [k, o] of outs.entries()) t.equal(o, want, `reader ${k}: every file's sha256 right`);
  const rep = await pf;
  t.equal(rep.failed, 0);
});
