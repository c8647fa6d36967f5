/**
 * One prepared statement per query on a catalog database (docs/cvmfs-format.md §11). No SQL text
 * appears outside cvmfs/format. Integers are read as BigInt: path keys are signed 64-bit and the
 * `hardlinks` column packs (group << 32) | linkcount.
 *
 * Reading follows the layout a catalog was written with (§11.3a), as the stock client does: the
 * schema and schema revision are read first, the columns and tables that layout must have are
 * checked (an error names what is missing), and every SELECT names the columns that exist, with
 * the documented default for the others. Statements are prepared on first use, so a query a
 * layout cannot answer (no `chunks` table in a 1.x catalog) costs nothing until asked. Only the
 * current layout can be written.
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

/** What a catalog file holds, read before anything else. */
export interface CatalogLayout {
  /** `schema` property as a number; 1.0 when absent (legacy). */
  readonly schema: number;
  /** `schema_revision` property; 0 when absent. */
  readonly revision: number;
  readonly legacy: boolean;
  readonly columns: ReadonlySet<string>;
  readonly tables: ReadonlySet<string>;
}

const ENTRY_FIELDS = ['hardlinks', 'hash', 'size', 'mode', 'mtime', 'mtimens', 'flags', 'name', 'symlink', 'uid', 'gid', 'xattr'] as const;
/** Flags a legacy (1.x) catalog may carry that mean the same today; the rest is masked off. */
const LEGACY_FLAGS = 1 | 2 | 4 | 8 | 32;

/** Columns each layout must have (§11.3a). */
function requiredColumns(l: { schema: number; revision: number; legacy: boolean }): string[] {
  const base = ['md5path_1', 'md5path_2', 'parent_1', 'parent_2', 'hash', 'size', 'mode', 'mtime', 'flags', 'name', 'symlink'];
  if (l.legacy) return base;
  return [...base, 'hardlinks', 'uid', 'gid', ...(l.revision >= 2 ? ['xattr'] : []), ...(l.revision >= 7 ? ['mtimens'] : [])];
}

function layoutName(l: { schema: number; revision: number; legacy: boolean }): string {
  return l.legacy ? `legacy schema ${l.schema}` : `schema ${l.schema} revision ${l.revision}`;
}

function entryColumns(l: CatalogLayout): string {
  return ['rowid', ...ENTRY_FIELDS.map((c) => (l.columns.has(c) ? c : `NULL AS ${c}`))].join(', ');
}

