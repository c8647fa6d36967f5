/**
 * A mounted-in-process view of a repository: openRepository() verifies the current revision,
 * attaches its root catalog, and answers stat/readdir/readlink/xattr/read. Model:
 *   - Every operation first checks the TTL (min of the root catalog TTL and `maxTtlSeconds`);
 *     when it has run out, a manifest check starts in the background and the operation goes on
 *     with the current revision. A newer verified revision replaces the catalog tree for later
 *     operations; inode numbers continue above the old tree's range.
 *   - The signed letters of the revision in use are kept in the cache and verified again whenever
 *     they are used: at open, a cached revision newer than the servers' (by publish time) is kept
 *     (rollback protection), and when no server answers it is served (offline mode) from the
 *     cached catalogs, the check being retried after the TTL. Unsigned local state (the stock
 *     breadcrumb) never decides which revision is served.
 *   - Regular files: whole objects are fetched into the cache on open; chunked files fetch a chunk
 *     on the first read that touches it and read ahead the next ones in parallel.
 */
import { createPublicKey } from 'node:crypto';
import { readSync } from 'node:fs';
import fs from 'node:fs/promises';
import { Readable } from 'node:stream';
import { CvmfsError, isCvmfsError } from '../errors.js';
import { addCounters, DEFAULT_TTL_SECONDS, type Counters } from '../format/catalog-schema.js';
import type { Chunk } from '../format/catalog-statements.js';
import { textualHash } from '../format/hash.js';
import { decodeXattrs } from '../format/xattr.js';
import { ObjectCache } from './cache.js';
import { CatalogTree, type Dirent } from './catalog-tree.js';
import { Fetcher, parseProxyList } from './fetcher.js';
import { ObjectStore, SMALL_OBJECT_BYTES } from './object-store.js';
import { DEFAULT_PREFETCH_LIMITS, DEFAULT_SIBLING_PREFETCH, PrefetchLedger, runPrefetch, type PrefetchLimits, type PrefetchObject, type PrefetchReport, type SiblingPrefetch } from './prefetch.js';
import { checkCertificateListed, fetchTrustedRevision, verifyLetters, type Letters, type MasterKey, type TrustContext, type TrustedRevision } from './trust.js';

export type { Dirent } from './catalog-tree.js';

export interface RepositoryOptions {
  readonly fqrn: string;
  /** Base URLs; `@fqrn@` and `@org@` are substituted as in CVMFS_SERVER_URL. */
  readonly servers: readonly string[];
  /** CVMFS_HTTP_PROXY syntax; undefined or `DIRECT` for none. */
  readonly proxy?: string;
  /** Master public keys (PEM), any of which may sign the whitelist. */
  readonly publicKeys: readonly { readonly name: string; readonly pem: string }[];
  readonly cacheDir: string;
  readonly quotaBytes?: number;
  readonly maxTtlSeconds?: number;
  /** Response headers and the longest silence within a body (CVMFS_TIMEOUT); default 10 s. */
  readonly timeoutMs?: number;
  /** Transfers slower than this over `lowSpeedWindowMs` fail over (CVMFS_LOW_SPEED_LIMIT); 0 disables; default 1024. */
  readonly lowSpeedLimitBytesPerSecond?: number;
  /** Default `timeoutMs`. */
  readonly lowSpeedWindowMs?: number;
  /** Longest one attempt at one object may take; 0 disables; default 10 min. */
  readonly deadlineMs?: number;
  readonly maxRetries?: number;
  readonly backoffInitMs?: number;
  /** Variables for `$(VAR)` / `$(VAR:-default)` in symlink targets; `expandSymlinks: false` keeps targets verbatim. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly expandSymlinks?: boolean;
  readonly chunkReadAhead?: number;
  /**
   * On a cold open of a small file, fetch the small files that follow it in its directory; off by
   * default (`true` for DEFAULT_SIBLING_PREFETCH). It pays for directory scans and doubled the wire
   * bytes of a container start that reads 5 % of its image, for no gain (README, start-up results).
   */
  readonly siblingPrefetch?: SiblingPrefetch | boolean;
  /** Catalog entries (and misses) kept in memory per revision; default 200,000. */
  readonly direntCacheEntries?: number;
  readonly clock?: { now(): Date };
  readonly log?: (line: string) => void;
}

