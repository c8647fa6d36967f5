/**
 * One prepared statement per query on a catalog database (docs/cvmfs-format.md §11). No SQL text
 * appears outside cvmfs/format. Integers are read as BigInt: path keys are signed 64-bit and the
 * `hardlinks` column packs (group << 32) | linkcount.
 */
import Database from 'better-sqlite3';
import { CvmfsError } from '../errors.js';
import {
  CATALOG_DDL, CATALOG_SCHEMA, CATALOG_SCHEMA_REVISION, COUNTER_FIELDS, zeroCounters, type Counters,
} from './catalog-schema.js';
import { pathKey, parentPathOf, type PathKey } from './path-key.js';

export interface CatalogEntry {
  readonly name: string;
  readonly mode: number;
  /** Uncompressed size; device number for character and block devices. */
  readonly size: bigint;
  readonly mtime: number;
  readonly mtimens: number | null;
  readonly uid: number;
  readonly gid: number;
  readonly flags: number;
  readonly linkcount: number;
  readonly hardlinkGroup: number;
  readonly hash: Buffer | null;
  readonly symlink: string;
  readonly xattr: Buffer | null;
}

export interface StoredEntry extends CatalogEntry { readonly rowid: number }

export interface Chunk { readonly offset: bigint; readonly size: bigint; readonly hash: Buffer }

export interface NestedCatalogRef { readonly path: string; readonly hash: string; readonly size: bigint }

interface Row {
  rowid: bigint; hardlinks: bigint | null; hash: Buffer | null; size: bigint | null; mode: bigint;
  mtime: bigint | null; mtimens: bigint | null; flags: bigint; name: string | null; symlink: string | null;
  uid: bigint | null; gid: bigint | null; xattr: Buffer | null;
}

const ENTRY_COLUMNS = 'rowid, hardlinks, hash, size, mode, mtime, mtimens, flags, name, symlink, uid, gid, xattr';

function toEntry(r: Row): StoredEntry {
  const hl = r.hardlinks ?? 1n;
  return {
    rowid: Number(r.rowid),
    name: r.name ?? '',
    mode: Number(r.mode),
    size: r.size ?? 0n,
    mtime: Number(r.mtime ?? 0n),
    mtimens: r.mtimens === null ? null : Number(r.mtimens),
    uid: Number(r.uid ?? 0n),
    gid: Number(r.gid ?? 0n),
    flags: Number(r.flags),
    linkcount: Number(hl & 0xffffffffn),
    hardlinkGroup: Number(hl >> 32n),
    hash: r.hash,
    symlink: r.symlink ?? '',
    xattr: r.xattr,
  };
}

export function packHardlinks(group: number, linkcount: number): bigint {
  return (BigInt(group) << 32n) | BigInt(linkcount);
}

/** A catalog database file, opened read-write (writer) or read-only (reader). */
export class CatalogDatabase {
  readonly db: Database.Database;
  private readonly st: ReturnType<typeof prepare>;

  private constructor(db: Database.Database) {
    this.db = db;
    db.defaultSafeIntegers(true);
    this.st = prepare(db);
  }

  /** Creates a new, empty catalog file with the full schema and properties. */
  static create(file: string, props: { rootPrefix: string | null; revision: number; lastModified: number }): CatalogDatabase {
    const db = new Database(file);
    db.pragma('journal_mode = DELETE');
    db.exec(CATALOG_DDL.join(';\n'));
    const c = new CatalogDatabase(db);
    db.transaction(() => {
      c.setProperty('schema', CATALOG_SCHEMA);
      c.setProperty('schema_revision', String(CATALOG_SCHEMA_REVISION));
      c.setProperty('revision', String(props.revision));
      c.setProperty('last_modified', String(props.lastModified));
      if (props.rootPrefix !== null) c.setProperty('root_prefix', props.rootPrefix);
      c.setCounters('self', zeroCounters());
      c.setCounters('subtree', zeroCounters());
    })();
    return c;
  }

  static open(file: string, opts: { readonly?: boolean } = {}): CatalogDatabase {
    let db: Database.Database;
    try {
      db = new Database(file, { readonly: opts.readonly ?? false, fileMustExist: true });
      db.pragma('temp_store = 2');
    } catch (err) {
      throw new CvmfsError('CVMFS_BAD_CATALOG', `cannot open catalog database ${file}`, { cause: err });
    }
    try {
      const c = new CatalogDatabase(db);
      const schema = Number(c.property('schema') ?? '1.0');
      if (!(schema >= 2.4 - 1e-6 && schema <= 2.5 + 1e-6)) {
        throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${file} has schema ${schema}; only 2.4 and 2.5 are supported`);
      }
      return c;
    } catch (err) {
      db.close();
      if (err instanceof CvmfsError) throw err;
      throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${file} is not a CernVM-FS catalog`, { cause: err });
    }
  }

