/**
 * Catalogs of every layout the stock client reads (docs/cvmfs-format.md §11.3a), mixed in one
 * repository as real repositories mix them: legacy 1.x, 2.4 and 2.5 revisions 0–7, each on the
 * root and on nested catalogs beside other layouts. Read through the API and through a real FUSE
 * mount (every access to the mount runs in a child process: this process serves it).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { inflateSync } from 'node:zlib';
import Database from 'better-sqlite3';
import t, { type Test } from 'tap';
import { CHUNK_MIN_BYTES, CHUNKING_THRESHOLD_BYTES, objectPath, openLetter, openRepository, parseManifest, serveRepository, type Repository } from '../../../cvmfs/index.js';
import { mountRepository } from '../../../cvmfs/fuse/index.js';
import { layoutLabel, linkCopy, rewriteLayouts, type LayoutSpec, type RewriteOptions } from '../../lib/catalog-layouts.js';
import { skipWithoutFuse } from '../../lib/fuse-gate.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import { tarOf, type TarSpec } from '../../lib/tar-of.js';

const run = promisify(execFile);
const sh = (cmd: string) => run('bash', ['-c', cmd], { maxBuffer: 1 << 26, timeout: 60_000 }).then((r) => r.stdout, (e: { code: number; stdout: string; stderr: string }) => {
  throw Object.assign(new Error(`${cmd}: exit ${e.code}: ${e.stderr}`), { stdout: e.stdout, stderr: e.stderr });
});

const FQRN = 'layouts.example.org';
const LEGACY: LayoutSpec = { schema: '1.2' };
const LAYOUTS: readonly LayoutSpec[] = [LEGACY, { schema: '2.4' }, ...[0, 1, 2, 3, 4, 5, 6, 7].map((revision) => ({ schema: '2.5', revision }))];

// Layer a: chunked file, hardlinks, xattrs, nanoseconds, odd modes and owners: never legacy.
// Layer b: neither chunked files nor hardlinks, so that a legacy 1.x catalog can hold it.
/**
 * Larger than the chunking threshold, with a forced cut: the chunker's rolling checksum depends on
 * the last 32 bytes only, and 0x00 then 31 × 0x01 make it 0x7fffffff, a cut point once the chunk
 * is at least CHUNK_MIN_BYTES long. So at least two chunks, whatever the random bytes.
 */
const big = Buffer.concat([randomBytes(CHUNK_MIN_BYTES + 1000 - 32), Buffer.from([0]), Buffer.alloc(31, 1), randomBytes(1 << 20)]);
const T0 = new Date(1_700_000_000_000);
const LAYER_A: TarSpec[] = [
  { type: 'directory', name: 'd', mode: 0o755, mtime: T0 },
  { type: 'file', name: 'd/big.bin', content: big },
  { type: 'file', name: 'd/f1', content: 'hello hardlink\n', mode: 0o640, uid: 1000, gid: 1001 },
  { type: 'link', name: 'd/hard', target: 'd/f1', mode: 0o640, uid: 1000, gid: 1001 },
  { type: 'file', name: 'd/x.txt', content: 'with xattrs', pax: { 'SCHILY.xattr.user.color': 'blue', 'SCHILY.xattr.user.bin': Buffer.from([0, 0xff, 1]) } },
  { type: 'file', name: 'ns.txt', content: 'nanoseconds', pax: { mtime: '1600000000.123456789' } },
  { type: 'file', name: 'odd', content: 'setuid', mode: 0o4750, uid: 1234, gid: 5678 },
  { type: 'directory', name: 'sticky', mode: 0o1777, uid: 7, gid: 8, mtime: T0 },
  { type: 'symlink', name: 'link', target: 'd/f1' },
  { type: 'character-device', name: 'null', major: 1, minor: 3, mode: 0o666 },
  { type: 'file', name: 'mid.bin', content: randomBytes(300_000), mode: 0o600, uid: 65534, gid: 65534 },
];
const LAYER_B: TarSpec[] = [
  { type: 'file', name: 'plain.txt', content: 'plain\n' },
  { type: 'file', name: 'x.txt', content: 'round', pax: { 'SCHILY.xattr.user.shape': 'round' } },
  { type: 'file', name: 'ns.txt', content: 'ns', pax: { mtime: '1500000000.987654321' } },
  { type: 'file', name: 'odd', content: 'setgid', mode: 0o2711, uid: 4321, gid: 8765 },
  { type: 'directory', name: 'dir', mode: 0o700, uid: 42, gid: 43, mtime: T0 },
  { type: 'file', name: 'dir/inner', content: randomBytes(1000), mode: 0o444 },
  { type: 'symlink', name: 'abs-link', target: '/nonexistent/abs' },
  { type: 'block-device', name: 'sda1', major: 8, minor: 1, mode: 0o660, gid: 6 },
  { type: 'fifo', name: 'fifo', mode: 0o620 },
  { type: 'file', name: 'empty', content: '' },
  { type: 'file', name: 'mid.bin', content: randomBytes(400_000) },
];

