/**
 * A writer transaction: any number of changes at any paths, published as ONE new signed revision
 * (docs/cvmfs-format.md §15.3–§15.6). Used by `ingest()` (one operation) and by the converter and
 * the garbage collector (many).
 *
 * Model: the catalogs the transaction reads are copied into the scratch directory as they are
 * first needed (from the root down, following `nested_catalogs`), and the changes are made to
 * those copies. Nothing in storage changes but content-addressed objects until the commit, which
 * rewrites each changed catalog once, bottom-up (children before parents, the root last), then
 * stores the certificate, flushes, and writes the manifest last. Catalogs the transaction did not
 * change are reused by hash.
 *
 * Counters, as the single-path graft did before and as cvmfs_server does: every rewritten catalog recounts
 * its own rows (`self_*`); `subtree_*` starts from the value the catalog had and moves, for each
 * nested-catalog reference that changed (added, removed or rewritten), by the difference between
 * the child's totals (self + subtree) before and after. Untouched children are not loaded.
 *
 * Revisions: a rewritten catalog gets `revision` = the revision of the catalog that held its path
 * in the base revision + 1 (1 when there was none), `previous_revision` = that catalog's hash, and
 * `last_modified` = commit time; the root gets the manifest's revision + 1.
 *
 * Calls on one Transaction must be sequential (await each before the next): a call made while
 * another is running is refused with CVMFS_BAD_ARGUMENT, and calls after the transaction ended
 * with CVMFS_CLOSED. A change that fails part-way through its edit leaves the transaction unusable
 * (every later call and the commit fail with CVMFS_CLOSED); a change refused before it edited
 * anything (bad path, conflict, bad tar) leaves the transaction as it was.
 *
 * Known limit: `previous_revision` of a catalog re-created at a path is known only when the base
 * catalog at that path was seen by the transaction (staged, or a direct reference removed by it);
 * a catalog re-created where a grand-child of a removed catalog was starts without one.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { CvmfsError } from '../errors.js';
import {
  addCounters, asMountpointFlags, catalogFlags, DEFAULT_TTL_SECONDS, DIR_SIZE, isCompressedFlags, S_IFDIR, S_IFMT, S_IFREG,
  zeroCounters, type Counters,
} from '../format/catalog-schema.js';
import { CatalogDatabase, type CatalogEntry, type Chunk } from '../format/catalog-statements.js';
import { algoOfFlags, digestOf, textualHash, type HashAlgo } from '../format/hash.js';
import { decodeObject, encodeObject, objectPath } from '../format/object.js';
import { baseNameOf, isPathWithin, parentPathOf } from '../format/path-key.js';
import { ZlibPool } from '../zlib-pool.js';
import { buildLayerCatalog, CATALOG_MARKER } from './catalog-build.js';
import { Chunker, CHUNKING_THRESHOLD_BYTES } from './chunker.js';
import { loadSigningKeys } from './keys.js';
import { readLayer, type LayerReadStats } from './layer-reader.js';
import { ObjectSink, type SinkStats } from './object-sink.js';
import { publishManifest } from './publish.js';
import { loadState, readObject } from './repository-state.js';
import {
  checkCertificateListed, checkKeysNotServed, normalizeRepoPath, systemClock, underLock, withScratch, type Clock,
} from './session.js';
import type { RepositoryStorage } from './storage.js';

/** Largest file `readFile` returns and `writeFile` takes (both hold it whole in memory). */
export const TRANSACTION_FILE_MAX_BYTES = 64 * 1024 * 1024;

export interface TransactionOptions {
  readonly storage: RepositoryStorage;
  readonly keysDir: string;
  readonly clock?: Clock;
  /** Encoder threads for `ingest` (default: available parallelism). */
  readonly threads?: number;
  /** Shown as the lock holder, e.g. "docker2cvmfs convert". */
  readonly what: string;
}

export interface FileMeta {
  /** Permission bits (0 … 0o7777), default 0o644. */
  readonly mode?: number;
  /** Default 0. */
  readonly uid?: number;
  /** Default 0. */
  readonly gid?: number;
  /** Default: now. */
  readonly mtime?: Date;
}

export interface TransactionIngestResult {
  /** Hash of the new nested catalog as ingested. Should the same transaction change that catalog
   *  later (write into it, nest a catalog below it), the published catalog is a newer one. */
  readonly catalogHash: string;
  readonly layer: LayerReadStats;
  /** Objects this ingest stored (content, chunks, the catalog). */
  readonly objects: SinkStats;
  /** self counters of the new catalog. */
  readonly counters: Counters;
}

export interface IngestOptions {
  /** Adds `.cvmfscatalog` to the new catalog root (default true). */
  readonly catalogMarker?: boolean;
  /**
   * A hardlink whose target is not an earlier entry of the tar (a layer linking into a lower
   * one): the content to store under its name, found with `read` (readFile of this transaction's
   * state, usable from inside the ingest), or undefined to leave the entry out. Without it such a
   * link fails the ingest with CVMFS_TAR_HARDLINK_MISSING.
   */
  readonly missingHardlink?: (name: string, target: string, read: (path: string) => Promise<Buffer | undefined>) => Promise<Buffer | undefined>;
}