export interface RepositoryCounters {
  readonly revision: number;
  readonly rootHash: string;
  readonly offline: boolean;
  readonly bytesFetched: number;
  readonly objectsFetched: number;
  readonly bytesInflated: number;
  readonly cacheHits: number;
  readonly cacheMisses: number;
  readonly evictions: number;
  readonly evictedBytes: number;
  readonly cacheUsedBytes: number;
  readonly requests: number;
  readonly failovers: number;
  readonly retriesNoCache: number;
  readonly hashMismatches: number;
  readonly catalogsAttached: number;
  /** Objects fetched ahead of a read (prefetch lists and siblings), and their inflated bytes. */
  readonly prefetchObjects: number;
  readonly prefetchBytes: number;
  /** Prefetched objects that a read then needed. */
  readonly prefetchHits: number;
  readonly prefetchHitBytes: number;
  /** Prefetched bytes that no read has needed so far. */
  readonly prefetchWasteBytes: number;
}

/** Paths opened, in first-open order: what a container start read. */
export interface AccessRecorder {
  /** Stops recording; the paths ("/a/b"), each once. */
  stop(): string[];
}

const MAX_RECORDED_PATHS = 100_000;
/** readAt's open handles; a chunked file's holds up to OPEN_CHUNKS_PER_HANDLE descriptors. */
const CACHED_HANDLES = 128;
/** Directories whose opens and sibling prefetches are counted, per revision; forgotten beyond. */
const MAX_SIBLING_DIRS = 100_000;

export interface FileHandle {
  readonly dirent: Dirent;
  /** Reads up to `length` bytes at `position` into `buf[offset…]`; 0 at end of file. */
  read(buf: Buffer, offset: number, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

const OFFLINE_RETRY_SECONDS = 180;
/** An empty, `.` or trailing component. */
const NOT_NORMAL = /\/\/|\/\.(\/|$)|\/$/;
const OLD_TREE_GRACE_MS = 30_000;
const OPEN_CHUNKS_PER_HANDLE = 4;
const DEFAULT_CHUNK_READ_AHEAD = 4;

/**
 * Reads from a verified object in the local cache directory. Synchronous on purpose: a page-cache
 * pread of at most one FUSE request (128 KiB) costs microseconds, less than a thread-pool round
 * trip. The cache is a plain local directory, never a FUSE mount (which would deadlock).
 */
function readCached(fh: fs.FileHandle, buf: Buffer, offset: number, length: number, position: number): number {
  return readSync(fh.fd, buf, offset, length, position);
}

export function expandSymlinkVariables(target: string, env: Readonly<Record<string, string | undefined>>): string {
  return target.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)(?::-([^)]*))?\)/g, (_m, name: string, def?: string) => env[name] ?? def ?? '');
}

/** True when `a` was published after `b` (publish time, then revision). */
function publishedAfter(a: { publishTime: number; revision: number }, b: { publishTime: number; revision: number }): boolean {
  return a.publishTime > b.publishTime || (a.publishTime === b.publishTime && a.revision > b.revision);
}

function sameLetters(a: Letters, b: Letters): boolean {
  return a.manifest.equals(b.manifest) && a.whitelist.equals(b.whitelist) && a.certificate.equals(b.certificate);
}

function substituteServer(url: string, fqrn: string): string {
  return url.replace(/@fqrn@/g, fqrn).replace(/@org@/g, fqrn.split('.')[0]!);
}

export class Repository {
  private tree: CatalogTree;
  private lastCheckMs: number;
  private retryAfterMs = 0;
  private refreshing: Promise<boolean> | null = null;
  private offline: boolean;
  private closed = false;
  private ttlSeconds: number;
  private whitelistExpiry: string;
  private readonly ledger = new PrefetchLedger();
  /** readAt's handles by inode, least recently read first. */
  private readonly handleCache = new Map<number, { handle: Promise<FileHandle>; reads: number; evicted: boolean }>();
  private readonly recorders = new Set<Set<string>>();
  /** Per directory: files opened there, and siblings prefetched there. */
  private siblingDirs = new Map<string, { opened: number; prefetched: number }>();

