/**
 * Catalogs of older layouts (docs/cvmfs-format.md §11.2, §11.3, §11.3a), generated from the DDL of
 * the spec, not through the writer's catalog code: a repository made by our writer (always schema
 * 2.5 revision 7) is rewritten bottom-up so that each catalog has the layout chosen for its mount
 * path — legacy 1.x, 2.4, 2.5 revision 0…7, or a hostile variant (a schema no client reads, a
 * column dropped, counters missing). Rows keep their rowids (inodes derive from them, §13.7); each
 * new catalog is a rollback-journal database, VACUUMed, deflated and stored under the hash of its
 * compressed bytes; the parent's `nested_catalogs` row is updated (hash, and the size as chosen);
 * finally the manifest is re-signed with the repository's certificate key.
 */
import fs from 'node:fs';
import path from 'node:path';
import { inflateSync } from 'node:zlib';
import Database from 'better-sqlite3';
import {
  encodeObject, manifestBody, objectPath, openLetter, parseManifest, parseTextualHash, signManifest, type HashAlgo, type Manifest,
} from '../../cvmfs/format/index.js';
import { loadSigningKeys } from '../../cvmfs/writer/keys.js';

export interface LayoutSpec {
  /**
   * The `schema` property: '1.2' (or any 1.x: legacy layout), '2.4', '2.5'; null leaves it out
   * (legacy 1.0). Any other value ('2.6', '3.0') is written as given over the 2.5 layout of
   * `revision`, to test refusals.
   */
  readonly schema: string | null;
  /** Schema revision (2.4/2.5 only); default 7 for 2.5, 0 for 2.4. */
  readonly revision?: number;
  /** Whether the `schema_revision` property is written; default: from revision 1 on (§11.3). */
  readonly revisionProperty?: boolean;
  /**
   * How the parent's `nested_catalogs` row records this catalog's (inflated) size:
   * 'recorded' (default) the true size; 'zero' 0; 'null' NULL; 'absent' asserts the parent's layout
   * has no `size` column (legacy, revision 0) — there the size is never recorded anyway.
   */
  readonly nestedSize?: 'recorded' | 'zero' | 'null' | 'absent';
  /** `catalog` columns to leave out although the layout has them (e.g. `mtimens` at revision 7). */
  readonly dropColumns?: readonly string[];
  /** Statistics counters to leave out (full names, e.g. `self_special`), or 'all' of them. */
  readonly dropCounters?: readonly string[] | 'all';
  /** SQL run on the new catalog after the copy, before VACUUM. */
  readonly extraSql?: readonly string[];
}

export interface RewriteOptions {
  /** Layout per mount path ('' is the root catalog); catalogs not named keep schema 2.5 revision 7. */
  readonly layouts: Readonly<Record<string, LayoutSpec>>;
  /** Manifest `B`: the new root catalog's inflated size (default), or left out as 2.0-era manifests do. */
  readonly rootCatalogSize?: 'recorded' | 'omit';
  /** A last change to the manifest before it is signed (e.g. no `T`, as some 2.0-era manifests). */
  readonly editManifest?: (m: Manifest) => Manifest;
}

export interface RewrittenCatalog {
  readonly mountPath: string;
  readonly hash: string;
  /** Inflated size in bytes. */
  readonly size: number;
  readonly spec: LayoutSpec;
}

export interface RewriteResult {
  readonly rootHash: string;
  readonly manifest: Manifest;
  /** Every catalog of the tree, by mount path. */
  readonly catalogs: ReadonlyMap<string, RewrittenCatalog>;
}

export const CURRENT_LAYOUT: LayoutSpec = { schema: '2.5', revision: 7 };

/** A short name for a layout, for test titles: `legacy 1.2`, `2.4`, `2.5r3`. */
export function layoutLabel(s: LayoutSpec): string {
  if (isLegacy(s)) return `legacy ${s.schema ?? '1.0 (no schema property)'}`;
  return s.schema === '2.4' && s.revision === undefined ? '2.4' : `${s.schema}r${revisionOf(s)}`;
}

function isLegacy(s: LayoutSpec): boolean {
  return s.schema === null || Number(s.schema) < 2;
}

function revisionOf(s: LayoutSpec): number {
  return s.revision ?? (s.schema === '2.4' ? 0 : 7);
}

