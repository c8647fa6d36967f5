/**
 * Local object cache (docs/cvmfs-format.md §13.4): objects stored decompressed under
 * `<dir>/<xx>/<rest of textual hash>`, written to `txn/` and renamed in only once verified, so a
 * crash never leaves a bad object. A byte quota with LRU eviction (down to half the quota, as
 * cvmfs does); pinned objects (open files, attached catalogs) are never evicted. The LRU order
 * lives in memory and is rebuilt from file mtimes at start; accesses bump it without I/O.
 * It knows nothing of HTTP or hashes: the client verifies before it commits.
 *
 * Cached objects are trusted once committed, so the cache must be private to its owner:
 *   - the directory is created 0700; one that is a symlink, that another user owns or that group
 *     or others may write is refused (CVMFS_CACHE_UNSAFE), and so is one below a directory that
 *     another user (other than root) owns or that others may write without the sticky bit;
 *   - nothing inside is followed: `txn/` and `00/`…`ff/` must be real directories of ours (a
 *     symlink or file in their place is removed and the directory made anew), the start-up scan
 *     uses lstat and drops whatever is not a regular file of ours, cached files are opened with
 *     O_NOFOLLOW and scratch files created with O_CREAT|O_EXCL|O_NOFOLLOW.
 * The revision to serve offline (or to prefer over an older one a server offers) is kept as the
 * signed letters themselves (`cvmfsletters.<fqrn>`: manifest, whitelist, certificate), which the
 * client verifies again each time it uses them (trust.ts). The stock client's unsigned breadcrumb
 * (`cvmfschecksum.<fqrn>`) of earlier versions is ignored.
 */
import { randomBytes } from 'node:crypto';
import { constants, openSync, closeSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CvmfsError, isCvmfsError } from '../errors.js';
import type { Letters } from './trust.js';

/** Mode of every directory the cache creates. */
export const CACHE_DIR_MODE = 0o700;
const SCRATCH_FILE_MODE = 0o600;
const STICKY_BIT = 0o1000;
const READ_NOFOLLOW = constants.O_RDONLY | constants.O_NOFOLLOW;
const CREATE_EXCLUSIVE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** Bound on the stored letters file (three letters of at most 1 MiB each, base64 in JSON). */
const MAX_LETTERS_FILE_BYTES = 8 * 1024 * 1024;
const LETTERS_FORMAT = 'cvmfs-graphdriver-letters/1';
/** What may appear in a file name built from a repository name. */
const FQRN_IN_FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

function euid(): number { return process.geteuid?.() ?? 0; }

function unsafe(dir: string, why: string): CvmfsError {
  return new CvmfsError('CVMFS_CACHE_UNSAFE',
    `cache directory ${dir} ${why}: another user could plant objects or letters in it; use a directory only you can write ` +
    `(the default is $XDG_CACHE_HOME/cvmfs-graphdriver/<fqrn>, created 0700), or remove it (it holds only data the client can fetch again)`);
}