/** What a tar entry must look like once read back from a catalog of layout `l`. */
interface Expected {
  mode: number; uid: number; gid: number; size: number; nlink: number; mtimeNs: bigint; sha256?: string; target?: string;
  rdev?: [number, number]; xattrs: Record<string, string>; hardlinkOf?: string;
}

const TYPE_BITS: Record<TarSpec['type'], number> = {
  file: 0o100000, link: 0o100000, directory: 0o040000, symlink: 0o120000, 'character-device': 0o020000, 'block-device': 0o060000, fifo: 0o010000,
};

function expectations(specs: readonly TarSpec[], l: LayoutSpec): Map<string, Expected> {
  const legacy = l.schema === null || Number(l.schema) < 2;
  const rev = legacy ? -1 : l.revision ?? 0;
  const out = new Map<string, Expected>();
  const byName = new Map(specs.map((s) => [s.name, s]));
  const links = new Map<string, number>();
  for (const s of specs) if (s.type === 'link') links.set(s.target, (links.get(s.target) ?? 1) + 1);
  for (const s of specs) {
    const src = s.type === 'link' ? byName.get(s.target)! : s;
    const content = src.type === 'file' ? Buffer.from(src.content ?? '') : undefined;
    const paxMtime = typeof src.pax?.mtime === 'string' ? src.pax.mtime : undefined;
    const [sec, frac = ''] = paxMtime ? paxMtime.split('.') : [String(Math.floor((src.mtime ?? T0).getTime() / 1000))];
    const ns = Number((frac + '000000000').slice(0, 9));
    const xattrs: Record<string, string> = {};
    if (rev >= 2) {
      for (const [k, v] of Object.entries(src.pax ?? {})) if (k.startsWith('SCHILY.xattr.')) xattrs[k.slice('SCHILY.xattr.'.length)] = Buffer.from(v).toString('hex');
    }
    const group = links.get(src.name);
    out.set(s.name, {
      mode: TYPE_BITS[src.type] | (src.mode ?? (src.type === 'directory' ? 0o755 : 0o644)),
      uid: legacy ? 0 : src.uid ?? 0, gid: legacy ? 0 : src.gid ?? 0,
      size: content ? content.length : src.type === 'symlink' ? Buffer.byteLength(src.target) : 0,
      // Link counts: hardlink groups from the catalog; a legacy catalog has none (1). Directories are not compared.
      nlink: group !== undefined && !legacy ? group : 1,
      // The catalog keeps nanoseconds from revision 7; FUSE (fuse-native) passes milliseconds.
      mtimeNs: BigInt(sec!) * 1_000_000_000n + (rev >= 7 ? BigInt(Math.floor(ns / 1e6) * 1e6) : 0n),
      ...(content ? { sha256: createHash('sha256').update(content).digest('hex') } : {}),
      ...(src.type === 'symlink' ? { target: src.target } : {}),
      ...(src.type === 'character-device' || src.type === 'block-device' ? { rdev: [src.major, src.minor] as [number, number] } : {}),
      ...(s.type === 'link' ? { hardlinkOf: s.target } : {}),
      xattrs,
    });
  }
  return out;
}