function toEntry(r: Row, legacy: boolean): StoredEntry {
  const hl = r.hardlinks ?? 1n;
  const flags = Number(r.flags);
  return {
    rowid: Number(r.rowid),
    name: r.name ?? '',
    mode: Number(r.mode),
    size: r.size ?? 0n,
    mtime: Number(r.mtime ?? 0n),
    mtimens: r.mtimens === null ? null : Number(r.mtimens),
    uid: Number(r.uid ?? 0n),
    gid: Number(r.gid ?? 0n),
    flags: legacy ? flags & LEGACY_FLAGS : flags,
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
  readonly layout: CatalogLayout;
  private readonly st: Statements;

  private constructor(db: Database.Database, layout: CatalogLayout, private readonly file: string) {
    this.db = db;
    db.defaultSafeIntegers(true);
    this.layout = layout;
    this.st = statements(db, layout);
  }

  /** Creates a new, empty catalog file with the full schema and properties. */
  static create(file: string, props: { rootPrefix: string | null; revision: number; lastModified: number }): CatalogDatabase {
    const db = new Database(file);
    db.pragma('journal_mode = DELETE');
    db.exec(CATALOG_DDL.join(';\n'));
    const c = new CatalogDatabase(db, { ...readLayout(db, file), schema: Number(CATALOG_SCHEMA), revision: CATALOG_SCHEMA_REVISION, legacy: false }, file);
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

  /**
   * Opens a catalog of any layout the stock client reads (legacy 1.x, 2.4, 2.5 revisions 0–7),
   * or refuses it naming the schema found or the column missing. Writing needs the current layout.
   */
  static open(file: string, opts: { readonly?: boolean } = {}): CatalogDatabase {
    const readonly = opts.readonly ?? false;
    let db: Database.Database;
    try {
      db = new Database(file, { readonly, fileMustExist: true });
      db.pragma('temp_store = 2');
    } catch (err) {
      throw new CvmfsError('CVMFS_BAD_CATALOG', `cannot open catalog database ${file}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const layout = readLayout(db, file);
      const name = layoutName(layout);
      if (!layout.legacy && ![2.4, 2.5].some((v) => Math.abs(layout.schema - v) < 5e-4)) { // exactly 2.4 or 2.5, as the stock client's epsilon compare
        throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${file} has schema ${layout.schema}; readable are legacy 1.x, 2.4 and 2.5`);
      }
      const missing = requiredColumns(layout).filter((c) => !layout.columns.has(c));
      if (missing.length) throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${file} (${name}) lacks the column${missing.length > 1 ? 's' : ''} ${missing.join(', ')} of its layout`);
      if (!readonly && (layout.legacy || layout.revision !== CATALOG_SCHEMA_REVISION || layout.schema !== Number(CATALOG_SCHEMA))) {
        throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${file} (${name}) can be read but not written: only schema ${CATALOG_SCHEMA} revision ${CATALOG_SCHEMA_REVISION} is written`);
      }
      return new CatalogDatabase(db, layout, file);
    } catch (err) {
      db.close();
      if (err instanceof CvmfsError) throw err;
      throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${file} is not a CernVM-FS catalog: ${(err as Error).message}`, { cause: err });
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
    return r && toEntry(r, this.layout.legacy);
  }

  /** Children of the directory at `path` (rows whose parent key is `path`'s key). */
  list(path: string): StoredEntry[] {
    const [k1, k2] = pathKey(path);
    return (this.st.list.all(k1, k2) as Row[]).map((r) => toEntry(r, this.layout.legacy));
  }

  byRowid(rowid: number): StoredEntry | undefined {
    const r = this.st.byRowid.get(BigInt(rowid)) as Row | undefined;
    return r && toEntry(r, this.layout.legacy);
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
    if (!this.layout.tables.has('chunks')) return [];
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

  /** A `size` of 0 (or a layout without the column) means the size is unknown (§11.3a). */
  nestedCatalogs(): NestedCatalogRef[] {
    if (!this.layout.tables.has('nested_catalogs')) return [];
    return (this.st.allNested.all() as { path: string; sha1: string; size: bigint | null }[])
      .map((n) => ({ path: n.path, hash: n.sha1, size: n.size ?? 0n }));
  }
  nestedCatalogsWithin(path: string): NestedCatalogRef[] {
    return this.nestedCatalogs().filter((n) => n.path === path || n.path.startsWith(path + '/'));
  }
  setNestedCatalog(ref: NestedCatalogRef): void { this.st.setNested.run(ref.path, ref.hash, ref.size); }

  /** Statistics counters: mandatory from schema revision 5; below it a missing one reads as 0. */
  counters(scope: 'self' | 'subtree'): Counters {
    const out = zeroCounters();
    const rows = this.layout.tables.has('statistics') ? this.st.allStatistics.all() as { counter: string; value: bigint | null }[] : [];
    const byName = new Map(rows.map((r) => [r.counter, r.value ?? 0n]));
    const mandatory = !this.layout.legacy && this.layout.revision >= 5;
    for (const f of COUNTER_FIELDS) {
      const v = byName.get(`${scope}_${f}`);
      if (v === undefined && mandatory) {
        throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${this.file} (${layoutName(this.layout)}) lacks the statistics counter ${scope}_${f}`);
      }
      out[f] = v ?? 0n;
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