  property(key: string): string | undefined {
    const r = this.st.getProperty.get(key) as { value: string } | undefined;
    return r?.value;
  }
  setProperty(key: string, value: string): void { this.st.setProperty.run(key, value); }
  deleteProperty(key: string): void { this.st.deleteProperty.run(key); }

  lookup(path: string): StoredEntry | undefined {
    const [k1, k2] = pathKey(path);
    const r = this.st.lookup.get(k1, k2) as Row | undefined;
    return r && toEntry(r);
  }

  /** Children of the directory at `path` (rows whose parent key is `path`'s key). */
  list(path: string): StoredEntry[] {
    const [k1, k2] = pathKey(path);
    return (this.st.list.all(k1, k2) as Row[]).map(toEntry);
  }

  byRowid(rowid: number): StoredEntry | undefined {
    const r = this.st.byRowid.get(BigInt(rowid)) as Row | undefined;
    return r && toEntry(r);
  }

  maxRowid(): number {
    const r = this.st.maxRowid.get() as { m: bigint | null };
    return Number(r.m ?? 0n);
  }

  /** Inserts the entry at `path` (replacing a row there gives it a new rowid: see `update`). The parent key is derived; the catalog root
   *  entry of the repository root has parent (0, 0). */
  upsert(path: string, e: CatalogEntry): void {
    const [k1, k2] = pathKey(path);
    const [p1, p2]: PathKey = path === '' ? [0n, 0n] : pathKey(parentPathOf(path));
    this.st.upsert.run({
      k1, k2, p1, p2, hardlinks: packHardlinks(e.hardlinkGroup, e.linkcount), hash: e.hash, size: e.size,
      mode: e.mode, mtime: e.mtime, mtimens: e.mtimens, flags: e.flags, name: e.name, symlink: e.symlink,
      uid: e.uid, gid: e.gid, xattr: e.xattr,
    });
  }

  /** Rewrites the entry at `path` in place, keeping its rowid (a catalog root must stay rowid 1). */
  update(path: string, e: CatalogEntry): void {
    const [k1, k2] = pathKey(path);
    const r = this.st.update.run({
      k1, k2, hardlinks: packHardlinks(e.hardlinkGroup, e.linkcount), hash: e.hash, size: e.size, mode: e.mode,
      mtime: e.mtime, mtimens: e.mtimens, flags: e.flags, name: e.name, symlink: e.symlink, uid: e.uid, gid: e.gid, xattr: e.xattr,
    });
    if (r.changes !== 1) throw new CvmfsError('CVMFS_PATH_NOT_FOUND', `catalog has no entry for "${path}" to update`);
  }

  chunks(path: string): Chunk[] {
    const [k1, k2] = pathKey(path);
    return (this.st.chunks.all(k1, k2) as { offset: bigint; size: bigint; hash: Buffer }[])
      .map((c) => ({ offset: c.offset, size: c.size, hash: c.hash }));
  }
  insertChunk(path: string, c: Chunk): void {
    const [k1, k2] = pathKey(path);
    this.st.insertChunk.run(k1, k2, c.offset, c.size, c.hash);
  }

  /** Removes the entry at `path` and, if it is a directory, everything stored below it in this
   *  catalog (rows and chunks). Returns the nested catalogs that were attached below it. */
  removeSubtree(path: string): NestedCatalogRef[] {
    const [k1, k2] = pathKey(path);
    this.st.deleteSubtreeChunks.run(k1, k2);
    this.st.deleteSubtree.run(k1, k2);
    const nested = this.nestedCatalogsWithin(path);
    for (const n of nested) this.st.deleteNested.run(n.path);
    return nested;
  }

  nestedCatalogs(): NestedCatalogRef[] {
    return (this.st.allNested.all() as { path: string; sha1: string; size: bigint | null }[])
      .map((n) => ({ path: n.path, hash: n.sha1, size: n.size ?? 0n }));
  }
  nestedCatalogsWithin(path: string): NestedCatalogRef[] {
    return this.nestedCatalogs().filter((n) => n.path === path || n.path.startsWith(path + '/'));
  }
  setNestedCatalog(ref: NestedCatalogRef): void { this.st.setNested.run(ref.path, ref.hash, ref.size); }