/** Runs in a child: lstat, content hash, link target and user.* xattrs of every entry below a directory. */
const WALK = `
import os, sys, json, hashlib
root = sys.argv[1]
MAGIC = {'user.fqrn','user.revision','user.root_hash','user.host','user.host_list','user.nclg','user.expires','user.counters',
         'user.compression','user.chunks','user.hash','user.rawlink'}
out = {}
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        p = os.path.join(d, n); rel = os.path.relpath(p, root); st = os.lstat(p)
        e = {'mode': st.st_mode, 'uid': st.st_uid, 'gid': st.st_gid, 'nlink': st.st_nlink, 'ino': st.st_ino, 'size': st.st_size,
             'mtime_ns': str(st.st_mtime_ns), 'rdev': [os.major(st.st_rdev), os.minor(st.st_rdev)], 'xattrs': {}}
        if os.path.islink(p): e['target'] = os.readlink(p)
        elif os.path.isfile(p):
            h = hashlib.sha256()
            with open(p, 'rb') as f:
                for b in iter(lambda: f.read(1 << 20), b''): h.update(b)
            e['sha256'] = h.hexdigest()
        if os.path.isfile(p) or os.path.isdir(p):
            for x in os.listxattr(p, follow_symlinks=False):
                if x.startswith('user.') and x not in MAGIC: e['xattrs'][x] = os.getxattr(p, x, follow_symlinks=False).hex()
        out[rel] = e
print(json.dumps(out))
`;

interface Seen {
  mode: number; uid: number; gid: number; nlink: number; ino: number; size: number; mtime_ns: string; rdev: [number, number];
  xattrs: Record<string, string>; target?: string; sha256?: string;
}

/** tmpfs when there is one: the writer and the cache fsync, which costs seconds on some disks. */
const SCRATCH = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

function scratch(t: Test, prefix: string): { base: string; onTeardown: (fn: () => Promise<unknown> | unknown) => void } {
  const base = fs.mkdtempSync(path.join(SCRATCH, prefix));
  const steps: (() => Promise<unknown> | unknown)[] = [];
  t.teardown(async () => {
    for (const fn of steps.reverse()) await Promise.resolve(fn()).catch(() => {});
    fs.rmSync(base, { recursive: true, force: true });
  });
  return { base, onTeardown: (fn) => { steps.push(fn); } };
}