async function lstatOrUndefined(p: string): Promise<import('node:fs').Stats | undefined> {
  try { return await fs.lstat(p); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Absolute path and all its ancestors, deepest first. */
function ancestorsOf(p: string): string[] {
  const out: string[] = [];
  for (let d = p; ; d = path.dirname(d)) { out.push(d); if (path.dirname(d) === d) break; }
  return out;
}

/**
 * Creates `dir` (and missing parents) 0700, or checks an existing one: a real directory, owned by
 * us, not writable by group or others, below directories nobody else may rename it out of
 * (owned by us or root, and not writable by group/others unless sticky, as /tmp is).
 */
export async function ensurePrivateDir(dir: string): Promise<void> {
  const uid = euid();
  let st = await lstatOrUndefined(dir);
  if (!st) {
    await fs.mkdir(dir, { recursive: true, mode: CACHE_DIR_MODE });
    st = await fs.lstat(dir);
  }
  if (st.isSymbolicLink()) throw unsafe(dir, 'is a symbolic link');
  if (!st.isDirectory()) throw unsafe(dir, 'is not a directory');
  if (st.uid !== uid) throw unsafe(dir, `is owned by uid ${st.uid}, not by this user (uid ${uid})`);
  if (st.mode & 0o022) throw unsafe(dir, `is writable by ${st.mode & 0o020 ? 'its group' : 'others'} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`);
  const parent = path.dirname(dir);
  const chain = new Set([...ancestorsOf(parent), ...ancestorsOf(await fs.realpath(parent))]);
  for (const a of chain) {
    const s = await fs.lstat(a);
    if (s.uid !== uid && s.uid !== 0) throw unsafe(dir, `lies below ${a}, which uid ${s.uid} owns`);
    if (!s.isSymbolicLink() && (s.mode & 0o022) && !(s.mode & STICKY_BIT)) {
      throw unsafe(dir, `lies below ${a}, which group or others may write (mode ${(s.mode & 0o7777).toString(8).padStart(4, '0')})`);
    }
  }
}

const SCAN_PARALLEL = 16;

export interface CacheMetrics { hits: number; misses: number; evictions: number; evictedBytes: number }

interface Item { size: number }

export class ObjectCache {
  readonly metrics: CacheMetrics = { hits: 0, misses: 0, evictions: 0, evictedBytes: 0 };
  /** Insertion order is LRU order: oldest first. */
  private readonly items = new Map<string, Item>();
  private readonly pins = new Map<string, number>();
  private used = 0;

  private constructor(readonly dir: string, readonly quotaBytes: number) {}

  static async open(dir: string, quotaBytes = 0): Promise<ObjectCache> {
    const c = new ObjectCache(path.resolve(dir), quotaBytes);
    try {
      await ensurePrivateDir(c.dir);
      const txn = await c.realSubdir('txn');
      for (const n of await fs.readdir(txn)) await fs.rm(path.join(txn, n), { recursive: true, force: true });
      const uid = euid();
      const found: { key: string; size: number; mtime: number }[] = [];
      // 16 of the 256 subdirectories at a time: one after another, a fresh cache took 50-80 ms to open.
      let next = 0;
      await Promise.all(Array.from({ length: SCAN_PARALLEL }, async () => {
        for (let i = next++; i < 256; i = next++) {
          const sub = i.toString(16).padStart(2, '0');
          const d = await c.realSubdir(sub);
          for (const n of await fs.readdir(d)) {
            const st = await fs.lstat(path.join(d, n)).catch(() => undefined);
            if (!st) continue;
            if (st.isFile() && st.uid === uid) found.push({ key: sub + n, size: st.size, mtime: st.mtimeMs });
            else await fs.rm(path.join(d, n), { recursive: true, force: true });
          }
        }
      }));
      found.sort((a, b) => a.mtime - b.mtime);
      for (const f of found) { c.items.set(f.key, { size: f.size }); c.used += f.size; }
    } catch (err) {
      if (isCvmfsError(err)) throw err;
      throw new CvmfsError('CVMFS_CACHE_FAILED', `cannot use cache directory ${dir}: ${(err as Error).message}`, { cause: err });
    }
    return c;
  }

  /**
   * `<dir>/<name>` as a real directory of ours: a symlink or file in its place is removed (never
   * followed) and the directory made anew; one that another user owns or others may write is refused.
   */
  private async realSubdir(name: string): Promise<string> {
    const p = path.join(this.dir, name);
    const st = await lstatOrUndefined(p);
    if (st?.isDirectory()) {
      if (st.uid !== euid() || st.mode & 0o022) throw unsafe(this.dir, `holds ${name}/, which ${st.uid !== euid() ? `uid ${st.uid} owns` : 'group or others may write'}`);
      return p;
    }
    if (st) await fs.rm(p, { force: true });
    await fs.mkdir(p, { mode: CACHE_DIR_MODE });
    return p;
  }

  get usedBytes(): number { return this.used; }

  pathOf(key: string): string { return path.join(this.dir, key.slice(0, 2), key.slice(2)); }

  /** Whether `key` is cached; neither a hit nor a use. */
  has(key: string): boolean { return this.items.has(key); }

  /** True (and the object counts as used) when `key` is cached. */
  lookup(key: string): boolean {
    const it = this.items.get(key);
    if (!it) { this.metrics.misses++; return false; }
    this.items.delete(key);
    this.items.set(key, it);
    this.metrics.hits++;
    return true;
  }

  /**
   * A new, empty scratch file for one download, created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW,
   * 0600) so the name is ours; commit it with `commit`, or drop it with `abort`.
   */
  tempFile(): string {
    const tmp = this.scratchName();
    closeSync(openSync(tmp, CREATE_EXCLUSIVE, SCRATCH_FILE_MODE));
    return tmp;
  }

  private scratchName(): string { return path.join(this.dir, 'txn', `${process.pid}-${randomBytes(8).toString('hex')}`); }

  /** Opens a cached object for reading, never through a symlink. */
  openObject(key: string): Promise<fs.FileHandle> { return fs.open(this.pathOf(key), READ_NOFOLLOW); }

  /** The bytes of a cached object, read without following a symlink. */
  async readObject(key: string): Promise<Buffer> {
    const fh = await this.openObject(key);
    try { return await fh.readFile(); } finally { await fh.close(); }
  }

  async commit(key: string, tmp: string, size: number): Promise<string> {
    const dest = this.pathOf(key);
    await fs.rename(tmp, dest);
    if (!this.items.has(key)) { this.items.set(key, { size }); this.used += size; }
    await this.evict();
    return dest;
  }

  async abort(tmp: string): Promise<void> { await fs.rm(tmp, { force: true }); }

  pin(key: string): void { this.pins.set(key, (this.pins.get(key) ?? 0) + 1); }
  unpin(key: string): void {
    const n = (this.pins.get(key) ?? 0) - 1;
    if (n > 0) this.pins.set(key, n); else this.pins.delete(key);
  }

  /** Evicts least recently used, unpinned objects until usage is at most half the quota. */
  private async evict(): Promise<void> {
    if (this.quotaBytes <= 0 || this.used <= this.quotaBytes) return;
    const target = this.quotaBytes / 2;
    for (const [key, it] of this.items) {
      if (this.used <= target) break;
      if (this.pins.has(key)) continue;
      this.items.delete(key);
      this.used -= it.size;
      this.metrics.evictions++;
      this.metrics.evictedBytes += it.size;
      await fs.rm(this.pathOf(key), { force: true });
    }
  }

  private lettersFile(fqrn: string): string {
    if (!FQRN_IN_FILE_NAME.test(fqrn)) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `repository name "${fqrn}" is not a valid name`);
    return path.join(this.dir, `cvmfsletters.${fqrn}`);
  }

  /**
   * The signed letters of the last revision the client verified, as stored by `writeLetters`;
   * undefined when there are none or the file is not in our format. Unverified: the caller
   * verifies them before any use.
   */
  async readLetters(fqrn: string): Promise<Letters | undefined> {
    let fh: fs.FileHandle;
    try { fh = await fs.open(this.lettersFile(fqrn), READ_NOFOLLOW); } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new CvmfsError('CVMFS_CACHE_FAILED', `cannot read the cached letters of ${fqrn}: ${(err as Error).message}`, { cause: err });
    }
    let text: string;
    try {
      const st = await fh.stat();
      if (!st.isFile() || st.size > MAX_LETTERS_FILE_BYTES) return undefined;
      text = await fh.readFile('utf8');
    } finally { await fh.close(); }
    let doc: unknown;
    try { doc = JSON.parse(text); } catch { return undefined; }
    const d = doc as Record<string, unknown> | null;
    if (!d || d.format !== LETTERS_FORMAT || d.fqrn !== fqrn) return undefined;
    const { manifest, whitelist, certificate } = d;
    if (typeof manifest !== 'string' || typeof whitelist !== 'string' || typeof certificate !== 'string') return undefined;
    return { manifest: Buffer.from(manifest, 'base64'), whitelist: Buffer.from(whitelist, 'base64'), certificate: Buffer.from(certificate, 'base64') };
  }

  /** Stores a verified revision's letters atomically (scratch file, then rename over the old ones). */
  async writeLetters(fqrn: string, l: Letters): Promise<void> {
    const file = this.lettersFile(fqrn);
    const tmp = this.scratchName();
    try {
      const fh = await fs.open(tmp, CREATE_EXCLUSIVE, SCRATCH_FILE_MODE);
      try {
        await fh.writeFile(JSON.stringify({ format: LETTERS_FORMAT, fqrn, manifest: l.manifest.toString('base64'),
          whitelist: l.whitelist.toString('base64'), certificate: l.certificate.toString('base64') }));
      } finally { await fh.close(); }
      await fs.rename(tmp, file);
    } catch (err) {
      await this.abort(tmp);
      throw new CvmfsError('CVMFS_CACHE_FAILED', `cannot store the letters of ${fqrn} in ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
  }
}