/** What a layout has (§11.3 and §11.3a). */
interface LayoutShape {
  readonly legacy: boolean;
  readonly revision: number;
  readonly catalogColumns: readonly string[];
  readonly nestedSize: boolean;
  readonly chunks: boolean;
  readonly statistics: boolean;
  readonly bindMountpoints: boolean;
  readonly counterFields: readonly string[];
}

const COUNTERS_R0 = ['regular', 'symlink', 'dir', 'nested', 'chunked', 'chunks', 'file_size', 'chunked_size'];

function shapeOf(s: LayoutSpec): LayoutShape {
  const drop = new Set(s.dropColumns ?? []);
  if (isLegacy(s)) {
    return {
      legacy: true, revision: 0, nestedSize: false, chunks: false, statistics: false, bindMountpoints: false, counterFields: [],
      catalogColumns: ['md5path_1', 'md5path_2', 'parent_1', 'parent_2', 'inode', 'hash', 'size', 'mode', 'mtime', 'flags', 'name', 'symlink']
        .filter((c) => !drop.has(c)),
    };
  }
  const r = revisionOf(s);
  const cols = ['md5path_1', 'md5path_2', 'parent_1', 'parent_2', 'hardlinks', 'hash', 'size', 'mode', 'mtime',
    ...(r >= 7 ? ['mtimens'] : []), 'flags', 'name', 'symlink', 'uid', 'gid', ...(r >= 2 ? ['xattr'] : [])];
  return {
    legacy: false, revision: r, nestedSize: r >= 1, chunks: true, statistics: true, bindMountpoints: r >= 4,
    catalogColumns: cols.filter((c) => !drop.has(c)),
    counterFields: [...COUNTERS_R0, ...(r >= 2 ? ['xattr'] : []), ...(r >= 3 ? ['external', 'external_file_size'] : []), ...(r >= 5 ? ['special'] : [])],
  };
}

const COLUMN_TYPES: Readonly<Record<string, string>> = {
  md5path_1: 'INTEGER', md5path_2: 'INTEGER', parent_1: 'INTEGER', parent_2: 'INTEGER', inode: 'INTEGER', hardlinks: 'INTEGER',
  hash: 'BLOB', size: 'INTEGER', mode: 'INTEGER', mtime: 'INTEGER', mtimens: 'INTEGER', flags: 'INTEGER', name: 'TEXT',
  symlink: 'TEXT', uid: 'INTEGER', gid: 'INTEGER', xattr: 'BLOB',
};

/** The DDL of a layout, in the order the server executes it (§11.2), with what the layout lacks left out. */
export function layoutDdl(s: LayoutSpec): string[] {
  const sh = shapeOf(s);
  const ddl = [
    'CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))',
    `CREATE TABLE catalog (${sh.catalogColumns.map((c) => `${c} ${COLUMN_TYPES[c]}`).join(', ')},
       CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2))`,
    'CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2)',
  ];
  if (sh.chunks) {
    ddl.push(`CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER, hash BLOB,
       CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),
       FOREIGN KEY (md5path_1, md5path_2) REFERENCES catalog(md5path_1, md5path_2))`);
  }
  ddl.push(`CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT${sh.nestedSize ? ', size INTEGER' : ''},
     CONSTRAINT pk_nested_catalogs PRIMARY KEY (path))`);
  if (sh.bindMountpoints) ddl.push('CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path))');
  if (sh.statistics) ddl.push('CREATE TABLE statistics (counter TEXT, value INTEGER, CONSTRAINT pk_statistics PRIMARY KEY (counter))');
  return ddl;
}

/** Stored catalog object → inflated SQLite bytes. */
function readCatalogObject(repoDir: string, hash: string): Buffer {
  return inflateSync(fs.readFileSync(path.join(repoDir, objectPath(hash, 'C'))));
}

function columnsOf(db: Database.Database, schema: string, table: string): Set<string> {
  return new Set((db.prepare(`PRAGMA ${schema}.table_info(${table})`).all() as { name: string }[]).map((r) => r.name));
}

function tablesOf(db: Database.Database, schema: string): Set<string> {
  return new Set((db.prepare(`SELECT name FROM ${schema}.sqlite_master WHERE type = 'table'`).all() as { name: string }[]).map((r) => r.name));
}

interface ChildRef { readonly path: string; readonly hash: string; readonly size: number; readonly spec: LayoutSpec }

/**
 * Builds the catalog file `out` of layout `spec` from the catalog file `src` (any layout our
 * reader understands; in practice the writer's), with the nested references replaced by
 * `children`.
 */