/** The writer's repository (every catalog schema 2.5 revision 7), made once. */
let template: Promise<{ repo: Fixture; dir: string }> | undefined;
function templateRepo(): Promise<{ repo: Fixture; dir: string }> {
  template ??= (async () => {
    const dir = fs.mkdtempSync(path.join(SCRATCH, 'layouts-template-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const repo = await makeRepo(dir, FQRN);
    await repo.ingest('/layers/a', await tarOf(LAYER_A));
    await repo.ingest('/layers/b', await tarOf(LAYER_B));
    fs.writeFileSync(path.join(dir, 'walk.py'), WALK);
    return { repo, dir };
  })();
  return template;
}

t.test('the generator writes the DDL of each layout (§11.2, §11.3): columns, tables, properties, counters, rowids', async (t) => {
  const { repo } = await templateRepo();
  const base = fs.mkdtempSync(path.join(SCRATCH, 'layouts-ddl-'));
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const original = new Database(inflateSync(fs.readFileSync(path.join(repo.dir, objectPath(parseManifest(openLetter(repo.manifest(), 'manifest').body).rootHash, 'C')))));
  const rowids = original.prepare('SELECT rowid, name FROM catalog ORDER BY rowid').all();
  original.close();
  for (const [i, l] of LAYOUTS.entries()) {
    const dir = path.join(base, String(i));
    linkCopy(repo.dir, dir);
    const { rootHash, catalogs } = await rewriteLayouts(dir, repo.keys, repo.fqrn, { layouts: { '': l } });
    const bytes = inflateSync(fs.readFileSync(path.join(dir, objectPath(rootHash, 'C'))));
    t.equal(bytes.length, catalogs.get('')!.size, `${layoutLabel(l)}: size reported`);
    const db = new Database(bytes);
    const cols = (db.prepare('PRAGMA table_info(catalog)').all() as { name: string }[]).map((c) => c.name);
    const nestedCols = (db.prepare('PRAGMA table_info(nested_catalogs)').all() as { name: string }[]).map((c) => c.name);
    const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
    const props = new Map((db.prepare('SELECT key, value FROM properties').all() as { key: string; value: string }[]).map((r) => [r.key, r.value]));
    const legacy = l === LEGACY, rev = l.revision ?? 0;
    const has = (c: string) => cols.includes(c);
    t.same([has('inode'), has('hardlinks'), has('uid'), has('gid'), has('xattr'), has('mtimens')],
      legacy ? [true, false, false, false, false, false] : [false, true, true, true, rev >= 2, rev >= 7], `${layoutLabel(l)}: catalog columns`);
    t.equal(nestedCols.includes('size'), !legacy && rev >= 1, `${layoutLabel(l)}: nested_catalogs.size from revision 1`);
    t.same(tables, ['catalog', ...(legacy ? [] : ['chunks']), 'nested_catalogs', 'properties', ...(legacy ? [] : ['statistics']), ...(!legacy && rev >= 4 ? ['bind_mountpoints'] : [])].sort(),
      `${layoutLabel(l)}: tables`);
    t.same([props.get('schema'), props.get('schema_revision')], [l.schema, !legacy && rev >= 1 ? String(rev) : undefined], `${layoutLabel(l)}: schema properties`);
    if (!legacy) {
      const n = (db.prepare('SELECT COUNT(*) AS n FROM statistics').get() as { n: number }).n;
      t.equal(n, 2 * (8 + (rev >= 2 ? 1 : 0) + (rev >= 3 ? 2 : 0) + (rev >= 5 ? 1 : 0)), `${layoutLabel(l)}: the counters of its revision`);
    }
    t.same(db.prepare('SELECT rowid, name FROM catalog ORDER BY rowid').all(), rowids, `${layoutLabel(l)}: rowids kept`);
    t.same([bytes[18], bytes[19]], [1, 1], `${layoutLabel(l)}: a rollback-journal database`);
    db.close();
  }
});

/** A hard-linked copy of the template with the given layouts, served and opened. */
async function layoutCopy(base: string, onTeardown: (fn: () => unknown) => void, o: RewriteOptions, name = 'copy') {
  const { repo } = await templateRepo();
  const dir = path.join(base, name);
  linkCopy(repo.dir, dir);
  const rewritten = await rewriteLayouts(dir, repo.keys, repo.fqrn, o);
  const srv = await serveRepository({ dir, fqrn: repo.fqrn });
  onTeardown(() => srv.close());
  const log: string[] = [];
  const open = (cache = path.join(base, `${name}-cache`)) => openRepository({
    fqrn: repo.fqrn, servers: [srv.url], cacheDir: cache, maxRetries: 0, timeoutMs: 5000, log: (l) => log.push(l),
    publicKeys: [{ name: 'pub', pem: fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8') }],
  });
  return { dir, rewritten, srv, open, log };
}

/** Layouts (root, /layers/a, /layers/b) for case i: each layout once on each catalog, legacy never on a. */
function cycle(i: number): { root: LayoutSpec; a: LayoutSpec; b: LayoutSpec } {
  const n = LAYOUTS.length;
  const b = LAYOUTS[i % n]!;
  const a = LAYOUTS[(i + 3) % n] === LEGACY ? LAYOUTS[(i + 4) % n]! : LAYOUTS[(i + 3) % n]!;
  const root = LAYOUTS[(i + 6) % n]!;
  return { root, a, b };
}

/** JSON with object keys sorted (xattr lists have no order). */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (x && typeof x === 'object' && !Array.isArray(x)
    ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([p], [q]) => (p < q ? -1 : 1))) : x));
}

