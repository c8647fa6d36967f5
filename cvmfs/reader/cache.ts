/**
 * Local object cache (docs/cvmfs-format.md §13.4): objects stored decompressed under
 * `<dir>/<xx>/<rest of textual hash>`, written to `txn/` and renamed in only once verified, so a
 * crash never leaves a bad object. A byte quota with LRU eviction (down to half the quota, as
 * cvmfs does); pinned objects (open files, attached catalogs) are never evicted. The LRU order
 * lives in memory and is rebuilt from file mtimes at start; accesses bump it without I/O.
 * It knows nothing of HTTP or hashes: the client verifies before it commits.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CvmfsError } from '../errors.js';

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
      await fs.mkdir(path.join(c.dir, 'txn'), { recursive: true });
      for (const n of await fs.readdir(path.join(c.dir, 'txn'))) await fs.rm(path.join(c.dir, 'txn', n), { force: true });
      const found: { key: string; size: number; mtime: number }[] = [];
      for (let i = 0; i < 256; i++) {
        const sub = i.toString(16).padStart(2, '0');
        const d = path.join(c.dir, sub);
        await fs.mkdir(d, { recursive: true });
        for (const n of await fs.readdir(d)) {
          const st = await fs.stat(path.join(d, n)).catch(() => undefined);
          if (st?.isFile()) found.push({ key: sub + n, size: st.size, mtime: st.mtimeMs });
        }
      }
      found.sort((a, b) => a.mtime - b.mtime);
      for (const f of found) { c.items.set(f.key, { size: f.size }); c.used += f.size; }
    } catch (err) {
      throw new CvmfsError('CVMFS_CACHE_FAILED', `cannot use cache directory ${dir}: ${(err as Error).message}`, { cause: err });
    }
    return c;
  }

  get usedBytes(): number { return this.used; }

  pathOf(key: string): string { return path.join(this.dir, key.slice(0, 2), key.slice(2)); }

  /** True (and the object counts as used) when `key` is cached. */
  lookup(key: string): boolean {
    const it = this.items.get(key);
    if (!it) { this.metrics.misses++; return false; }
    this.items.delete(key);
    this.items.set(key, it);
    this.metrics.hits++;
    return true;
  }

  /** A scratch file for one download; commit it with `commit`, or drop it with `abort`. */
  tempFile(): string { return path.join(this.dir, 'txn', `${process.pid}-${randomBytes(8).toString('hex')}`); }

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

  /** Breadcrumb of the last good revision, for offline start and rollback protection. */
  async readBreadcrumb(fqrn: string): Promise<{ rootHash: string; publishTime: number; revision: number } | undefined> {
    const text = await fs.readFile(path.join(this.dir, `cvmfschecksum.${fqrn}`), 'utf8').catch(() => undefined);
    const m = text && /^([0-9a-z-]+)T(\d+)R(\d+)/.exec(text);
    return m ? { rootHash: m[1]!, publishTime: Number(m[2]), revision: Number(m[3]) } : undefined;
  }
  async writeBreadcrumb(fqrn: string, b: { rootHash: string; publishTime: number; revision: number }): Promise<void> {
    const file = path.join(this.dir, `cvmfschecksum.${fqrn}`);
    const tmp = this.tempFile();
    await fs.writeFile(tmp, `${b.rootHash}T${b.publishTime}R${b.revision}`);
    await fs.rename(tmp, file);
  }
}