function buildCatalog(src: string, out: string, spec: LayoutSpec, children: readonly ChildRef[], mountPath: string): void {
  const sh = shapeOf(spec);
  const db = new Database(out);
  try {
    db.pragma('journal_mode = DELETE');
    db.pragma('synchronous = OFF'); // a scratch file: no fsync per statement (not stored in the file)
    db.prepare('ATTACH DATABASE ? AS old').run(src);
    db.exec('BEGIN');
    db.exec(layoutDdl(spec).join(';\n'));
    const oldCols = columnsOf(db, 'old', 'catalog');
    const oldTables = tablesOf(db, 'old');
    const where = `catalog ${mountPath || '/'}`;
    if (sh.legacy && oldTables.has('chunks') && (db.prepare('SELECT COUNT(*) AS n FROM old.chunks').get() as { n: number }).n > 0) {
      throw new Error(`${where}: a legacy 1.x catalog cannot hold chunked files; choose another layout for it`);
    }
    const select = sh.catalogColumns.map((c) => (oldCols.has(c) ? c : c === 'inode' ? 'rowid' : 'NULL'));
    db.exec(`INSERT INTO catalog (rowid, ${sh.catalogColumns.join(', ')})
      SELECT rowid, ${select.join(', ')} FROM old.catalog ORDER BY rowid`);
    if (sh.chunks && oldTables.has('chunks')) {
      db.exec('INSERT INTO chunks (md5path_1, md5path_2, offset, size, hash) SELECT md5path_1, md5path_2, offset, size, hash FROM old.chunks ORDER BY rowid');
    }
    if (sh.bindMountpoints && oldTables.has('bind_mountpoints')) {
      db.exec('INSERT INTO bind_mountpoints (path, sha1, size) SELECT path, sha1, size FROM old.bind_mountpoints');
    }
    db.exec(`INSERT INTO properties (key, value) SELECT key, value FROM old.properties
      WHERE key NOT IN ('schema', 'schema_revision') ORDER BY rowid`);
    if (spec.schema !== null) db.prepare('INSERT INTO properties (key, value) VALUES (?, ?)').run('schema', spec.schema);
    if (!sh.legacy && (spec.revisionProperty ?? sh.revision >= 1)) {
      db.prepare('INSERT INTO properties (key, value) VALUES (?, ?)').run('schema_revision', String(sh.revision));
    }
    if (sh.statistics && oldTables.has('statistics')) {
      const drop = spec.dropCounters === 'all' ? null : new Set(spec.dropCounters ?? []);
      const keep = sh.counterFields.flatMap((f) => [`self_${f}`, `subtree_${f}`]).filter((c) => drop !== null && !drop.has(c));
      const ins = db.prepare('INSERT INTO statistics (counter, value) SELECT counter, value FROM old.statistics WHERE counter = ?');
      for (const c of keep) ins.run(c);
    }
    // Nested references: the old rows, then the rewritten children.
    const oldNested = db.prepare('SELECT path, sha1 FROM old.nested_catalogs ORDER BY rowid').all() as { path: string; sha1: string }[];
    const byPath = new Map(children.map((c) => [c.path, c]));
    for (const n of oldNested) if (!byPath.has(n.path)) throw new Error(`${where}: nested catalog ${n.path} was not rewritten`);
    const ins = sh.nestedSize
      ? db.prepare('INSERT INTO nested_catalogs (path, sha1, size) VALUES (?, ?, ?)')
      : db.prepare('INSERT INTO nested_catalogs (path, sha1) VALUES (?, ?)');
    for (const n of oldNested) {
      const c = byPath.get(n.path)!;
      const how = c.spec.nestedSize ?? 'recorded';
      if (how === 'absent' && sh.nestedSize) {
        throw new Error(`nested catalog ${c.path}: nestedSize 'absent' needs a parent layout without nested_catalogs.size (legacy or revision 0), not ${layoutLabel(spec)}`);
      }
      if (sh.nestedSize) ins.run(c.path, c.hash, how === 'zero' ? 0 : how === 'null' ? null : c.size);
      else ins.run(c.path, c.hash);
    }
    for (const q of spec.extraSql ?? []) db.exec(q);
    db.exec('COMMIT');
    db.exec('DETACH DATABASE old');
    db.exec('VACUUM');
    db.pragma('journal_mode = DELETE');
  } finally {
    db.close();
  }
}

/** Writes `data` to `file` by rename, so that a hard-linked copy of the old file is left alone. */
function replaceFile(file: string, data: Buffer): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