function compareLayer(t: Test, seen: Record<string, Seen>, specs: readonly TarSpec[], l: LayoutSpec, where: string): void {
  const want = expectations(specs, l);
  t.same(Object.keys(seen).sort(), [...want.keys(), '.cvmfscatalog'].sort(), `${where}: the entries of the layer`);
  const problems: string[] = [];
  for (const [name, w] of want) {
    const s = seen[name];
    if (!s) continue;
    const isDir = (w.mode & 0o170000) === 0o040000;
    const check = (what: string, a: unknown, b: unknown) => { if (canonical(a) !== canonical(b)) problems.push(`${name}: ${what} ${JSON.stringify(a)}, expected ${JSON.stringify(b)}`); };
    check('mode', s.mode.toString(8), w.mode.toString(8));
    check('owner', `${s.uid}:${s.gid}`, `${w.uid}:${w.gid}`);
    if (!isDir) { check('size', s.size, w.size); check('nlink', s.nlink, w.nlink); }
    check('mtime_ns', s.mtime_ns, String(w.mtimeNs));
    if (w.sha256) check('sha256', s.sha256, w.sha256);
    if (w.target) check('link target', s.target, w.target);
    if (w.rdev) check('rdev', s.rdev, w.rdev);
    check('xattrs', s.xattrs, w.xattrs);
    if (w.hardlinkOf) {
      const legacy = l.schema === null || Number(l.schema) < 2;
      const same = s.ino === seen[w.hardlinkOf]?.ino;
      if (same === legacy) problems.push(`${name}: inode ${s.ino} ${legacy ? 'shared with' : 'differs from'} ${w.hardlinkOf} (${seen[w.hardlinkOf]?.ino})`);
    }
  }
  t.same(problems, [], `${where}: modes, owners, sizes, link counts, mtimes, bytes, link targets, devices, xattrs, inodes`);
}

for (let i = 0; i < LAYOUTS.length; i++) {
  const { root, a, b } = cycle(i);
  // Nested sizes as recorded by the root: 0, NULL, the true size; or no column (legacy, revision 0 roots).
  const nestedSize = (['zero', 'null', 'recorded'] as const)[i % 3]!;
  const sizeColumn = root !== LEGACY && (root.revision ?? 0) >= 1;
  const title = `root ${layoutLabel(root)}, /layers/a ${layoutLabel(a)}, /layers/b ${layoutLabel(b)}` +
    ` (nested sizes: ${sizeColumn ? nestedSize : 'no column'}; manifest B ${i % 4 === 0 ? 'omitted' : 'recorded'})`;
  t.test(`mixed layouts through FUSE: ${title}`, async (t) => {
    if (skipWithoutFuse(t)) return;
    const { base, onTeardown } = scratch(t, 'layouts-');
    const { dir: tdir } = await templateRepo();
    const c = await layoutCopy(base, onTeardown, {
      layouts: { '': root, '/layers/a': { ...a, nestedSize }, '/layers/b': { ...b, nestedSize } },
      rootCatalogSize: i % 4 === 0 ? 'omit' : 'recorded',
    });
    const r = await c.open();
    onTeardown(() => r.close());

    // Through the API: the nanoseconds as stored, the chunked file, no size or hash mismatch.
    const ns = await r.stat('/layers/a/ns.txt');
    t.equal(ns.mtimens, (a.revision ?? 0) >= 7 ? 123456789 : null, `mtimens ${(a.revision ?? 0) >= 7 ? 'kept' : 'absent'} at ${layoutLabel(a)}`);
    const bigEntry = await r.stat('/layers/a/d/big.bin');
    t.ok(big.length > CHUNKING_THRESHOLD_BYTES && bigEntry.chunked, 'big.bin is chunked');
    t.ok(Number((await r.getxattr('/layers/a/d/big.bin', 'user.chunks')).toString()) >= 2, 'in two chunks at least');
    t.ok((await r.readFile('/layers/a/d/big.bin')).equals(big), 'chunked file bytes (API)');
    t.equal((await r.stat('/layers/a/d/hard')).linkcount, 2, 'hardlink count from the catalog');

    const mnt = path.join(base, 'mnt');
    fs.mkdirSync(mnt);
    const m = await mountRepository(r, { mountpoint: mnt, log: (l) => c.log.push(l) });
    onTeardown(() => m.unmount());
    for (const [layer, specs, l] of [['a', LAYER_A, a], ['b', LAYER_B, b]] as const) {
      const seen = JSON.parse(await sh(`python3 '${tdir}/walk.py' '${mnt}/layers/${layer}'`)) as Record<string, Seen>;
      compareLayer(t, seen, specs, l, `/layers/${layer} (${layoutLabel(l)})`);
    }
    const top = JSON.parse(await sh(`python3 -c 'import os,json,sys; print(json.dumps([os.lstat(p).st_mode for p in sys.argv[1:]]))' '${mnt}' '${mnt}/layers'`)) as number[];
    t.same(top, [0o40755, 0o40755], `root catalog (${layoutLabel(root)}) entries read`);
    const st = (await sh(`stat -f -c '%T %c %S' '${mnt}'`)).trim();
    t.match(st, /^fuse(blk)? \d+ 4096$/, `statfs answers (root ${layoutLabel(root)})`);
    t.equal(await sh(`cat '${mnt}/layers/b/plain.txt'`), 'plain\n', 'the mount survives statfs');
    t.equal(r.counters().hashMismatches, 0, 'no hash or size mismatch');
    t.notMatch(c.log.join('\n'), /CVMFS_HASH_MISMATCH/, 'none logged');
    await m.unmount();
    t.notMatch(fs.readFileSync('/proc/self/mountinfo', 'utf8'), mnt, 'unmounted');
  });
}

