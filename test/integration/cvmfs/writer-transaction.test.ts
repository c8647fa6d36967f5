/**
 * Multi-path writer transactions (cvmfs/writer/transaction.ts): many ingests, files, nested
 * catalogs and removals published as one revision, checked with the independent reader of
 * test/lib (signatures, hashes, rowid-1 roots, rollback journals, every counter recounted, link
 * counts) and with our client over HTTP.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import t from 'tap';
import {
  CatalogDatabase, COUNTER_FIELDS, isCvmfsError, loadState, openRepository, readObject, serveRepository, transaction,
  type Counters, type RepositoryStorage, type Transaction, type TransactionOptions,
} from '../../../cvmfs/index.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import type { ReadRepository } from '../../lib/repo-reader.js';
import { tarOf } from '../../lib/tar-of.js';

const D1 = 'ab' + '1'.repeat(62);
const D2 = 'ab' + '2'.repeat(62);
const D3 = 'cd' + '3'.repeat(62);
const layerDir = (d: string) => `/.layers/${d.slice(0, 2)}/${d}`;
const layerFs = (d: string) => `${layerDir(d)}/layerfs`;
const originFile = (d: string) => `${layerDir(d)}/.metadata/origin.json`;
const lockFile = (repo: Fixture) => path.join(repo.dir, 'data/txn/writer.lock');

const stream = (b: Buffer) => Readable.from([b]);
const txOpts = (repo: Fixture, what = 'test transaction'): TransactionOptions => ({ storage: repo.storage, keysDir: repo.keys, what, threads: 1 });

interface CatalogInfo {
  readonly hash: string;
  readonly revision: number;
  readonly previous: string | undefined;
  readonly nested: readonly string[];
  readonly self: Counters;
  readonly subtree: Counters;
}

/** Every catalog of the current revision, by mount path, read straight from storage. */
async function catalogsOf(storage: RepositoryStorage): Promise<Map<string, CatalogInfo>> {
  const state = await loadState(storage);
  const out = new Map<string, CatalogInfo>();
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'tx-test-'));
  try {
    const walk = async (hash: string, mp: string): Promise<void> => {
      const file = path.join(scratch, `${hash}.sqlite`);
      fs.writeFileSync(file, await readObject(storage, hash, 'C'));
      const db = CatalogDatabase.open(file, { readonly: true });
      const refs = db.nestedCatalogs();
      out.set(mp, {
        hash, revision: Number(db.property('revision')), previous: db.property('previous_revision'),
        nested: refs.map((r) => r.path).sort(), self: db.counters('self'), subtree: db.counters('subtree'),
      });
      db.close();
      for (const r of refs) await walk(r.hash, r.path);
    };
    await walk(state.manifest.rootHash, '');
  } finally { fs.rmSync(scratch, { recursive: true, force: true }); }
  return out;
}

/** The whole repository recounted from the entries the reader saw (each catalog root once). */
function recount(read: ReadRepository): Record<string, bigint> {
  const c: Record<string, bigint> = { regular: 0n, dir: 0n, symlink: 0n, special: 0n, file_size: 0n, chunked: 0n };
  for (const e of read.entries.values()) {
    const type = e.mode & 0o170000;
    if (type === 0o100000) { c.regular!++; c.file_size! += e.size; if (e.chunks > 0) c.chunked!++; }
    else if (type === 0o040000) c.dir!++;
    else if (type === 0o120000) c.symlink!++;
    else c.special!++;
  }
  // A transition directory is a row in the parent and the root row of the child (§11.5).
  c.dir! += BigInt(read.catalogs.size - 1);
  return c;
}

function totals(info: CatalogInfo): Counters {
  return Object.fromEntries(COUNTER_FIELDS.map((f) => [f, info.self[f] + info.subtree[f]])) as Counters;
}

const layerTar = (tag: string, extra = 0) => tarOf([
  { type: 'directory', name: 'etc/' },
  { type: 'file', name: 'etc/os-release', content: `layer ${tag}\n` },
  { type: 'file', name: `only-${tag}`, content: randomBytes(1000 + extra) },
  { type: 'symlink', name: 'bin', target: 'usr/bin' },
  { type: 'directory', name: 'usr/bin/' },
  { type: 'file', name: 'usr/bin/tool', content: `tool ${tag}`, mode: 0o755 },
]);