export interface Transaction {
  readonly fqrn: string;
  /** Revision the transaction started from. */
  readonly baseRevision: number;
  /** True once any change was made. */
  readonly changed: boolean;
  /** The entry at `path` as this transaction has changed the tree so far (undefined if absent).
   *  Follows nested catalogs; a nested catalog's root is given as the child's root entry. */
  lookup(path: string): Promise<CatalogEntry | undefined>;
  /** Names directly inside directory `path`, sorted by their UTF-8 bytes; undefined if it is not a directory. */
  list(path: string): Promise<string[] | undefined>;
  /** Whole content of a regular file (chunked or not); undefined if absent; CVMFS_NOT_A_FILE if not
   *  a regular file; CVMFS_BAD_ARGUMENT above TRANSACTION_FILE_MAX_BYTES. */
  readFile(path: string): Promise<Buffer | undefined>;
  /** The tar stream becomes a new nested catalog at `path`, replacing what was there. */
  ingest(path: string, input: Readable, opts?: IngestOptions): Promise<TransactionIngestResult>;
  /** An empty nested catalog (with .cvmfscatalog) at `path` when nothing is there; nothing when
   *  `path` already is a nested catalog's root; CVMFS_PATH_CONFLICT if something else is there.
   *  Missing parents are created 0:0 0755. */
  ensureCatalog(path: string): Promise<void>;
  /** A regular file at `path` (replacing a non-directory there; CVMFS_PATH_CONFLICT on a
   *  directory), in whichever catalog holds that path; missing parents created 0:0 0755; default
   *  0:0 0644, mtime now. Chunked above the chunking threshold, as the layer reader does;
   *  CVMFS_BAD_ARGUMENT above TRANSACTION_FILE_MAX_BYTES. */
  writeFile(path: string, bytes: Buffer, meta?: FileMeta): Promise<void>;
  /** Removes `path` and everything below it, nested catalogs included; false if absent. */
  remove(path: string): Promise<boolean>;
}

export interface TransactionResult<T> {
  readonly value: T;
  readonly published: boolean;
  /** The new revision, or the base revision when nothing was published. */
  readonly revision: number;
  readonly rootHash: string;
  /** Every object the transaction stored (content, catalogs, certificate). */
  readonly objects: SinkStats;
}

// ---------------------------------------------------------------------------------------------

interface Origin { readonly hash: string; readonly revision: number }
interface BaseInfo { readonly revision: number; readonly totals: Counters }
/** A catalog in its final, encoded form. */
interface Encoded { readonly hash: string; readonly size: bigint; readonly rootEntry: CatalogEntry; readonly totals: Counters }

/**
 * A catalog copied into the scratch directory. `clean`: as in storage (only read); `dirty`: changed,
 * rewritten at commit; `sealed`: built whole by this transaction and already encoded and stored
 * (an ingested layer); a change to it makes it dirty.
 */
interface Staged {
  readonly mountPath: string;
  /** Mount path of the catalog that references this one; null for the root catalog. */
  readonly parent: string | null;
  readonly file: string;
  db: CatalogDatabase | undefined;
  writable: boolean;
  state: 'clean' | 'dirty' | 'sealed';
  /** What held this path in the base revision, if known. */
  readonly origin: Origin | null;
  /** nested_catalogs and subtree counters as this catalog was when staged (empty for new ones). */
  readonly origRefs: ReadonlyMap<string, string>;
  readonly origSubtree: Counters;
  sealed: Encoded | undefined;
}

const isDir = (e: CatalogEntry): boolean => (e.mode & S_IFMT) === S_IFDIR;
const isRegular = (e: CatalogEntry): boolean => (e.mode & S_IFMT) === S_IFREG;

function totalsOf(db: CatalogDatabase): Counters {
  return addCounters(db.counters('self'), db.counters('subtree'));
}

function byUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function depthOf(mountPath: string): number {
  return mountPath === '' ? 0 : mountPath.split('/').length - 1;
}

function dirRow(name: string, nowSeconds: number, flags: number): CatalogEntry {
  return { name, mode: S_IFDIR | 0o755, size: DIR_SIZE, mtime: nowSeconds, mtimens: null, uid: 0, gid: 0,
    flags, linkcount: 2, hardlinkGroup: 0, hash: null, symlink: '', xattr: null };
}

function checkOwner(what: string, v: number | undefined, p: string): number {
  if (v === undefined) return 0;
  if (!Number.isInteger(v) || v < 0 || v > 0xfffffffe) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `writeFile ${p}: ${what} ${v} is not in 0 … 4294967294`);
  return v;
}

