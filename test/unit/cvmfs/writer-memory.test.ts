import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import t from 'tap';
import { S_IFDIR, S_IFREG } from '../../../cvmfs/format/catalog-schema.js';
import { buildLayerCatalog } from '../../../cvmfs/writer/catalog-build.js';
import { ObjectSink, REMEMBERED_OBJECTS_MAX } from '../../../cvmfs/writer/object-sink.js';
import type { RepositoryStorage } from '../../../cvmfs/writer/storage.js';
import { contentOfDigest, LayerTree, type FileContent, type NodeMeta } from '../../../cvmfs/writer/tree.js';

const meta = (mtime: number, mode = S_IFREG | 0o644): NodeMeta => ({ mode, uid: 0, gid: 0, mtime, mtimens: null, xattr: null });
const dirMeta = meta(1, S_IFDIR | 0o755);
const opts = { algo: 'sha1' as const, revision: 1, previousRevision: null, now: new Date(1_700_000_000_000), catalogMarker: false };

function scratch(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'writer-tree-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function rowNames(file: string): string[] {
  const db = new Database(file, { readonly: true });
  try { return (db.prepare('SELECT name FROM catalog ORDER BY rowid').all() as { name: string }[]).map((r) => r.name); } finally { db.close(); }
}

t.test('equal metadata is shared; a pending body settles into its node', async (t) => {
  const tree = new LayerTree(dirMeta);
  tree.addFile(['a'], 'a', meta(5), 0, 'x');
  tree.addFile(['b'], 'b', meta(5), 0, 'x');
  tree.addFile(['c'], 'c', meta(6), 0, 'x');
  const a = tree.find(['a']), b = tree.find(['b']), c = tree.find(['c']);
  t.equal(a!.meta, b!.meta, 'same record for equal metadata');
  t.not(a!.meta, c!.meta, 'another mtime, another record');
  let resolve!: (c: FileContent) => void;
  tree.addFile(['p'], 'p', meta(5), 3, new Promise<FileContent>((r) => { resolve = r; }));
  tree.addHardlink(['q'], 'q', ['p'], 'p');
  t.type((tree.find(['p']) as { content: unknown }).content, Promise, 'pending while being stored');
  resolve('digest');
  await new Promise((r) => setImmediate(r));
  for (const n of ['p', 'q']) t.equal((tree.find([n]) as { content: unknown }).content, 'digest', `${n}: the content itself once stored`);
});

t.test('rows follow the UTF-8 byte order of names, also where UTF-16 order differs', async (t) => {
  const dir = scratch(t);
  const names = ['z', 'Z', 'a', 'a-', 'a.b', 'é', '\u{1F600}', '\uE000', '\uFFFD', '\uD7FF', 'ab\u{10000}', 'ab\uFFFF'];
  const tree = new LayerTree(dirMeta);
  for (const n of names) tree.addFile([n], n, meta(1), 0, 'x');
  const file = path.join(dir, 'c.sqlite');
  await buildLayerCatalog(file, tree.root, '/l', opts);
  const sorted = [...names].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  t.same(rowNames(file), ['l', ...sorted], 'root first, then byte order');
  t.not(sorted.join(), [...names].sort().join(), 'the names are ones where UTF-16 order differs');
});

t.test('property: rows are written depth first in byte order', async (t) => {
  const dir = scratch(t);
  let i = 0;
  await fc.assert(fc.asyncProperty(fc.uniqueArray(fc.string({ unit: 'grapheme', minLength: 1, maxLength: 4 })
    .filter((s) => !s.includes('/') && !s.includes('\0') && s !== '.' && s !== '..'), { maxLength: 30 }), async (names) => {
    const tree = new LayerTree(dirMeta);
    for (const n of names) tree.addFile(['d', n], `d/${n}`, meta(1), 0, 'x');
    const file = path.join(dir, `p${i++}.sqlite`);
    await buildLayerCatalog(file, tree.root, '/l', opts);
    const expected = names.length ? ['l', 'd', ...[...names].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))] : ['l'];
    return JSON.stringify(rowNames(file)) === JSON.stringify(expected);
  }), { numRuns: 50 });
});

t.test('a pending body that fails fails the catalog', async (t) => {
  const dir = scratch(t);
  const tree = new LayerTree(dirMeta);
  const failed = Promise.reject(new Error('disk full'));
  tree.addFile(['f'], 'f', meta(1), 3, failed);
  tree.addFile(['g'], 'g', meta(1), 0, contentOfDigest(Buffer.alloc(20)));
  await t.rejects(buildLayerCatalog(path.join(dir, 'c.sqlite'), tree.root, '/l', opts), /disk full/);
});

t.test('the object sink stores each object once and remembers failures', async (t) => {
  const calls: string[] = [];
  let fail = false;
  const storage = {
    putObject: async (p: string) => { calls.push(p); await new Promise((r) => setImmediate(r)); if (fail) throw new Error(`cannot store ${p}`); return 'written' as const; },
  } as unknown as RepositoryStorage;
  const sink = new ObjectSink(storage);
  const name = `data/ab/${'c'.repeat(38)}`;
  await Promise.all([sink.put(name, Buffer.alloc(3)), sink.put(name, Buffer.alloc(3))]);
  await sink.put(name, Buffer.alloc(3));
  await sink.put(`${name}C`, Buffer.alloc(1));
  await sink.put('data/odd/name', Buffer.alloc(1));
  t.same(calls, [name, `${name}C`, 'data/odd/name'], 'one storage call per distinct object, suffixes and other names apart');
  t.same(sink.stats, { written: 3, present: 0, bytesWritten: 5 });
  fail = true;
  const bad = `data/12/${'3'.repeat(38)}`;
  await t.rejects(sink.put(bad, Buffer.alloc(1)), /cannot store/);
  await t.rejects(sink.put(bad, Buffer.alloc(1)), /cannot store/, 'a failed object stays failed');
  await t.rejects(sink.drain(), /cannot store/, 'drain reports it');
  t.equal(calls.length, 4);
});

t.test('the object sink forgets stored objects past its bound, and the storage still stores each once', async (t) => {
  const seen = new Set<string>();
  let calls = 0;
  const storage = {
    putObject: async (p: string) => { calls++; if (seen.has(p)) return 'present' as const; seen.add(p); return 'written' as const; },
  } as unknown as RepositoryStorage;
  const sink = new ObjectSink(storage);
  const name = (i: number) => `data/${(i & 0xff).toString(16).padStart(2, '0')}/${i.toString(16).padStart(38, '0')}`;
  for (let i = 0; i <= REMEMBERED_OBJECTS_MAX; i++) await sink.put(name(i), Buffer.alloc(1));
  await sink.put(name(REMEMBERED_OBJECTS_MAX), Buffer.alloc(1));
  t.equal(calls, REMEMBERED_OBJECTS_MAX + 1, 'a remembered object is not put again');
  await sink.put(name(0), Buffer.alloc(1));
  t.equal(calls, REMEMBERED_OBJECTS_MAX + 2, 'a forgotten one goes to the storage');
  t.same(sink.stats, { written: REMEMBERED_OBJECTS_MAX + 1, present: 1, bytesWritten: REMEMBERED_OBJECTS_MAX + 1 }, 'and counts as present');
});