  private constructor(
    readonly fqrn: string,
    private readonly o: RepositoryOptions,
    private readonly fetcher: Fetcher,
    private readonly store: ObjectStore,
    private readonly keys: readonly MasterKey[],
    private state: { revision: number; rootHash: string; publishTime: number },
    tree: CatalogTree, offline: boolean, whitelistExpiry: string,
    /** The letters of `state`, as stored in the cache. */
    private letters: Letters,
  ) {
    this.tree = tree;
    this.offline = offline;
    this.lastCheckMs = this.nowMs();
    this.ttlSeconds = this.effectiveTtl();
    this.whitelistExpiry = whitelistExpiry;
  }

  private nowMs(): number { return (this.o.clock?.now() ?? new Date()).getTime(); }

  private effectiveTtl(): number {
    const prop = Number(this.tree.rootCatalog.property('TTL') ?? DEFAULT_TTL_SECONDS) || DEFAULT_TTL_SECONDS;
    return this.o.maxTtlSeconds ? Math.min(prop, this.o.maxTtlSeconds) : prop;
  }

  static async open(o: RepositoryOptions): Promise<Repository> {
    const keys = o.publicKeys.map((k) => {
      try { return { name: k.name, key: createPublicKey(k.pem) }; } catch (err) {
        throw new CvmfsError('CVMFS_BAD_ARGUMENT', `public key ${k.name} is not a PEM public key`, { cause: err });
      }
    });
    if (keys.length === 0) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `no public key configured for ${o.fqrn}`);
    const cache = await ObjectCache.open(o.cacheDir, o.quotaBytes ?? 0);
    const fetcher = new Fetcher({
      servers: o.servers.map((s) => substituteServer(s, o.fqrn)), proxies: parseProxyList(o.proxy),
      ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}),
      ...(o.lowSpeedLimitBytesPerSecond !== undefined ? { lowSpeedLimitBytesPerSecond: o.lowSpeedLimitBytesPerSecond } : {}),
      ...(o.lowSpeedWindowMs !== undefined ? { lowSpeedWindowMs: o.lowSpeedWindowMs } : {}),
      ...(o.deadlineMs !== undefined ? { deadlineMs: o.deadlineMs } : {}),
      ...(o.maxRetries !== undefined ? { maxRetries: o.maxRetries } : {}),
      ...(o.backoffInitMs !== undefined ? { backoffInitMs: o.backoffInitMs } : {}),
    });
    const store = new ObjectStore(fetcher, cache);
    const trust: TrustContext = { fqrn: o.fqrn, masterKeys: keys, now: o.clock?.now() ?? new Date() };
    try {
      const cached = await Repository.cachedRevision(cache, trust, o.log);
      let chosen: TrustedRevision;
      let offline = false;
      try {
        chosen = await fetchTrustedRevision({ fetcher, store, ...trust });
        if (cached && publishedAfter(cached.manifest, chosen.manifest)) {
          try {
            // Still vouched for: the certificate that signed the cached revision is in the current whitelist.
            checkCertificateListed(chosen.whitelist, cached.certificate, o.fqrn);
            o.log?.(`${o.fqrn}: servers publish revision ${chosen.manifest.revision}, older than the cached signed revision ${cached.manifest.revision}; keeping the cached one`);
            chosen = cached;
          } catch (err) {
            o.log?.(`${o.fqrn}: not keeping the cached revision ${cached.manifest.revision}: ${(err as Error).message}`);
          }
        }
      } catch (err) {
        if (!(isCvmfsError(err) && err.kind === 'unavailable' && cached && cache.lookup(cached.manifest.rootHash))) throw err;
        o.log?.(`${o.fqrn}: no server answers; serving cached revision ${cached.manifest.revision} offline (its letters verified again` +
          `${cached.whitelistExpired ? `; its whitelist expired at ${cached.whitelist.expires} UTC, accepted offline` : ''})`);
        chosen = cached;
        offline = true;
      }
      const m = chosen.manifest;
      const tree = await CatalogTree.open(Repository.loader(store), m.rootHash, 255, m.rootCatalogSize, o.direntCacheEntries);
      if (!cached || !sameLetters(cached.letters, chosen.letters)) await cache.writeLetters(o.fqrn, chosen.letters);
      return new Repository(o.fqrn, o, fetcher, store, keys, { revision: m.revision, rootHash: m.rootHash, publishTime: m.publishTime },
        tree, offline, chosen.whitelist.expires, chosen.letters);
    } catch (err) {
      fetcher.close();
      await store.close();
      throw err;
    }
  }

  /**
   * The revision whose letters the cache holds, verified again now (an expired whitelist is
   * accepted: it was unexpired when the letters were stored); undefined when there is none or it
   * does not verify with the configured keys, e.g. a cache filled from another repository.
   */
  private static async cachedRevision(cache: ObjectCache, trust: TrustContext, log?: (line: string) => void): Promise<TrustedRevision | undefined> {
    try {
      const letters = await cache.readLetters(trust.fqrn);
      return letters && verifyLetters(letters, { ...trust, acceptExpired: true });
    } catch (err) {
      log?.(`${trust.fqrn}: ignoring the cached revision: ${(err as Error).message}`);
      return undefined;
    }
  }

  private static loader(store: ObjectStore) {
    return async (hash: string, _mountPath: string, size?: bigint) => {
      const file = await store.get({ hash, suffix: 'C', compressed: true, ...(size !== undefined ? { size } : {}) });
      store.cache.pin(hash);
      let released = false;
      return { file, release: () => { if (!released) { released = true; store.cache.unpin(hash); } } };
    };
  }

  get revision(): number { return this.state.revision; }
  get rootHash(): string { return this.state.rootHash; }
  get isOffline(): boolean { return this.offline; }

  /** Starts a background manifest check when the TTL has run out. */
  private tick(): void {
    if (this.closed || this.refreshing) return;
    const now = this.nowMs();
    if (now < this.retryAfterMs || now - this.lastCheckMs < this.ttlSeconds * 1000) return;
    void this.refresh().catch(() => {});
  }

  /** Checks the servers for a newer revision now; resolves true when one was applied. */
  refresh(): Promise<boolean> {
    if (this.refreshing) return this.refreshing;
    this.refreshing = (async () => {
      try {
        const t = await fetchTrustedRevision({ fetcher: this.fetcher, store: this.store, fqrn: this.fqrn, masterKeys: this.keys, now: new Date(this.nowMs()) });
        this.lastCheckMs = this.nowMs();
        this.offline = false;
        this.whitelistExpiry = t.whitelist.expires;
        const m = t.manifest;
        if (m.rootHash === this.state.rootHash && !publishedAfter(this.state, m) && !sameLetters(t.letters, this.letters)) {
          // The same revision, re-signed (e.g. a fresh whitelist): keep the newer letters for offline use.
          await this.store.cache.writeLetters(this.fqrn, t.letters);
          this.letters = t.letters;
        }
        if (m.rootHash === this.state.rootHash || m.publishTime < this.state.publishTime || m.revision <= this.state.revision) return false;
        const tree = await CatalogTree.open(Repository.loader(this.store), m.rootHash, this.tree.inodeHighWater, m.rootCatalogSize, this.o.direntCacheEntries);
        const old = this.tree;
        this.tree = tree;
        this.siblingDirs = new Map();
        this.state = { revision: m.revision, rootHash: m.rootHash, publishTime: m.publishTime };
        this.ttlSeconds = this.effectiveTtl();
        await this.store.cache.writeLetters(this.fqrn, t.letters);
        this.letters = t.letters;
        setTimeout(() => old.close(), OLD_TREE_GRACE_MS).unref();
        this.o.log?.(`${this.fqrn}: switched to revision ${m.revision}`);
        return true;
      } catch (err) {
        this.lastCheckMs = this.nowMs();
        if (isCvmfsError(err) && err.kind === 'unavailable') {
          this.offline = true;
          this.retryAfterMs = this.nowMs() + Math.min(this.ttlSeconds, OFFLINE_RETRY_SECONDS) * 1000;
        }
        this.o.log?.(`${this.fqrn}: revision check failed, staying at revision ${this.state.revision}: ${(err as Error).message}`);
        throw err;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  private check(): void {
    if (this.closed) throw new CvmfsError('CVMFS_CLOSED', `repository ${this.fqrn} is closed`);
    this.tick();
  }

  /** Normalises "/a/b/" and "a/b" to "/a/b"; "/" to "". FUSE's paths are already "/a/b". */
  private static norm(path: string): string {
    if (path === '/') return '';
    if (path.charCodeAt(0) === 47 && !NOT_NORMAL.test(path)) return path;
    const parts = path.split('/').filter((c) => c !== '' && c !== '.');
    return parts.length ? '/' + parts.join('/') : '';
  }

  async stat(path: string): Promise<Dirent> {
    this.check();
    const p = Repository.norm(path);
    const d = await this.tree.lookup(p);
    if (!d) throw new CvmfsError('CVMFS_PATH_NOT_FOUND', `${p || '/'} does not exist in ${this.fqrn}`);
    return d;
  }

  async readdir(path: string): Promise<Dirent[]> {
    this.check();
    return this.tree.list(Repository.norm(path));
  }

  async readlink(path: string): Promise<string> {
    const d = await this.stat(path);
    if (d.kind !== 'symlink') throw new CvmfsError('CVMFS_NOT_A_SYMLINK', `${d.path} is not a symbolic link`);
    return this.o.expandSymlinks === false ? d.symlink : expandSymlinkVariables(d.symlink, this.o.env ?? {});
  }

  private magicXattrs(d: Dirent): Map<string, () => Promise<Buffer> | Buffer> {
    const m = new Map<string, () => Promise<Buffer> | Buffer>();
    const text = (s: string) => () => Buffer.from(s);
    m.set('user.fqrn', text(this.fqrn));
    m.set('user.revision', text(String(this.state.revision)));
    m.set('user.root_hash', text(this.state.rootHash));
    m.set('user.host', text(this.fetcher.host));
    m.set('user.host_list', text(this.fetcher.servers.join(';')));
    m.set('user.nclg', text(String(this.tree.attachedCount)));
    m.set('user.expires', text(this.whitelistExpiry));
    m.set('user.counters', () => Buffer.from(JSON.stringify(this.counters())));
    if (d.kind === 'file') {
      m.set('user.compression', text(d.compressed ? 'zlib' : 'none'));
      m.set('user.chunks', () => Buffer.from(String(d.chunked ? this.tree.chunks(d).length : 1)));
      if (d.hash) m.set('user.hash', text(d.hash));
    }
    if (d.kind === 'symlink') m.set('user.rawlink', text(d.symlink));
    return m;
  }

  async listxattr(path: string): Promise<string[]> {
    const d = await this.stat(path);
    return [...decodeXattrs(d.xattr).keys(), ...this.magicXattrs(d).keys()];
  }

  async getxattr(path: string, name: string): Promise<Buffer> {
    const d = await this.stat(path);
    const own = decodeXattrs(d.xattr).get(name);
    if (own) return own;
    const magic = this.magicXattrs(d).get(name);
    if (magic) return magic();
    throw new CvmfsError('CVMFS_NO_XATTR', `${d.path || '/'} has no extended attribute ${name}`);
  }

  async open(path: string): Promise<FileHandle> {
    return this.openDirent(await this.stat(path));
  }

  private async openDirent(d: Dirent): Promise<FileHandle> {
    if (d.kind !== 'file') throw new CvmfsError('CVMFS_NOT_A_FILE', `${d.path || '/'} is not a regular file`);
    for (const r of this.recorders) if (r.size < MAX_RECORDED_PATHS) r.add(d.path);
    this.prefetchSiblings(d);
    return d.chunked ? this.openChunked(d) : this.openWhole(d);
  }

  /**
   * Reads without a handle of the caller's: FUSE's read by path (the mount defines no open and
   * release, two fewer round trips to this thread per file). The handle of the file is opened at
   * its first read and kept in a bounded cache, closed once evicted and idle.
   */
  async readAt(path: string, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    const d = await this.stat(path);
    let e = this.handleCache.get(d.inode);
    if (e) {
      this.handleCache.delete(d.inode);
      this.handleCache.set(d.inode, e);
    } else {
      if (d.kind !== 'file') throw new CvmfsError('CVMFS_NOT_A_FILE', `${d.path || '/'} is not a regular file`);
      const opened = this.openDirent(d);
      e = { handle: opened, reads: 0, evicted: false };
      opened.catch(() => { if (this.handleCache.get(d.inode) === e) this.handleCache.delete(d.inode); });
      this.handleCache.set(d.inode, e);
      for (const [ino, old] of this.handleCache) {
        if (this.handleCache.size <= CACHED_HANDLES) break;
        this.handleCache.delete(ino);
        old.evicted = true;
        if (old.reads === 0) void old.handle.then((h) => h.close(), () => {});
      }
    }
    const entry = e;
    entry.reads++;
    try {
      return await (await entry.handle).read(buf, offset, length, position);
    } finally {
      if (--entry.reads === 0 && entry.evicted) void entry.handle.then((h) => h.close(), () => {});
    }
  }

  /** Records the paths of the files opened from now until `stop()`. */
  recordOpens(): AccessRecorder {
    const seen = new Set<string>();
    this.recorders.add(seen);
    return { stop: () => { this.recorders.delete(seen); return [...seen]; } };
  }

  /** The objects to fetch for a file: its whole-file object, or its chunks. */
  private objectsOf(d: Dirent): PrefetchObject[] {
    if (d.chunked) {
      return this.tree.chunks(d).map((c) => {
        const hash = textualHash(d.algo, c.hash);
        return { hash, size: Number(c.size), fetch: () => this.store.get({ hash, suffix: 'P', compressed: d.compressed, size: c.size }) };
      });
    }
    if (!d.hash) return [];
    const hash = d.hash;
    return [{ hash, size: Number(d.size), fetch: () => this.store.get({ hash, suffix: '', compressed: d.compressed, size: d.size }) }];
  }

  /**
   * Fetches the objects of the files at `paths`, in list order, bounded (`limits`); for a list
   * recorded from a container start. Missing, odd or hostile paths are counted, never fetched
   * outside this repository's catalogs. Resolves when done; never rejects.
   */
  prefetch(paths: Iterable<string>, limits: Partial<PrefetchLimits> = {}, signal?: AbortSignal): Promise<PrefetchReport> {
    const l = { ...DEFAULT_PREFETCH_LIMITS, ...limits };
    return runPrefetch(paths, l, async (p) => {
      if (this.closed) throw new CvmfsError('CVMFS_CLOSED', `repository ${this.fqrn} is closed`);
      if (typeof p !== 'string' || p.includes('\0') || p.split('/').includes('..')) return 'missing';
      const d = await this.tree.lookup(Repository.norm(p));
      if (!d) return 'missing';
      if (d.kind !== 'file') return 'not-file';
      return { objects: this.objectsOf(d) };
    }, (h) => this.store.has(h) || this.store.isInFlight(h), this.ledger, signal);
  }

  /**
   * On a cold open of a small file, its small siblings that follow it in name order (wrapping) are
   * fetched, at most `maxFiles` and `maxBytes` at a time. What a directory may have prefetched grows
   * with what was opened in it (`maxFiles` + 2 × opened), so a scan of a directory keeps its window
   * ahead while a lone read in a big one costs one window at most.
   */
  private prefetchSiblings(d: Dirent): void {
    const s = this.o.siblingPrefetch === true ? DEFAULT_SIBLING_PREFETCH : this.o.siblingPrefetch;
    if (!s) return;
    const dir = d.path.slice(0, d.path.lastIndexOf('/'));
    let st = this.siblingDirs.get(dir);
    if (!st) {
      if (this.siblingDirs.size >= MAX_SIBLING_DIRS) this.siblingDirs.clear();
      this.siblingDirs.set(dir, st = { opened: 0, prefetched: 0 });
    }
    st.opened++;
    if (d.chunked || !d.hash || d.size > BigInt(s.maxFileBytes) || this.store.has(d.hash) || this.store.isInFlight(d.hash)) return;
    const allowance = Math.min(s.maxFiles, s.maxFiles + 2 * st.opened - st.prefetched);
    if (allowance <= 0) return;
    const state = st;
    void (async () => {
      const all = (await this.tree.list(dir)).filter((e) => e.kind === 'file' && !e.chunked && e.hash && e.size <= BigInt(s.maxFileBytes));
      all.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      const at = all.findIndex((e) => e.path === d.path);
      const names: string[] = [];
      let bytes = 0;
      for (let k = 1; k < all.length && names.length < allowance; k++) {
        const e = all[(at + k) % all.length]!;
        if (e.path === d.path || this.store.has(e.hash!) || this.store.isInFlight(e.hash!) || bytes + Number(e.size) > s.maxBytes) continue;
        bytes += Number(e.size);
        names.push(e.path);
      }
      state.prefetched += names.length;
      await this.prefetch(names, { concurrency: Math.min(8, s.maxFiles), maxBytes: s.maxBytes, maxFiles: s.maxFiles });
    })().catch(() => {});
  }

  /**
   * A whole-file object is fetched at the first read, not at open: a warm open whose pages the
   * kernel still caches (auto_cache keeps them while the attributes are unchanged) then never
   * reads the object at all.
   */
  private async openWhole(d: Dirent): Promise<FileHandle> {
    if (!d.hash) throw new CvmfsError('CVMFS_BAD_CATALOG', `${d.path} has neither a hash nor chunks`);
    const hash = d.hash;
    this.ledger.used(hash);
    const ref = { hash, suffix: '' as const, compressed: d.compressed, size: d.size };
    if (d.size <= BigInt(SMALL_OBJECT_BYTES)) {
      let data: Promise<Buffer> | undefined;
      return {
        dirent: d,
        read: async (buf, offset, length, position) => {
          const b = await (data ??= this.store.read(ref).catch((err: unknown) => { data = undefined; throw err; }));
          return position >= b.length ? 0 : b.copy(buf, offset, position, Math.min(b.length, position + length));
        },
        close: async () => {},
      };
    }
    let fh: Promise<fs.FileHandle> | undefined;
    let closed = false;
    const handle = () => (fh ??= (async () => {
      await this.store.get(ref);
      this.store.cache.pin(hash);
      try { return await this.store.cache.openObject(hash); } catch (err) { this.store.cache.unpin(hash); throw err; }
    })().catch((err: unknown) => { fh = undefined; throw err; }));
    return {
      dirent: d,
      read: async (buf, offset, length, position) => {
        if (closed) throw new CvmfsError('CVMFS_CLOSED', `${d.path}: read after close`);
        return readCached(await handle(), buf, offset, length, position);
      },
      close: async () => {
        if (closed) return;
        closed = true;
        const h = await fh?.catch(() => undefined);
        if (h) { await h.close(); this.store.cache.unpin(hash); }
      },
    };
  }

  private async openChunked(d: Dirent): Promise<FileHandle> {
    const chunks = this.tree.chunks(d);
    const hashOf = (c: Chunk) => textualHash(d.algo, c.hash);
    const open = new Map<number, Promise<fs.FileHandle>>();
    const readAhead = this.o.chunkReadAhead ?? DEFAULT_CHUNK_READ_AHEAD;
    const fetchChunk = (i: number) => {
      const c = chunks[i]!;
      const hash = hashOf(c);
      this.ledger.used(hash);
      return this.store.get({ hash, suffix: 'P', compressed: d.compressed, size: c.size });
    };
    const handleOf = (i: number): Promise<fs.FileHandle> => {
      let h = open.get(i);
      if (!h) {
        h = fetchChunk(i).then(() => { this.store.cache.pin(hashOf(chunks[i]!)); return this.store.cache.openObject(hashOf(chunks[i]!)); });
        h.catch(() => open.delete(i));
        open.set(i, h);
        if (open.size > OPEN_CHUNKS_PER_HANDLE) {
          const [oldest] = open.keys();
          if (oldest !== undefined && oldest !== i) void closeChunk(oldest);
        }
      }
      return h;
    };
    const closeChunk = async (i: number) => {
      const h = open.get(i);
      open.delete(i);
      if (h) { await (await h).close().catch(() => {}); this.store.cache.unpin(hashOf(chunks[i]!)); }
    };
    const indexAt = (pos: bigint): number => {
      let lo = 0, hi = chunks.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (chunks[mid]!.offset <= pos) lo = mid; else hi = mid - 1;
      }
      return lo;
    };
    let closed = false;
    return {
      dirent: d,
      read: async (buf, offset, length, position) => {
        let done = 0;
        let pos = BigInt(position);
        while (done < length && pos < d.size) {
          const i = indexAt(pos);
          const c = chunks[i]!;
          for (let k = 1; k <= readAhead && i + k < chunks.length; k++) void fetchChunk(i + k).catch(() => {});
          const fh = await handleOf(i);
          const within = Number(pos - c.offset);
          const n = Math.min(length - done, Number(c.size) - within);
          const bytesRead = readCached(fh, buf, offset + done, n, within);
          if (bytesRead === 0) break;
          done += bytesRead;
          pos += BigInt(bytesRead);
        }
        return done;
      },
      close: async () => {
        if (closed) return;
        closed = true;
        await Promise.all([...open.keys()].map(closeChunk));
      },
    };
  }

  async readFile(path: string): Promise<Buffer> {
    const h = await this.open(path);
    try {
      const size = Number(h.dirent.size);
      const buf = Buffer.allocUnsafe(size);
      let off = 0;
      while (off < size) {
        const n = await h.read(buf, off, Math.min(size - off, 4 << 20), off);
        if (n === 0) throw new CvmfsError('CVMFS_CACHE_FAILED', `${path}: short read at ${off} of ${size}`);
        off += n;
      }
      return buf;
    } finally {
      await h.close();
    }
  }

  createReadStream(path: string, opts: { highWaterMark?: number } = {}): Readable {
    const step = opts.highWaterMark ?? 1 << 20;
    let handle: FileHandle | undefined;
    let pos = 0;
    const open = () => this.open(path);
    return new Readable({
      highWaterMark: step,
      read: function (this: Readable) {
        void (async () => {
          try {
            handle ??= await open();
            const buf = Buffer.allocUnsafe(step);
            const n = await handle.read(buf, 0, step, pos);
            pos += n;
            this.push(n > 0 ? buf.subarray(0, n) : null);
          } catch (err) { this.destroy(err as Error); }
        })();
      },
      destroy(err, cb) { void (handle?.close() ?? Promise.resolve()).then(() => cb(err), cb); },
    });
  }

  /** Totals of the root catalog (self + subtree): the whole repository. */
  totals(): Counters {
    const db = this.tree.rootCatalog;
    return addCounters(db.counters('self'), db.counters('subtree'));
  }

  counters(): RepositoryCounters {
    const s = this.store.metrics, c = this.store.cache.metrics, f = this.fetcher.metrics;
    return {
      revision: this.state.revision, rootHash: this.state.rootHash, offline: this.offline,
      bytesFetched: s.bytesFetched, objectsFetched: s.objectsFetched, bytesInflated: s.bytesInflated,
      cacheHits: c.hits, cacheMisses: c.misses, evictions: c.evictions, evictedBytes: c.evictedBytes, cacheUsedBytes: this.store.cache.usedBytes,
      requests: f.requests, failovers: f.failovers, retriesNoCache: f.retriesNoCache, hashMismatches: s.hashMismatches,
      catalogsAttached: this.tree.attachedCount,
      prefetchObjects: this.ledger.objects, prefetchBytes: this.ledger.bytes, prefetchHits: this.ledger.hits,
      prefetchHitBytes: this.ledger.hitBytes, prefetchWasteBytes: this.ledger.wasteBytes,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.refreshing?.catch(() => {});
    const handles = [...this.handleCache.values()];
    this.handleCache.clear();
    await Promise.all(handles.map((e) => e.handle.then((h) => h.close(), () => {})));
    this.tree.close();
    this.fetcher.close();
    await this.store.close();
  }
}

export function openRepository(o: RepositoryOptions): Promise<Repository> {
  return Repository.open(o);
}