/** The schema, revision, columns and tables of an open catalog file. */
function readLayout(db: Database.Database, file = 'catalog'): CatalogLayout {
  const tables = new Set((db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((r) => r.name));
  for (const t of ['properties', 'catalog']) {
    if (!tables.has(t)) throw new CvmfsError('CVMFS_BAD_CATALOG', `${file} is not a CernVM-FS catalog: it has no ${t} table`);
  }
  const prop = (k: string) => (db.prepare('SELECT value FROM properties WHERE key = ?').get(k) as { value: unknown } | undefined)?.value;
  const schemaText = prop('schema');
  const schema = schemaText === undefined || schemaText === null ? 1.0 : Number(String(schemaText));
  const revText = prop('schema_revision');
  const revision = revText === undefined || revText === null ? 0 : Number(String(revText));
  if (!Number.isFinite(schema) || !Number.isInteger(revision) || revision < 0) {
    throw new CvmfsError('CVMFS_BAD_CATALOG', `${file} has an unreadable schema "${String(schemaText)}" or revision "${String(revText)}"`);
  }
  const columns = new Set((db.prepare('PRAGMA table_info(catalog)').all() as { name: string }[]).map((r) => r.name));
  return { schema, revision, legacy: schema < 2.0 - 1e-6, columns, tables };
}

type Statements = ReturnType<typeof statements>;

/** Every statement of a layout, each prepared when first used (the getter replaces itself). */
function statements(db: Database.Database, layout: CatalogLayout) {
  const sql = sqlOf(layout);
  type Key = keyof typeof sql;
  const out = {} as Record<Key, Database.Statement>;
  for (const key of Object.keys(sql) as Key[]) {
    Object.defineProperty(out, key, {
      configurable: true,
      get: () => { const st = db.prepare(sql[key]); Object.defineProperty(out, key, { value: st }); return st; },
    });
  }
  return out;
}

function sqlOf(layout: CatalogLayout) {
  const ENTRY_COLUMNS = entryColumns(layout);
  const nestedSize = !layout.tables.has('nested_catalogs') || layout.legacy || layout.revision < 1 ? 'NULL AS size' : 'size';
  const subtree = `WITH RECURSIVE sub(k1, k2) AS (SELECT ?, ? UNION ALL
      SELECT c.md5path_1, c.md5path_2 FROM catalog c JOIN sub ON c.parent_1 = sub.k1 AND c.parent_2 = sub.k2)`;
  const T = { dir: 0o040000, reg: 0o100000, lnk: 0o120000, fmt: 0o170000 };
  return {
    getProperty: 'SELECT value FROM properties WHERE key = ?',
    setProperty: 'INSERT OR REPLACE INTO properties (key, value) VALUES (?, ?)',
    deleteProperty: 'DELETE FROM properties WHERE key = ?',
    lookup: `SELECT ${ENTRY_COLUMNS} FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?`,
    list: `SELECT ${ENTRY_COLUMNS} FROM catalog WHERE parent_1 = ? AND parent_2 = ?`,
    byRowid: `SELECT ${ENTRY_COLUMNS} FROM catalog WHERE rowid = ?`,
    maxRowid: 'SELECT MAX(rowid) AS m FROM catalog',
    upsert: `INSERT OR REPLACE INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash,
        size, mode, mtime, mtimens, flags, name, symlink, uid, gid, xattr)
      VALUES (@k1, @k2, @p1, @p2, @hardlinks, @hash, @size, @mode, @mtime, @mtimens, @flags, @name, @symlink,
        @uid, @gid, @xattr)`,
    update: `UPDATE catalog SET hardlinks = @hardlinks, hash = @hash, size = @size, mode = @mode, mtime = @mtime,
        mtimens = @mtimens, flags = @flags, name = @name, symlink = @symlink, uid = @uid, gid = @gid, xattr = @xattr
      WHERE md5path_1 = @k1 AND md5path_2 = @k2`,
    chunks: 'SELECT offset, size, hash FROM chunks WHERE md5path_1 = ? AND md5path_2 = ? ORDER BY offset',
    insertChunk: 'INSERT INTO chunks (md5path_1, md5path_2, offset, size, hash) VALUES (?, ?, ?, ?, ?)',
    deleteSubtreeChunks: `${subtree} DELETE FROM chunks WHERE (md5path_1, md5path_2) IN (SELECT k1, k2 FROM sub)`,
    deleteSubtree: `${subtree} DELETE FROM catalog WHERE (md5path_1, md5path_2) IN (SELECT k1, k2 FROM sub)`,
    allNested: `SELECT path, sha1, ${nestedSize} FROM nested_catalogs`,
    setNested: 'INSERT OR REPLACE INTO nested_catalogs (path, sha1, size) VALUES (?, ?, ?)',
    deleteNested: 'DELETE FROM nested_catalogs WHERE path = ?',
    allStatistics: 'SELECT counter, value FROM statistics',
    setStatistic: 'INSERT OR REPLACE INTO statistics (counter, value) VALUES (?, ?)',
    selfCounters: `SELECT
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
      FROM catalog`,
  };
}