/** A repository with one unrelated layer at /other (revision 2) and three layers + metadata in one transaction (revision 3). */
async function convertedRepo(base: string) {
  const repo = await makeRepo(base, 'tx.example.org');
  await repo.ingest('/other', await tarOf([{ type: 'file', name: 'keep', content: 'untouched' }]));
  const tars = { [D1]: await layerTar('one'), [D2]: await layerTar('two', 10), [D3]: await layerTar('three', 20) };
  const r = await transaction(txOpts(repo, 'docker2cvmfs convert'), async (tx) => {
    await tx.ensureCatalog('/.layers');
    await tx.ensureCatalog('/.layers/ab');
    await tx.ensureCatalog('/.layers/cd');
    const results = [];
    for (const d of [D1, D2, D3]) {
      results.push(await tx.ingest(layerFs(d), stream(tars[d]!)));
      await tx.writeFile(originFile(d), Buffer.from(JSON.stringify({ digest: d })), { mode: 0o640, uid: 5, gid: 6, mtime: new Date(1_650_000_000_500) });
    }
    return results;
  });
  return { repo, r, tars };
}

t.test('three ingests, files and nested catalogs in one transaction: one revision, the DUCC layout, exact counters', async (t) => {
  const { repo, r } = await convertedRepo(t.testdir());
  t.equal(r.published, true);
  t.equal(r.revision, 3, 'exactly one new revision on top of revision 2');
  t.equal(r.value.length, 3);
  const read = await repo.read();
  t.same(read.problems, [], 'signatures, hashes, rowid-1 roots, journals, every counter recounted, directory link counts');
  t.equal(read.revision, 3);

  const cats = await catalogsOf(repo.storage);
  const root = cats.get('')!;
  t.equal(root.revision, 3, 'root catalog revision = manifest S');
  t.equal(root.hash, r.rootHash);
  t.same([...cats.keys()].sort(), ['', '/.layers', '/.layers/ab', '/.layers/cd', '/other', layerFs(D1), layerFs(D2), layerFs(D3)].sort(),
    'every layer its own nested catalog, /.layers and the shards nested catalogs');
  t.same(root.nested, ['/.layers', '/other']);
  t.same(cats.get('/.layers')!.nested, ['/.layers/ab', '/.layers/cd']);
  t.same(cats.get('/.layers/ab')!.nested, [layerFs(D1), layerFs(D2)], 'layers grafted below their shard catalog');
  t.same(cats.get('/.layers/cd')!.nested, [layerFs(D3)]);
  for (const p of ['/.layers', '/.layers/ab', '/.layers/cd', layerFs(D1)]) {
    t.equal(cats.get(p)!.revision, 1, `${p}: a new catalog starts at revision 1`);
    t.equal(cats.get(p)!.previous, undefined, `${p}: no previous revision`);
  }
  for (const p of ['/.layers', '/.layers/ab']) t.ok(read.entries.has(`${p}/.cvmfscatalog`), `${p} has its .cvmfscatalog marker`);
  for (const d of [D1, D2, D3]) t.ok(read.entries.has(`${layerFs(d)}/.cvmfscatalog`), 'layer marker');

  // Every layer readable, in its own catalog; the metadata file in the shard's catalog.
  for (const [d, tag] of [[D1, 'one'], [D2, 'two'], [D3, 'three']] as const) {
    const e = read.entries.get(`${layerFs(d)}/etc/os-release`);
    t.equal(e?.content?.toString(), `layer ${tag}\n`, `${tag}: content`);
    t.equal(e?.catalog, layerFs(d), `${tag}: in its own catalog`);
    t.equal(read.entries.get(`${layerFs(d)}/bin`)?.target, 'usr/bin');
    const o = read.entries.get(originFile(d));
    t.equal(o?.content?.toString(), JSON.stringify({ digest: d }), 'origin.json content');
    t.equal(o?.catalog, `/.layers/${d.slice(0, 2)}`, 'origin.json is a file of the /.layers/<xx> catalog');
    t.equal(o?.mode, 0o100640);
    t.equal(o?.uid, 5);
    t.equal(o?.gid, 6);
    t.equal(o?.mtime, 1_650_000_000);
    const meta = read.entries.get(`${layerDir(d)}/.metadata`)!;
    t.equal(meta.mode, 0o040755, 'missing parents are 0755 directories');
    t.equal(meta.uid, 0);
  }
  t.equal(read.entries.get('/other/keep')?.content?.toString(), 'untouched');

  // Root counters against a full recount of what the reader saw.
  const all = totals(root);
  const again = recount(read);
  for (const f of ['regular', 'dir', 'symlink', 'special', 'file_size', 'chunked'] as const) {
    t.equal(all[f], again[f], `root self + subtree ${f} = ${again[f]}, the recount`);
  }
  t.equal(all.nested, BigInt(cats.size - 1), 'nested catalogs counted across the repository');
  t.equal(r.value[0]!.counters.regular, 4n, 'ingest counters: os-release, only-one, tool, .cvmfscatalog');

  // And through our client, over HTTP.
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => srv.close());
  const client = await openRepository({ fqrn: repo.fqrn, servers: [srv.url], cacheDir: path.join(t.testdirName, 'cache'),
    publicKeys: [{ name: 'pub', pem: fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8') }], timeoutMs: 2000, maxRetries: 0 });
  t.teardown(() => client.close());
  t.equal(client.revision, 3);
  t.equal((await client.readFile(`${layerFs(D2)}/usr/bin/tool`)).toString(), 'tool two');
  t.equal((await client.readFile(originFile(D3))).toString(), JSON.stringify({ digest: D3 }));
  t.same((await client.readdir('/.layers/ab')).map((x) => x.name).sort(), ['.cvmfscatalog', D1, D2]);
  const ct = client.totals();
  t.equal(ct.regular, again.regular, 'client totals: regular files');
  t.equal(ct.dir, again.dir, 'client totals: directories');
});

t.test('lookup, list and readFile see the transaction\'s own changes before they are published', async (t) => {
  const repo = await makeRepo(t.testdir());
  await repo.ingest('/base', await tarOf([{ type: 'file', name: 'f', content: 'base f' }, { type: 'directory', name: 'd/' }]));
  const before = repo.manifest();
  const big = randomBytes(20 * 1024 * 1024 + 3);
  const r = await transaction(txOpts(repo), async (tx) => {
    t.equal(tx.fqrn, repo.fqrn);
    t.equal(tx.baseRevision, 2);
    t.equal(tx.changed, false, 'nothing changed yet');
    t.equal((await tx.readFile('/base/f'))?.toString(), 'base f', 'reads the base revision');
    t.equal(await tx.readFile('/base/nope'), undefined, 'absent file');
    await t.rejects(tx.readFile('/base/d'), { code: 'CVMFS_NOT_A_FILE' }, 'a directory is not a file');
    t.same(await tx.list('/base'), ['.cvmfscatalog', 'd', 'f']);
    t.equal(await tx.list('/base/f'), undefined, 'a file is not a directory');

    await tx.writeFile('/base/d/new.txt', Buffer.from('fresh'));
    t.equal(tx.changed, true);
    t.equal((await tx.readFile('/base/d/new.txt'))?.toString(), 'fresh', 'own uncommitted file');
    const e = await tx.lookup('/base/d/new.txt');
    t.equal(e?.mode, 0o100644, 'default mode 0644');
    t.equal(e?.uid, 0);
    t.same(await tx.list('//base/d/'), ['new.txt'], 'paths are normalised');

    await tx.writeFile('/base/f', Buffer.from('replaced'));
    t.equal((await tx.readFile('/base/f'))?.toString(), 'replaced', 'a replaced file reads anew');

    await tx.writeFile('/big/blob', big);
    t.ok((await tx.readFile('/big/blob'))?.equals(big), 'a chunked file reads back whole');

    await tx.ingest('/base/d/layer', stream(await tarOf([{ type: 'file', name: 'in-layer', content: 'layered' }])));
    t.equal((await tx.readFile('/base/d/layer/in-layer'))?.toString(), 'layered', 'an ingested layer is visible at once');
    t.equal((await tx.lookup('/base/d/layer'))?.flags, 33, 'a nested catalog root');
    t.same(await tx.list('/base/d'), ['layer', 'new.txt']);
    await tx.writeFile('/base/d/layer/added-later', Buffer.from('later'));
    t.same(await tx.list('/base/d/layer'), ['.cvmfscatalog', 'added-later', 'in-layer'], 'a written file inside the ingested layer');
    t.ok(repo.manifest().equals(before), 'nothing published while the transaction runs');
    return 'done';
  });
  t.equal(r.value, 'done');
  t.equal(r.revision, 3);
  const read = await repo.read();
  t.same(read.problems, []);
  t.equal(read.entries.get('/base/f')?.content?.toString(), 'replaced');
  t.equal(read.entries.get('/base/d/new.txt')?.content?.toString(), 'fresh');
  t.equal(read.entries.get('/base/d/layer/added-later')?.catalog, '/base/d/layer', 'written into the ingested catalog');
  t.equal(read.entries.get('/big/blob')?.catalog, '', 'a file outside any nested catalog is in the root catalog');
  t.ok(read.entries.get('/big/blob')!.chunks >= 2, `chunked (${read.entries.get('/big/blob')!.chunks} chunks)`);
  t.ok(read.entries.get('/big/blob')?.content?.equals(big), 'chunked content published');
  const cats = await catalogsOf(repo.storage);
  t.equal(cats.get('/base')!.revision, 2, 'the changed base catalog went from revision 1 to 2');
  t.equal(cats.get('/base/d/layer')!.revision, 1, 'the new layer: revision 1, even though it was changed after its ingest');
});

t.test('remove: a layer directory with its nested catalog and a file; counters and nested lists right after', async (t) => {
  const { repo } = await convertedRepo(t.testdir());
  const before = await catalogsOf(repo.storage);
  const readBefore = await repo.read();
  const layerTotals = totals(before.get(layerFs(D1))!);
  const r = await transaction(txOpts(repo, 'docker2cvmfs gc'), async (tx) => {
    t.equal(await tx.remove(layerDir(D1)), true, 'removed the layer directory');
    t.equal(await tx.lookup(layerFs(D1)), undefined, 'the nested catalog is gone');
    t.equal(await tx.lookup(originFile(D1)), undefined, 'its metadata too');
    t.same(await tx.list('/.layers/ab'), ['.cvmfscatalog', D2], 'the shard lists the other layer only');
    t.equal(await tx.remove(originFile(D2)), true, 'removed a file');
    t.equal(await tx.readFile(originFile(D2)), undefined);
    t.same(await tx.list(`${layerDir(D2)}/.metadata`), [], 'its directory stays, empty');
    t.equal(await tx.remove('/nothing/here'), false, 'absent path');
    t.equal(await tx.remove(layerDir(D1)), false, 'already removed');
    await t.rejects(tx.remove('/'), { code: 'CVMFS_BAD_ARGUMENT' }, 'the root cannot be removed');
  });
  t.equal(r.published, true);
  t.equal(r.revision, 4);
  const read = await repo.read();
  t.same(read.problems, [], 'counters, link counts and nested references exact after the removal');
  const cats = await catalogsOf(repo.storage);
  t.same(cats.get('/.layers/ab')!.nested, [layerFs(D2)], 'nested-catalog list of the shard');
  t.notOk(cats.has(layerFs(D1)), 'the removed catalog is no longer referenced');
  t.notOk([...read.entries.keys()].some((p) => p.startsWith(layerDir(D1))), 'nothing of the layer is left');
  t.equal(read.entries.get('/.layers/ab')?.linkcount, readBefore.entries.get('/.layers/ab')!.linkcount - 1, 'the shard directory lost a subdirectory');
  // The whole repository lost exactly the layer catalog, its directory rows and the two metadata files.
  const was = totals(before.get('')!), is = totals(cats.get('')!);
  t.equal(is.nested, was.nested - 1n);
  t.equal(is.regular, was.regular - layerTotals.regular - 2n, 'regular: the layer\'s files and two origin.json');
  t.equal(is.dir, was.dir - layerTotals.dir - 3n, 'dir: the layer\'s, its mountpoint row, <digest> and .metadata');
  t.equal(is.file_size, was.file_size - layerTotals.file_size
    - BigInt(JSON.stringify({ digest: D1 }).length) - BigInt(JSON.stringify({ digest: D2 }).length));
  t.equal(cats.get('/.layers/ab')!.self.regular, before.get('/.layers/ab')!.self.regular - 2n, 'shard self counters');
  t.equal(cats.get('/.layers/ab')!.subtree.regular, layerTotals.regular, 'shard subtree now holds the other layer only (same size)');
});

t.test('a throwing function publishes nothing and releases the lock; a no-change transaction publishes nothing', async (t) => {
  const repo = await makeRepo(t.testdir());
  await repo.ingest('/a', await tarOf([{ type: 'file', name: 'x', content: 'x' }]));
  const before = repo.manifest();
  const boom = new Error('fn failed');
  await t.rejects(transaction(txOpts(repo), async (tx) => {
    await tx.ingest('/b', stream(await tarOf([{ type: 'file', name: 'y', content: 'y' }])));
    await tx.writeFile('/c', Buffer.from('c'));
    t.ok(fs.existsSync(lockFile(repo)), 'the lock is held during the transaction');
    t.match(fs.readFileSync(lockFile(repo), 'utf8'), / test transaction\n$/, 'named by `what`');
    throw boom;
  }), boom, 'the error propagates');
  t.ok(repo.manifest().equals(before), 'manifest unchanged');
  t.notOk(fs.existsSync(lockFile(repo)), 'lock released');
  let read = await repo.read();
  t.equal(read.revision, 2);
  t.notOk(read.entries.has('/b') || read.entries.has('/c'), 'none of its changes');

  // A failed ingest inside fn, caught by fn: refused before editing, the transaction goes on.
  let leaked: Transaction | undefined;
  const r = await transaction(txOpts(repo), async (tx) => {
    leaked = tx;
    await t.rejects(tx.ingest('/bad', stream(Buffer.from('not a tar at all, just some bytes'.repeat(40)))), { code: /^CVMFS_TAR_/ });
    t.equal(tx.changed, false, 'the failed ingest changed nothing');
    await t.rejects(tx.ensureCatalog('/a/x'), { code: 'CVMFS_PATH_CONFLICT' }, 'ensureCatalog on a file');
    await t.rejects(tx.writeFile('/a', Buffer.from('z')), { code: 'CVMFS_PATH_CONFLICT' }, 'writeFile on a directory');
    await t.rejects(tx.writeFile('/a/x/under-a-file', Buffer.from('z')), { code: 'CVMFS_PATH_CONFLICT' }, 'writeFile below a file');
    await t.rejects(tx.ingest('/a/x/l', stream(await tarOf([]))), { code: 'CVMFS_PATH_CONFLICT' }, 'ingest below a file');
    await t.rejects(tx.writeFile('relative', Buffer.from('z')), { code: 'CVMFS_BAD_ARGUMENT' }, 'paths go through normalizeRepoPath');
    await t.rejects(tx.writeFile('/m', Buffer.from('z'), { mode: 0o10000 }), { code: 'CVMFS_BAD_ARGUMENT' }, 'mode beyond permission bits');
    await tx.ensureCatalog('/a'); // already a nested catalog root: nothing
    await tx.ensureCatalog('/');
    t.equal(await tx.remove('/no/such'), false);
    t.equal(tx.changed, false, 'lookups, refusals and no-op calls change nothing');
    const a = tx.lookup('/a/x');
    await t.rejects(tx.lookup('/a'), { code: 'CVMFS_BAD_ARGUMENT', message: /sequential.*lookup is still running/ }, 'concurrent calls refused');
    t.equal((await a)?.size, 1n, 'the first call completes');
    return 42;
  });
  t.same({ value: r.value, published: r.published, revision: r.revision }, { value: 42, published: false, revision: 2 });
  t.equal(r.rootHash, (await loadState(repo.storage)).manifest.rootHash);
  t.ok(repo.manifest().equals(before), 'no new revision');
  t.notOk(fs.existsSync(lockFile(repo)), 'lock released');
  await t.rejects(leaked!.lookup('/a'), { code: 'CVMFS_CLOSED' }, 'a transaction is unusable once it ended');

  // A call left running when fn returns: nothing is published.
  await t.rejects(transaction(txOpts(repo), async (tx) => { void tx.writeFile('/late', Buffer.from('l')).catch(() => {}); }),
    { code: 'CVMFS_BAD_ARGUMENT', message: /still running/ });
  t.ok(repo.manifest().equals(before), 'nothing published for an unawaited call');

  const next = await transaction(txOpts(repo), async (tx) => { await tx.writeFile('/after', Buffer.from('works')); });
  t.equal(next.published, true);
  t.equal(next.revision, 3, 'the next transaction works');
  read = await repo.read();
  t.same(read.problems, []);
  t.equal(read.entries.get('/after')?.content?.toString(), 'works');
  t.notOk(read.entries.has('/late'));
});

t.test('a second transaction reuses every catalog it did not change (read ones too), by hash, and rewrites the chain once', async (t) => {
  const { repo } = await convertedRepo(t.testdir());
  const before = await catalogsOf(repo.storage);
  const r = await transaction(txOpts(repo), async (tx) => {
    // Reading catalogs stages them, but does not change them.
    t.equal((await tx.readFile(`${layerFs(D1)}/etc/os-release`))?.toString(), 'layer one\n');
    t.same(await tx.list('/other'), ['.cvmfscatalog', 'keep']);
    await tx.writeFile(`${layerDir(D2)}/.metadata/extra.json`, Buffer.from('{}'));
    await tx.writeFile(`${layerDir(D2)}/.metadata/more.json`, Buffer.from('[]'));
    await tx.ingest(layerFs(D3), stream(await layerTar('three-again')));
  });
  t.equal(r.revision, 4, 'one revision for three changes in two catalogs');
  const after = await catalogsOf(repo.storage);
  t.same((await repo.read()).problems, []);
  for (const p of ['/other', layerFs(D1), layerFs(D2)]) t.equal(after.get(p)!.hash, before.get(p)!.hash, `${p}: reused by hash`);
  for (const p of ['', '/.layers', '/.layers/ab', '/.layers/cd', layerFs(D3)]) {
    const a = after.get(p)!, b = before.get(p)!;
    t.not(a.hash, b.hash, `${p || '/'}: rewritten`);
    t.equal(a.revision, b.revision + 1, `${p || '/'}: revision + 1, once`);
    t.equal(a.previous, b.hash, `${p || '/'}: previous_revision is the catalog it replaces`);
  }
  t.equal(after.get('/.layers/ab')!.self.regular, before.get('/.layers/ab')!.self.regular + 2n);
  t.equal(after.get('')!.subtree.regular, before.get('')!.subtree.regular + 2n, 'root subtree moved by the two files (the re-ingested layer has as many)');
});

t.test('replacing a hardlinked file fixes the link count of the member left; ingest() is a one-operation transaction', async (t) => {
  const repo = await makeRepo(t.testdir());
  const ing = await repo.ingest('/l', await tarOf([
    { type: 'file', name: 'a', content: 'shared' }, { type: 'link', name: 'b', target: 'a' }, { type: 'link', name: 'sub/c', target: 'a' },
  ]));
  t.equal(ing.revision, 2);
  t.equal(ing.fqrn, repo.fqrn);
  t.equal((await catalogsOf(repo.storage)).get('/l')!.hash, ing.catalogHash, 'IngestResult.catalogHash is the published catalog');
  t.ok(ing.objects.written >= 3, 'IngestResult.objects counts content, catalogs and the certificate');
  await transaction(txOpts(repo), async (tx) => {
    t.equal((await tx.lookup('/l/a'))?.linkcount, 3);
    await tx.writeFile('/l/b', Buffer.from('own'));
    t.equal((await tx.lookup('/l/a'))?.linkcount, 2, 'one member left the group');
    t.equal((await tx.lookup('/l/b'))?.hardlinkGroup, 0);
    t.equal(await tx.remove('/l/sub'), true);
    const a = await tx.lookup('/l/a');
    t.equal(a?.linkcount, 1, 'the last member');
    t.equal(a?.hardlinkGroup, 0, 'is no longer in a group');
  });
  const read = await repo.read();
  t.same(read.problems, []);
  t.equal(read.entries.get('/l/a')?.content?.toString(), 'shared');
  t.equal(read.entries.get('/l/b')?.content?.toString(), 'own');
  t.equal(read.entries.get('/l')?.linkcount, 2, 'the catalog root lost its subdirectory');
  t.ok(isCvmfsError(await transaction(txOpts(repo), async (tx) => tx.readFile('/l')).catch((e: unknown) => e), 'CVMFS_NOT_A_FILE'),
    'errors of fn come out as they are');
});