// (Opening a repository whose catalogs carry sizes starts the zlib worker pool, which under tap's
// TypeScript loader takes seconds; cases that only need the root catalog leave the manifest's B out.)

t.test('a recorded nested size is checked (the control for the 0, NULL and no-column cases above)', async (t) => {
  const { base, onTeardown } = scratch(t, 'layouts-size-');
  const c = await layoutCopy(base, onTeardown, { layouts: { '': { schema: '2.5', revision: 7, extraSql: ["UPDATE nested_catalogs SET size = size + 1 WHERE path = '/layers/a'"] } } }, 'wrong');
  const r = await c.open();
  onTeardown(() => r.close());
  await t.rejects(r.stat('/layers/a/d/x.txt'), { code: 'CVMFS_HASH_MISMATCH' }, 'a wrong recorded size is a mismatch');
  t.ok((await r.readFile('/layers/b/plain.txt')).equals(Buffer.from('plain\n')), 'the other nested catalog still reads');
});

t.test('a 2.0-era repository (legacy 1.0 catalogs, no B or T in the manifest): owners 0:0, no xattrs, devices, no counters; a chunked file cannot go into a legacy catalog', async (t) => {
  const { base, onTeardown } = scratch(t, 'layouts-legacy-');
  const { repo } = await templateRepo();
  // Layer a has hardlinks but also a chunked file: the generator refuses that, as no 1.x catalog holds chunks.
  const refused = path.join(base, 'refused');
  linkCopy(repo.dir, refused);
  await t.rejects(rewriteLayouts(refused, repo.keys, repo.fqrn, { layouts: { '/layers/a': LEGACY } }), /cannot hold chunked files/);
  // A 2.0-era repository: legacy catalogs, a manifest without B and without T.
  const c = await layoutCopy(base, onTeardown, { layouts: { '': { schema: null }, '/layers/b': { schema: null } }, rootCatalogSize: 'omit',
    editManifest: (m) => ({ ...m, publishTime: 0 }) });
  t.notMatch(fs.readFileSync(path.join(c.dir, '.cvmfspublished'), 'latin1').split('\n--\n')[0]!, /^[BT]/m, 'the manifest has neither B nor T');
  const r = await c.open();
  onTeardown(() => r.close());
  const odd = await r.stat('/layers/b/odd');
  t.same([odd.mode, odd.uid, odd.gid, odd.linkcount, odd.xattr], [0o102711, 0, 0, 1, null], 'schema property absent: legacy 1.0');
  t.same((await r.listxattr('/layers/b/x.txt')).filter((n) => n === 'user.shape'), [], 'no catalog xattrs');
  const dev = await r.stat('/layers/b/sda1');
  t.same([dev.kind, dev.rdev, dev.size], ['special', 0x801n, 0n], 'device from mode, number from size');
  t.equal((await r.stat('/layers/b/abs-link')).symlink, '/nonexistent/abs');
  const totals = r.totals();
  t.same(totals, Object.fromEntries(Object.keys(totals).map((k) => [k, 0n])), 'no statistics table: counters read as 0');
});