  counters(scope: 'self' | 'subtree'): Counters {
    const out = zeroCounters();
    const rows = this.st.allStatistics.all() as { counter: string; value: bigint | null }[];
    const byName = new Map(rows.map((r) => [r.counter, r.value ?? 0n]));
    for (const f of COUNTER_FIELDS) {
      const v = byName.get(`${scope}_${f}`);
      if (v === undefined) throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog lacks statistics counter ${scope}_${f}`);
      out[f] = v;
    }
    return out;
  }
  setCounters(scope: 'self' | 'subtree', c: Counters): void {
    for (const f of COUNTER_FIELDS) this.st.setStatistic.run(`${scope}_${f}`, c[f]);
  }

  /** Counts this catalog's own entries (§11.5), from the rows as stored. */
  computeSelfCounters(): Counters {
    const r = this.st.selfCounters.get() as Record<string, bigint | null>;
    const c = zeroCounters();
    for (const f of COUNTER_FIELDS) c[f] = r[f] ?? 0n;
    return c;
  }

  transaction<T>(fn: () => T): T { return this.db.transaction(fn)(); }

  /** Compacts the file and leaves it a self-contained rollback-journal database (§11.1). */
  finalize(): void {
    this.db.exec('VACUUM');
    this.db.pragma('journal_mode = DELETE');
  }

  close(): void { if (this.db.open) this.db.close(); }
}

function prepare(db: Database.Database) {
  const subtree = `WITH RECURSIVE sub(k1, k2) AS (SELECT ?, ? UNION ALL
      SELECT c.md5path_1, c.md5path_2 FROM catalog c JOIN sub ON c.parent_1 = sub.k1 AND c.parent_2 = sub.k2)`;
  const T = { dir: 0o040000, reg: 0o100000, lnk: 0o120000, fmt: 0o170000 };
  return {
    getProperty: db.prepare('SELECT value FROM properties WHERE key = ?'),
    setProperty: db.prepare('INSERT OR REPLACE INTO properties (key, value) VALUES (?, ?)'),
    deleteProperty: db.prepare('DELETE FROM properties WHERE key = ?'),
    lookup: db.prepare(`SELECT ${ENTRY_COLUMNS} FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?`),
    list: db.prepare(`SELECT ${ENTRY_COLUMNS} FROM catalog WHERE parent_1 = ? AND parent_2 = ?`),
    byRowid: db.prepare(`SELECT ${ENTRY_COLUMNS} FROM catalog WHERE rowid = ?`),
    maxRowid: db.prepare('SELECT MAX(rowid) AS m FROM catalog'),
    upsert: db.prepare(`INSERT OR REPLACE INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash,
        size, mode, mtime, mtimens, flags, name, symlink, uid, gid, xattr)
      VALUES (@k1, @k2, @p1, @p2, @hardlinks, @hash, @size, @mode, @mtime, @mtimens, @flags, @name, @symlink,
        @uid, @gid, @xattr)`),
    update: db.prepare(`UPDATE catalog SET hardlinks = @hardlinks, hash = @hash, size = @size, mode = @mode, mtime = @mtime,
        mtimens = @mtimens, flags = @flags, name = @name, symlink = @symlink, uid = @uid, gid = @gid, xattr = @xattr
      WHERE md5path_1 = @k1 AND md5path_2 = @k2`),
    chunks: db.prepare('SELECT offset, size, hash FROM chunks WHERE md5path_1 = ? AND md5path_2 = ? ORDER BY offset'),
    insertChunk: db.prepare('INSERT INTO chunks (md5path_1, md5path_2, offset, size, hash) VALUES (?, ?, ?, ?, ?)'),
    deleteSubtreeChunks: db.prepare(`${subtree} DELETE FROM chunks WHERE (md5path_1, md5path_2) IN (SELECT k1, k2 FROM sub)`),
    deleteSubtree: db.prepare(`${subtree} DELETE FROM catalog WHERE (md5path_1, md5path_2) IN (SELECT k1, k2 FROM sub)`),
    allNested: db.prepare('SELECT path, sha1, size FROM nested_catalogs'),
    setNested: db.prepare('INSERT OR REPLACE INTO nested_catalogs (path, sha1, size) VALUES (?, ?, ?)'),
    deleteNested: db.prepare('DELETE FROM nested_catalogs WHERE path = ?'),
    allStatistics: db.prepare('SELECT counter, value FROM statistics'),
    setStatistic: db.prepare('INSERT OR REPLACE INTO statistics (counter, value) VALUES (?, ?)'),
    selfCounters: db.prepare(`SELECT
        SUM(mode & ${T.fmt} = ${T.reg}) AS regular,
        SUM(mode & ${T.fmt} = ${T.lnk}) AS symlink,
        SUM(mode & ${T.fmt} NOT IN (${T.dir}, ${T.reg}, ${T.lnk})) AS special,
        SUM(mode & ${T.fmt} = ${T.dir}) AS dir,
        (SELECT COUNT(*) FROM nested_catalogs) AS nested,
        SUM((flags & 64) != 0) AS chunked,
        (SELECT COUNT(*) FROM chunks) AS chunks,
        COALESCE(SUM(CASE WHEN mode & ${T.fmt} = ${T.reg} THEN size END), 0) AS file_size,
        COALESCE(SUM(CASE WHEN flags & 64 THEN size END), 0) AS chunked_size,
        SUM(xattr IS NOT NULL) AS xattr,
        SUM((flags & 128) != 0) AS external,
        COALESCE(SUM(CASE WHEN flags & 128 THEN size END), 0) AS external_file_size
      FROM catalog`),
  };
}