class TransactionImpl implements Transaction {
  readonly fqrn: string;
  readonly baseRevision: number;
  private changedFlag = false;
  private busy: string | null = null;
  private closedWhy: string | null = null;
  private brokenBy: unknown = undefined;
  private readonly staged = new Map<string, Staged>();
  /** Hash each path held in the base revision, for the paths seen (first seen wins). */
  private readonly baseHashAt = new Map<string, string>();
  private readonly baseInfo = new Map<string, BaseInfo>();
  private fileSeq = 0;
  private pool: ZlibPool | undefined;
  private inFlight: Promise<unknown> | undefined;

  constructor(
    private readonly storage: RepositoryStorage,
    private readonly sink: ObjectSink,
    private readonly algo: HashAlgo,
    private readonly scratch: string,
    private readonly clock: Clock,
    private readonly threads: number | undefined,
    fqrn: string, baseRevision: number, private readonly baseRoot: string,
  ) {
    this.fqrn = fqrn;
    this.baseRevision = baseRevision;
  }

  get changed(): boolean { return this.changedFlag; }

  // --- bookkeeping -----------------------------------------------------------------------------

  /** Runs one call, refusing overlapping calls and calls after the end. */
  private run<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.closedWhy !== null) return Promise.reject(new CvmfsError('CVMFS_CLOSED', `${what}: ${this.closedWhy}`));
    if (this.brokenBy !== undefined) {
      return Promise.reject(new CvmfsError('CVMFS_CLOSED', `${what}: the transaction is unusable after a change failed part-way`, { cause: this.brokenBy }));
    }
    if (this.busy !== null) {
      return Promise.reject(new CvmfsError('CVMFS_BAD_ARGUMENT', `${what}: calls on a transaction must be sequential, and ${this.busy} is still running`));
    }
    this.busy = what;
    const p = (async () => { try { return await fn(); } finally { this.busy = null; } })();
    this.inFlight = p.catch(() => {});
    return p;
  }

  /** Makes the edits of one change; a failure inside leaves the transaction unusable. */
  private edit(fn: () => void): void {
    try { fn(); } catch (err) { this.brokenBy = err; throw err; }
    this.changedFlag = true;
  }

  private nowSeconds(): number { return Math.floor(this.clock.now().getTime() / 1000); }

  private nextFile(): string { return path.join(this.scratch, `catalog-${++this.fileSeq}.sqlite`); }

  private dbOf(s: Staged): CatalogDatabase {
    s.db ??= CatalogDatabase.open(s.file, { readonly: !s.writable });
    return s.db;
  }

  /** Opens `s` for writing (refusing layouts that cannot be written) without marking it changed. */
  private writableDb(s: Staged): CatalogDatabase {
    if (!s.writable) {
      s.db?.close();
      s.db = undefined;
      s.writable = true;
    }
    return this.dbOf(s);
  }

  private markDirty(s: Staged): void {
    if (s.state !== 'dirty') { s.state = 'dirty'; s.sealed = undefined; }
  }

  /** Copies a catalog of the base revision into the scratch directory. */
  private async stageBase(hash: string, mountPath: string, parent: string | null): Promise<Staged> {
    const bytes = await readObject(this.storage, hash, 'C');
    const file = this.nextFile();
    await fs.writeFile(file, bytes);
    const db = CatalogDatabase.open(file, { readonly: true });
    const revision = Number(db.property('revision') ?? '0');
    this.baseInfo.set(hash, { revision, totals: totalsOf(db) });
    if (!this.baseHashAt.has(mountPath)) this.baseHashAt.set(mountPath, hash);
    const s: Staged = {
      mountPath, parent, file, db, writable: false, state: 'clean', origin: { hash, revision },
      origRefs: new Map(db.nestedCatalogs().map((r) => [r.path, r.hash])), origSubtree: db.counters('subtree'), sealed: undefined,
    };
    this.staged.set(mountPath, s);
    return s;
  }

  /** Revision and totals of a base catalog, loaded once. */
  private async baseInfoOf(hash: string): Promise<BaseInfo> {
    const known = this.baseInfo.get(hash);
    if (known) return known;
    const bytes = await readObject(this.storage, hash, 'C');
    const file = this.nextFile();
    await fs.writeFile(file, bytes);
    const db = CatalogDatabase.open(file, { readonly: true });
    try {
      const info = { revision: Number(db.property('revision') ?? '0'), totals: totalsOf(db) };
      this.baseInfo.set(hash, info);
      return info;
    } finally { db.close(); await fs.rm(file, { force: true }); }
  }

  /** What held `mountPath` in the base revision, when known. */
  private async originOf(mountPath: string): Promise<Origin | null> {
    const hash = this.baseHashAt.get(mountPath);
    if (hash === undefined) return null;
    return { hash, revision: (await this.baseInfoOf(hash)).revision };
  }

  async root(): Promise<Staged> {
    return this.staged.get('') ?? this.stageBase(this.baseRoot, '', null);
  }

  /**
   * The catalog holding the row of `p`: the deepest one whose mount path is a prefix of `p`
   * (for a nested catalog's root, the child). With `aboveMount`, a nested catalog mounted exactly
   * at `p` is not entered: the catalog holding its mountpoint row.
   */
  private async catalogFor(p: string, aboveMount = false): Promise<Staged> {
    let cur = await this.root();
    for (;;) {
      const ref = this.dbOf(cur).nestedCatalogs().find((r) => isPathWithin(p, r.path) && !(aboveMount && r.path === p));
      if (ref === undefined) return cur;
      cur = this.staged.get(ref.path) ?? await this.stageBase(ref.hash, ref.path, cur.mountPath);
    }
  }

  /** Every path between the catalog root of `c` and `p` (exclusive) must be a directory or missing. */
  private checkAncestors(c: Staged, p: string, what: string): void {
    const db = this.dbOf(c);
    for (let a = parentPathOf(p); a.length > c.mountPath.length; a = parentPathOf(a)) {
      const e = db.lookup(a);
      if (e !== undefined && !isDir(e)) throw new CvmfsError('CVMFS_PATH_CONFLICT', `cannot ${what} ${p}: ${a} is not a directory in the repository`);
    }
  }

  /** Creates the missing parents of `p` in `c` (0:0 0755, now), fixing link counts. */
  private makeParents(db: CatalogDatabase, c: Staged, p: string, nowSeconds: number): void {
    const missing: string[] = [];
    for (let a = parentPathOf(p); a.length > c.mountPath.length && !db.lookup(a); a = parentPathOf(a)) missing.unshift(a);
    for (const a of missing) {
      db.upsert(a, dirRow(baseNameOf(a), nowSeconds, catalogFlags({ kind: 'dir' })));
      this.bumpLinkcount(db, parentPathOf(a), 1);
    }
  }

  private bumpLinkcount(db: CatalogDatabase, p: string, by: number): void {
    const e = db.lookup(p);
    if (e) db.update(p, { ...e, linkcount: Math.max(2, e.linkcount + by) });
  }

  /** Every row below directory `dir` in this catalog (not entering nested catalogs), depth first. */
  private *rowsBelow(db: CatalogDatabase, dir: string): Generator<[string, CatalogEntry]> {
    const stack = [dir];
    while (stack.length) {
      const d = stack.pop()!;
      for (const e of db.list(d)) {
        const p = `${d}/${e.name}`;
        yield [p, e];
        if (isDir(e)) stack.push(p);
      }
    }
  }

  /** Hardlink groups with members at or below `p` in `db`, and how many members each loses. */
  private hardlinksUnder(db: CatalogDatabase, p: string, e: CatalogEntry): Map<number, number> {
    const lost = new Map<number, number>();
    const count = (x: CatalogEntry) => { if (x.hardlinkGroup !== 0) lost.set(x.hardlinkGroup, (lost.get(x.hardlinkGroup) ?? 0) + 1); };
    if (!isDir(e)) count(e);
    else for (const [, x] of this.rowsBelow(db, p)) count(x);
    return lost;
  }

  /** After members left their hardlink groups: the members left get the new link count. */
  private fixHardlinks(db: CatalogDatabase, c: Staged, lost: Map<number, number>): void {
    if (lost.size === 0) return;
    const rootEntry = db.lookup(c.mountPath);
    const members = new Map<number, string[]>();
    const rows: Iterable<[string, CatalogEntry]> = rootEntry ? this.rowsBelow(db, c.mountPath) : [];
    for (const [p, x] of rows) if (lost.has(x.hardlinkGroup)) { const m = members.get(x.hardlinkGroup) ?? []; m.push(p); members.set(x.hardlinkGroup, m); }
    for (const [, paths] of members) {
      for (const p of paths) {
        const x = db.lookup(p)!;
        db.update(p, { ...x, linkcount: paths.length, hardlinkGroup: paths.length > 1 ? x.hardlinkGroup : 0 });
      }
    }
  }

  /** Forgets staged catalogs at or below `p` (removed with it). */
  private dropStagedWithin(p: string): void {
    for (const [m, s] of this.staged) {
      if (m !== '' && isPathWithin(m, p)) { s.db?.close(); this.staged.delete(m); void fs.rm(s.file, { force: true }).catch(() => {}); }
    }
  }

  /**
   * Removes the row at `p` (entry `e`) and everything below it from `c`: rows, chunks, nested
   * references (their catalogs forgotten), the parent's link count, hardlink counts. Synchronous:
   * call inside `edit`.
   */
  private removeRows(db: CatalogDatabase, c: Staged, p: string, e: CatalogEntry): void {
    const lost = this.hardlinksUnder(db, p, e);
    for (const r of db.nestedCatalogsWithin(p)) {
      if (!this.staged.has(r.path) && !this.baseHashAt.has(r.path)) this.baseHashAt.set(r.path, r.hash);
    }
    db.removeSubtree(p);
    this.dropStagedWithin(p);
    if (isDir(e)) this.bumpLinkcount(db, parentPathOf(p), -1);
    this.fixHardlinks(db, c, lost);
  }

  private async storeContent(bytes: Buffer): Promise<{ hash: Buffer | null; chunks: Chunk[] }> {
    const algo = this.algo;
    if (bytes.length > CHUNKING_THRESHOLD_BYTES) {
      const ends = new Chunker().cuts(bytes);
      if (ends[ends.length - 1] !== bytes.length) ends.push(bytes.length);
      if (ends.length > 1) {
        const chunks: Chunk[] = [];
        const puts: Promise<void>[] = [];
        let off = 0;
        for (const end of ends) {
          const enc = encodeObject(bytes.subarray(off, end), 'P', algo);
          puts.push(this.sink.put(enc.path, enc.stored));
          chunks.push({ offset: BigInt(off), size: BigInt(end - off), hash: enc.digest });
          off = end;
        }
        await Promise.all(puts);
        return { hash: null, chunks };
      }
    }
    const enc = encodeObject(bytes, '', algo);
    await this.sink.put(enc.path, enc.stored);
    return { hash: enc.digest, chunks: [] };
  }

  private async emptyObject(): Promise<Buffer> {
    const empty = encodeObject(new Uint8Array(0), '', this.algo);
    await this.sink.put(empty.path, empty.stored);
    return empty.digest;
  }

  // --- reading ---------------------------------------------------------------------------------

  lookup(p: string): Promise<CatalogEntry | undefined> {
    return this.run('lookup', async () => {
      const n = normalizeRepoPath(p);
      return this.dbOf(await this.catalogFor(n)).lookup(n);
    });
  }

  list(p: string): Promise<string[] | undefined> {
    return this.run('list', async () => {
      const n = normalizeRepoPath(p);
      const db = this.dbOf(await this.catalogFor(n));
      const e = db.lookup(n);
      if (e === undefined || !isDir(e)) return undefined;
      return db.list(n).map((x) => x.name).sort(byUtf8);
    });
  }

  readFile(p: string): Promise<Buffer | undefined> {
    return this.run('readFile', () => this.readFileNow(normalizeRepoPath(p)));
  }

  /** readFile without the sequential-call guard: for the hardlink resolver, called inside an ingest. */
  private async readFileNow(n: string): Promise<Buffer | undefined> {
    {
      const db = this.dbOf(await this.catalogFor(n));
      const e = db.lookup(n);
      if (e === undefined) return undefined;
      if (!isRegular(e)) throw new CvmfsError('CVMFS_NOT_A_FILE', `${n || '/'} is not a regular file`);
      if (e.size > BigInt(TRANSACTION_FILE_MAX_BYTES)) {
        throw new CvmfsError('CVMFS_BAD_ARGUMENT', `${n} is ${e.size} bytes; readFile returns at most ${TRANSACTION_FILE_MAX_BYTES}`);
      }
      await this.sink.drain(); // objects of this transaction may still be on their way
      const algo = algoOfFlags(e.flags);
      const compressed = isCompressedFlags(e.flags);
      const get = async (digest: Buffer, suffix: '' | 'P'): Promise<Buffer> => {
        const textual = textualHash(algo, digest);
        if (compressed) return readObject(this.storage, textual, suffix);
        const stored = await this.storage.get(objectPath(textual, suffix));
        if (stored === undefined) throw new CvmfsError('CVMFS_OBJECT_NOT_FOUND', `object ${objectPath(textual, suffix)} is missing from ${this.storage.location}`);
        if (textualHash(algo, digestOf(algo, stored)) !== textual) throw new CvmfsError('CVMFS_HASH_MISMATCH', `object ${objectPath(textual, suffix)} is corrupt`);
        return decodeObject(stored, false);
      };
      let content: Buffer;
      if (e.hash !== null) content = await get(e.hash, '');
      else {
        const parts: Buffer[] = [];
        for (const ch of db.chunks(n)) parts.push(await get(ch.hash, 'P'));
        content = Buffer.concat(parts);
      }
      if (BigInt(content.length) !== e.size) {
        throw new CvmfsError('CVMFS_BAD_CATALOG', `${n}: its content is ${content.length} bytes, the catalog says ${e.size}`);
      }
      return content;
    }
  }

  // --- changing --------------------------------------------------------------------------------

  writeFile(p: string, bytes: Buffer, meta: FileMeta = {}): Promise<void> {
    return this.run('writeFile', async () => {
      const n = normalizeRepoPath(p);
      if (n === '') throw new CvmfsError('CVMFS_PATH_CONFLICT', 'cannot write a file at the repository root');
      if (bytes.length > TRANSACTION_FILE_MAX_BYTES) {
        throw new CvmfsError('CVMFS_BAD_ARGUMENT', `writeFile ${n}: ${bytes.length} bytes; at most ${TRANSACTION_FILE_MAX_BYTES}`);
      }
      const mode = meta.mode ?? 0o644;
      if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
        throw new CvmfsError('CVMFS_BAD_ARGUMENT', `writeFile ${n}: mode ${mode} is not a set of permission bits (0 … 0o7777)`);
      }
      const uid = checkOwner('uid', meta.uid, n);
      const gid = checkOwner('gid', meta.gid, n);
      const ms = meta.mtime === undefined ? undefined : meta.mtime.getTime();
      if (ms !== undefined && !Number.isFinite(ms)) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `writeFile ${n}: mtime is not a valid date`);
      const c = await this.catalogFor(n);
      const db = this.writableDb(c);
      const old = db.lookup(n);
      if (old !== undefined && isDir(old)) throw new CvmfsError('CVMFS_PATH_CONFLICT', `cannot write a file at ${n}: a directory is there`);
      this.checkAncestors(c, n, 'write a file at');
      const { hash, chunks } = await this.storeContent(bytes);
      const nowSeconds = this.nowSeconds();
      const mtime = ms === undefined ? nowSeconds : Math.floor(ms / 1000);
      const ns = ms === undefined ? 0 : (ms - mtime * 1000) * 1_000_000;
      this.edit(() => db.transaction(() => {
        if (old !== undefined) this.removeRows(db, c, n, old);
        this.makeParents(db, c, n, nowSeconds);
        db.upsert(n, {
          name: baseNameOf(n), mode: S_IFREG | mode, size: BigInt(bytes.length), mtime, mtimens: ns === 0 ? null : ns, uid, gid,
          flags: catalogFlags({ kind: 'file', chunked: chunks.length > 0, hasHash: hash !== null, algo: this.algo }),
          linkcount: 1, hardlinkGroup: 0, hash, symlink: '', xattr: null,
        });
        for (const ch of chunks) db.insertChunk(n, ch);
        this.markDirty(c);
      }));
    });
  }

  remove(p: string): Promise<boolean> {
    return this.run('remove', async () => {
      const n = normalizeRepoPath(p);
      if (n === '') throw new CvmfsError('CVMFS_BAD_ARGUMENT', 'cannot remove the repository root');
      const c = await this.catalogFor(n, true);
      const db = this.writableDb(c);
      const e = db.lookup(n);
      if (e === undefined) return false;
      this.edit(() => db.transaction(() => {
        this.removeRows(db, c, n, e);
        this.markDirty(c);
      }));
      return true;
    });
  }

  ensureCatalog(p: string): Promise<void> {
    return this.run('ensureCatalog', async () => {
      const n = normalizeRepoPath(p);
      if (n === '') return; // the root catalog
      const holder = await this.catalogFor(n);
      if (holder.mountPath === n) return;
      const c = holder;
      const db = this.writableDb(c);
      if (db.lookup(n) !== undefined) {
        throw new CvmfsError('CVMFS_PATH_CONFLICT', `cannot make a nested catalog at ${n}: something that is not a catalog root is there`);
      }
      this.checkAncestors(c, n, 'make a nested catalog at');
      const origin = await this.originOf(n);
      const emptyDigest = await this.emptyObject();
      const nowSeconds = this.nowSeconds();
      const file = this.nextFile();
      const child = CatalogDatabase.create(file, { rootPrefix: n, revision: (origin?.revision ?? 0) + 1, lastModified: nowSeconds });
      const rootEntry = dirRow(baseNameOf(n), nowSeconds, catalogFlags({ kind: 'dir', nestedRoot: true }));
      try {
        child.transaction(() => {
          child.upsert(n, rootEntry); // first insert: rowid 1
          child.upsert(`${n}/${CATALOG_MARKER}`, {
            name: CATALOG_MARKER, mode: S_IFREG | 0o644, size: 0n, mtime: nowSeconds, mtimens: null, uid: 0, gid: 0,
            flags: catalogFlags({ kind: 'file', hasHash: true, algo: this.algo }), linkcount: 1, hardlinkGroup: 0, hash: emptyDigest, symlink: '', xattr: null,
          });
        });
      } catch (err) { child.close(); throw err; }
      this.edit(() => {
        db.transaction(() => {
          this.makeParents(db, c, n, nowSeconds);
          db.upsert(n, { ...rootEntry, flags: asMountpointFlags(rootEntry.flags) });
          this.bumpLinkcount(db, parentPathOf(n), 1);
          db.setNestedCatalog({ path: n, hash: '', size: 0n }); // set at commit
          this.markDirty(c);
        });
        this.staged.set(n, {
          mountPath: n, parent: c.mountPath, file, db: child, writable: true, state: 'dirty', origin,
          origRefs: new Map(), origSubtree: zeroCounters(), sealed: undefined,
        });
      });
    });
  }

  ingest(p: string, input: Readable, opts: IngestOptions = {}): Promise<TransactionIngestResult> {
    return this.run('ingest', async () => {
      const n = normalizeRepoPath(p);
      if (n === '') throw new CvmfsError('CVMFS_BAD_ARGUMENT', 'ingest needs a path below the repository root, such as /layers/<digest>');
      const c = await this.catalogFor(n, true);
      const db = this.writableDb(c);
      this.checkAncestors(c, n, 'ingest at');
      // What was at `n` before this transaction: a nested catalog there now is either one of the
      // base revision (not staged) or one this transaction staged (whose origin it carries).
      const ref = db.nestedCatalogs().find((r) => r.path === n);
      if (ref !== undefined && !this.staged.has(n) && !this.baseHashAt.has(n)) this.baseHashAt.set(n, ref.hash);
      const origin = (ref !== undefined ? this.staged.get(n)?.origin : undefined) ?? await this.originOf(n);

      const before = { ...this.sink.stats };
      this.pool ??= new ZlibPool(this.threads ? { threads: this.threads } : {});
      const now = this.clock.now();
      const resolve = opts.missingHardlink;
      const missingHardlink = resolve
        ? (name: string, target: string) => resolve(name, target, (q) => this.readFileNow(normalizeRepoPath(q)))
        : undefined;
      const { tree, stats } = await readLayer(input, { mountPath: n, algo: this.algo, pool: this.pool, sink: this.sink, now, missingHardlink });
      const file = this.nextFile();
      const built = await buildLayerCatalog(file, tree.root, n, {
        algo: this.algo, now, catalogMarker: opts.catalogMarker ?? true,
        revision: (origin?.revision ?? 0) + 1, previousRevision: origin?.hash ?? null });
      const bytes = await fs.readFile(file);
      const enc = encodeObject(bytes, 'C', this.algo);
      await this.sink.put(enc.path, enc.stored);
      const catalogHash = textualHash(this.algo, enc.digest);
      const nowSeconds = Math.floor(now.getTime() / 1000);
      this.edit(() => {
        db.transaction(() => {
          const old = db.lookup(n);
          if (old !== undefined) this.removeRows(db, c, n, old);
          this.makeParents(db, c, n, nowSeconds);
          db.upsert(n, { ...built.rootEntry, flags: asMountpointFlags(built.rootEntry.flags) });
          this.bumpLinkcount(db, parentPathOf(n), 1);
          db.setNestedCatalog({ path: n, hash: catalogHash, size: BigInt(bytes.length) });
          this.markDirty(c);
        });
        this.staged.set(n, {
          mountPath: n, parent: c.mountPath, file, db: undefined, writable: false, state: 'sealed', origin,
          origRefs: new Map(), origSubtree: zeroCounters(),
          sealed: { hash: catalogHash, size: BigInt(bytes.length), rootEntry: built.rootEntry, totals: built.self },
        });
      });
      const s = this.sink.stats;
      const objects: SinkStats = { written: s.written - before.written, present: s.present - before.present, bytesWritten: s.bytesWritten - before.bytesWritten };
      return { catalogHash, layer: stats, objects, counters: built.self };
    });
  }

  // --- the end ---------------------------------------------------------------------------------

  /**
   * Ends the transaction: no call is accepted from now on. Waits for a call still running, and
   * tells what stands in the way of a commit (a call left running, a change that failed part-way).
   */
  async end(): Promise<CvmfsError | undefined> {
    this.closedWhy = 'the transaction has ended';
    const running = this.busy;
    if (running !== null) {
      await this.inFlight;
      return new CvmfsError('CVMFS_BAD_ARGUMENT', `the transaction function returned while ${running} was still running (calls must be awaited); nothing was published`);
    }
    if (this.brokenBy !== undefined) {
      return new CvmfsError('CVMFS_CLOSED', 'a change failed part-way through and the transaction function went on; nothing was published', { cause: this.brokenBy });
    }
    return undefined;
  }

  /** Rewrites every changed catalog once, children first; returns the new root catalog. */
  async commitCatalogs(rootRevision: number): Promise<{ hash: string; size: bigint }> {
    // Every ancestor of a changed catalog changes too (its reference does).
    for (const s of [...this.staged.values()]) {
      if (s.state === 'clean') continue;
      for (let q = s.parent; q !== null;) {
        const up = this.staged.get(q)!;
        if (up.state === 'dirty') break;
        this.markDirty(up);
        q = up.parent;
      }
    }
    const todo = [...this.staged.values()].filter((s) => s.state !== 'clean').sort((a, b) => depthOf(b.mountPath) - depthOf(a.mountPath));
    const done = new Map<string, Encoded>();
    const totalsByHash = new Map<string, Counters>();
    const nowSeconds = this.nowSeconds();
    for (const s of todo) {
      if (s.state === 'sealed') { done.set(s.mountPath, s.sealed!); totalsByHash.set(s.sealed!.hash, s.sealed!.totals); continue; }
      const db = this.writableDb(s);
      const children = todo.filter((x) => x.parent === s.mountPath);
      // Totals of the references that left (base catalogs: loaded if not known yet).
      const finalHash = new Map<string, string>(db.nestedCatalogs().map((r) => [r.path, r.hash]));
      for (const x of children) finalHash.set(x.mountPath, done.get(x.mountPath)!.hash);
      for (const [rp, h] of s.origRefs) if (finalHash.get(rp) !== h && !totalsByHash.has(h)) totalsByHash.set(h, (await this.baseInfoOf(h)).totals);
      for (const [rp, h] of finalHash) {
        if (s.origRefs.get(rp) === h || totalsByHash.has(h)) continue;
        totalsByHash.set(h, (await this.baseInfoOf(h)).totals); // a base catalog newly referenced here (not expected)
      }
      db.transaction(() => {
        for (const x of children) {
          const e = done.get(x.mountPath)!;
          db.setNestedCatalog({ path: x.mountPath, hash: e.hash, size: e.size });
          db.update(x.mountPath, { ...e.rootEntry, flags: asMountpointFlags(e.rootEntry.flags) });
        }
        let subtree = s.origSubtree;
        for (const [rp, h] of s.origRefs) if (finalHash.get(rp) !== h) subtree = addCounters(subtree, totalsByHash.get(h)!, -1n);
        for (const [rp, h] of finalHash) if (s.origRefs.get(rp) !== h) subtree = addCounters(subtree, totalsByHash.get(h)!);
        db.setCounters('subtree', subtree);
        db.setCounters('self', db.computeSelfCounters());
        const revision = s.parent === null ? rootRevision : (s.origin?.revision ?? 0) + 1;
        db.setProperty('revision', String(revision));
        if (s.origin) db.setProperty('previous_revision', s.origin.hash); else db.deleteProperty('previous_revision');
        db.setProperty('last_modified', String(nowSeconds));
      });
      const rootEntry = db.lookup(s.mountPath);
      if (!rootEntry) throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${s.mountPath || '/'} lacks its root entry`);
      const totals = totalsOf(db);
      db.finalize();
      db.close();
      s.db = undefined;
      const bytes = await fs.readFile(s.file);
      const enc = encodeObject(bytes, 'C', this.algo);
      await this.sink.put(enc.path, enc.stored);
      const hash = textualHash(this.algo, enc.digest);
      done.set(s.mountPath, { hash, size: BigInt(bytes.length), rootEntry, totals });
      totalsByHash.set(hash, totals);
    }
    const root = done.get('');
    if (root === undefined) throw new CvmfsError('CVMFS_INTERNAL', 'a changed transaction left the root catalog unchanged');
    return { hash: root.hash, size: root.size };
  }

  async dispose(): Promise<void> {
    for (const s of this.staged.values()) s.db?.close();
    this.staged.clear();
    await this.pool?.close();
  }
}

/**
 * Runs `fn` under the writer lock. When fn resolves and something changed: one new signed revision
 * (objects, catalogs bottom-up, certificate, manifest last). When nothing changed: no new revision
 * (published false). When fn throws: nothing is published, the previous revision stays served,
 * the lock is released, and the error propagates.
 */
export async function transaction<T>(o: TransactionOptions, fn: (tx: Transaction) => Promise<T>): Promise<TransactionResult<T>> {
  await checkKeysNotServed(o.storage, o.keysDir);
  const clock = o.clock ?? systemClock;
  return underLock(o.storage, o.what, (lock) => withScratch(async (scratch) => {
    const state = await loadState(o.storage);
    const keys = await loadSigningKeys(o.keysDir, state.manifest.fqrn);
    checkCertificateListed(state, keys, o.keysDir);
    const sink = new ObjectSink(o.storage);
    const tx = new TransactionImpl(o.storage, sink, state.algo, scratch, clock, o.threads,
      state.manifest.fqrn, state.manifest.revision, state.manifest.rootHash);
    try {
      await tx.root();
      let value: T;
      try { value = await fn(tx); } catch (err) { await tx.end(); throw err; }
      const unfit = await tx.end();
      if (unfit) throw unfit;
      if (!tx.changed) {
        return { value, published: false, revision: state.manifest.revision, rootHash: state.manifest.rootHash, objects: sink.stats };
      }
      const revision = state.manifest.revision + 1;
      const root = await tx.commitCatalogs(revision);
      const publishTime = Math.max(Math.floor(clock.now().getTime() / 1000), state.manifest.publishTime);
      await publishManifest(o.storage, lock, sink, keys, {
        fqrn: state.manifest.fqrn, algo: state.algo, rootHash: root.hash, rootSize: root.size, revision,
        ttlSeconds: state.manifest.ttlSeconds || DEFAULT_TTL_SECONDS, publishTime });
      return { value, published: true, revision, rootHash: root.hash, objects: sink.stats };
    } finally {
      await tx.dispose();
      await sink.drain().catch(() => {});
    }
  }));
}