t.test('refused layouts name what is wrong: schema 3.0, 2.0, 2.45 and 2.6, a revision 7 catalog without mtimens, revision 2 without xattr', async (t) => {
  const { base, onTeardown } = scratch(t, 'layouts-refused-');
  // The stock client reads legacy (< 2.0), exactly 2.4 and exactly 2.5; it refuses every other schema ≥ 2.0.
  for (const [schema, named] of [['3.0', /schema 3(\.0)?\b/], ['2.0', /schema 2(\.0)?\b/], ['2.45', /schema 2\.45\b/]] as const) {
    const c = await layoutCopy(base, onTeardown, { layouts: { '': { schema, revision: 7 } }, rootCatalogSize: 'omit' }, `s${schema}`);
    await t.rejects(c.open(), { code: 'CVMFS_BAD_CATALOG', message: named }, `root catalog of schema ${schema} refused at open, naming the schema`);
  }
  let c = await layoutCopy(base, onTeardown, { layouts: { '': { schema: '2.5', revision: 2, dropColumns: ['xattr'] } }, rootCatalogSize: 'omit' }, 'noxattr');
  await t.rejects(c.open(), { code: 'CVMFS_BAD_CATALOG', message: /xattr/ }, 'revision 2 without xattr refused, naming the column');

  c = await layoutCopy(base, onTeardown, { layouts: {
    '/layers/a': { schema: '2.5', revision: 7, dropColumns: ['mtimens'] },
    '/layers/b': { schema: '2.6', revision: 7 },
  } }, 'nested');
  const r = await c.open();
  onTeardown(() => r.close());
  await t.rejects(r.stat('/layers/b/plain.txt'), { code: 'CVMFS_BAD_CATALOG', message: /schema 2\.6/ }, 'nested catalog of schema 2.6 refused when attached');
  await t.rejects(r.stat('/layers/a/ns.txt'), { code: 'CVMFS_BAD_CATALOG', message: /mtimens/ }, 'revision 7 without mtimens refused, naming the column');
  t.equal((await r.stat('/layers')).kind, 'dir', 'the root catalog still reads');
});

t.test('statfs with missing counters: revision 3 without any, revision 5 without one; the mount survives', async (t) => {
  if (skipWithoutFuse(t)) return;
  const { base, onTeardown } = scratch(t, 'layouts-statfs-');
  for (const [what, spec] of [
    ['revision 3, no counters at all', { schema: '2.5', revision: 3, dropCounters: 'all' }],
    ['revision 5, self_special missing', { schema: '2.5', revision: 5, dropCounters: ['self_special'] }],
  ] as const) {
    const name = `r${spec.revision}`;
    const c = await layoutCopy(base, onTeardown, { layouts: { '': spec } }, name);
    const r: Repository = await c.open();
    onTeardown(() => r.close());
    if (spec.revision < 5) t.equal(r.totals().regular, 0n, `${what}: missing counters read as 0`);
    else t.throws(() => r.totals(), { code: 'CVMFS_BAD_CATALOG', message: /self_special/ }, `${what}: the counter is mandatory from revision 5`);
    const mnt = path.join(base, `${name}-mnt`);
    fs.mkdirSync(mnt);
    const m = await mountRepository(r, { mountpoint: mnt, log: (l) => c.log.push(l) });
    onTeardown(() => m.unmount());
    t.match((await sh(`stat -f -c '%S %c' '${mnt}'`)).trim(), /^4096 \d+$/, `${what}: stat -f answers`);
    t.equal(await sh(`cat '${mnt}/layers/a/d/f1'`), 'hello hardlink\n', `${what}: the mount survives statfs`);
    if (spec.revision >= 5) t.match(c.log.join('\n'), /statfs: .*self_special/, `${what}: the counter error is logged`);
    await m.unmount();
  }
});