/** The catalog tree of the current revision: mount path → catalog hash, parents before children. */
export function catalogTree(repoDir: string): { mountPath: string; hash: string; children: string[] }[] {
  const { manifest } = readManifest(repoDir);
  const out: { mountPath: string; hash: string; children: string[] }[] = [];
  const walk = (hash: string, mountPath: string) => {
    const db = new Database(readCatalogObject(repoDir, hash));
    let nested: { path: string; sha1: string }[];
    try { nested = db.prepare('SELECT path, sha1 FROM nested_catalogs').all() as { path: string; sha1: string }[]; } finally { db.close(); }
    out.push({ mountPath, hash, children: nested.map((n) => n.path) });
    for (const n of nested) walk(n.sha1, n.path);
  };
  walk(manifest.rootHash, '');
  return out;
}

function readManifest(repoDir: string): { manifest: Manifest; algo: HashAlgo } {
  const letter = openLetter(fs.readFileSync(path.join(repoDir, '.cvmfspublished')), 'manifest');
  const manifest = parseManifest(letter.body);
  return { manifest, algo: parseTextualHash(manifest.rootHash).algo };
}

/**
 * Rewrites the catalogs of the repository in `repoDir` (served tree; keys in `keysDir`) into the
 * chosen layouts and re-signs its manifest. The old catalog objects stay (content-addressed);
 * `.cvmfspublished` is replaced by rename, so a hard-linked copy (`linkCopy`) can be rewritten
 * without touching its template.
 */
export async function rewriteLayouts(repoDir: string, keysDir: string, fqrn: string, o: RewriteOptions): Promise<RewriteResult> {
  const { manifest, algo } = readManifest(repoDir);
  const tree = catalogTree(repoDir);
  const known = new Set(tree.map((c) => c.mountPath));
  for (const p of Object.keys(o.layouts)) if (!known.has(p)) throw new Error(`no catalog is mounted at "${p}" (catalogs: ${[...known].map((k) => k || "''").join(', ')})`);
  const byPath = new Map(tree.map((c) => [c.mountPath, c]));
  const work = fs.mkdtempSync(path.join(repoDir, '..', '.layouts-'));
  const done = new Map<string, RewrittenCatalog>();
  try {
    const rewrite = (mountPath: string): RewrittenCatalog => {
      const c = byPath.get(mountPath)!;
      const children = c.children.map((p) => { const r = rewrite(p); return { path: p, hash: r.hash, size: r.size, spec: r.spec }; });
      const spec = o.layouts[mountPath] ?? CURRENT_LAYOUT;
      if (isLegacy(spec) && algo !== 'sha1') throw new Error(`catalog ${mountPath || '/'}: legacy 1.x catalogs hash content with SHA-1 only; this repository uses ${algo}`);
      const n = done.size;
      const src = path.join(work, `src-${n}.db`);
      const out = path.join(work, `out-${n}.db`);
      fs.writeFileSync(src, readCatalogObject(repoDir, c.hash));
      buildCatalog(src, out, spec, children, mountPath);
      const bytes = fs.readFileSync(out);
      const obj = encodeObject(bytes, 'C', algo);
      const file = path.join(repoDir, obj.path);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      if (!fs.existsSync(file)) replaceFile(file, obj.stored);
      const r: RewrittenCatalog = { mountPath, hash: obj.textual, size: bytes.length, spec };
      done.set(mountPath, r);
      return r;
    };
    const root = rewrite('');
    const keys = await loadSigningKeys(keysDir, fqrn);
    const { rootCatalogSize: _old, ...rest } = manifest;
    const sized: Manifest = { ...rest, rootHash: root.hash, ...((o.rootCatalogSize ?? 'recorded') === 'recorded' ? { rootCatalogSize: BigInt(root.size) } : {}) };
    const next = o.editManifest ? o.editManifest(sized) : sized;
    replaceFile(path.join(repoDir, '.cvmfspublished'), signManifest(manifestBody(next), algo, keys.certKey));
    return { rootHash: root.hash, manifest: next, catalogs: done };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** A copy of a repository tree whose files are hard links of the template's (cheap; objects are immutable). */
export function linkCopy(from: string, to: string): void {
  fs.mkdirSync(to, { recursive: true });
  for (const e of fs.readdirSync(from, { withFileTypes: true })) {
    const a = path.join(from, e.name), b = path.join(to, e.name);
    if (e.isDirectory()) linkCopy(a, b);
    else if (e.isFile()) fs.linkSync(a, b);
  }
}
