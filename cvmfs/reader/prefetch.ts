/**
 * Prefetch: objects fetched before a read asks for them, bounded in files, bytes and concurrency,
 * and accounted for: an object prefetched and then read is a hit, one never read is waste. The
 * fetching itself is the object store's (a read of an object in flight waits for that download).
 */

export interface PrefetchLimits {
  /** Downloads in flight at once. */
  readonly concurrency: number;
  /** Inflated bytes fetched at most; objects beyond it are left for the reads that need them. */
  readonly maxBytes: number;
  /** Paths considered at most; the rest of the list is ignored. */
  readonly maxFiles: number;
}

export const DEFAULT_PREFETCH_LIMITS: PrefetchLimits = { concurrency: 32, maxBytes: 512 * 1024 * 1024, maxFiles: 50_000 };

/** Sibling prefetch: on a cold open of a small file, the small files that follow it in its directory. */
export interface SiblingPrefetch {
  readonly maxFiles: number;
  readonly maxBytes: number;
  /** Only siblings up to this size (whole-file objects). */
  readonly maxFileBytes: number;
}

export const DEFAULT_SIBLING_PREFETCH: SiblingPrefetch = { maxFiles: 32, maxBytes: 1024 * 1024, maxFileBytes: 64 * 1024 };

export interface PrefetchReport {
  /** Paths taken from the list (at most maxFiles). */
  readonly considered: number;
  readonly objects: number;
  readonly bytes: number;
  readonly alreadyCached: number;
  /** Paths that do not exist in this revision (or are not normal paths). */
  readonly missing: number;
  /** Directories, symlinks, devices: nothing to fetch. */
  readonly notFiles: number;
  /** Objects left out by the byte budget. */
  readonly overBudget: number;
  readonly failed: number;
  readonly firstError?: string;
}

export interface PrefetchObject { readonly hash: string; readonly size: number; fetch(): Promise<unknown> }

/** Accounting of prefetched objects: hit when read, waste while unread. */
export class PrefetchLedger {
  objects = 0;
  bytes = 0;
  hits = 0;
  hitBytes = 0;
  private readonly unread = new Map<string, number>();
  private unreadBytes = 0;

  fetched(hash: string, size: number): void {
    if (this.unread.has(hash)) return;
    this.objects++;
    this.bytes += size;
    this.unread.set(hash, size);
    this.unreadBytes += size;
  }

  /** The download failed: neither a hit nor waste. */
  dropped(hash: string): void {
    const size = this.unread.get(hash);
    if (size === undefined) return;
    this.unread.delete(hash);
    this.unreadBytes -= size;
    this.objects--;
    this.bytes -= size;
  }

  /** A read needed this object. */
  used(hash: string): void {
    const size = this.unread.get(hash);
    if (size === undefined) return;
    this.unread.delete(hash);
    this.unreadBytes -= size;
    this.hits++;
    this.hitBytes += size;
  }

  /** Prefetched bytes that no read has needed (yet). */
  get wasteBytes(): number { return this.unreadBytes; }
}

/**
 * Runs `resolve` over the paths with `limits.concurrency` workers; each path yields the objects
 * to fetch (or a reason it has none). Never rejects: failures are counted.
 */
export async function runPrefetch(
  paths: Iterable<string>,
  limits: PrefetchLimits,
  resolve: (path: string) => Promise<{ objects: readonly PrefetchObject[] } | 'missing' | 'not-file'>,
  /** Cached or already being downloaded. */
  isPresent: (hash: string) => boolean,
  ledger: PrefetchLedger,
  signal?: AbortSignal,
): Promise<PrefetchReport> {
  let considered = 0, objects = 0, bytes = 0, alreadyCached = 0, missing = 0, notFiles = 0, overBudget = 0, failed = 0;
  let firstError: string | undefined;
  const it = paths[Symbol.iterator]();
  const next = (): string | undefined => {
    if (considered >= limits.maxFiles || signal?.aborted) return undefined;
    const r = it.next();
    if (r.done) return undefined;
    considered++;
    return r.value;
  };
  const worker = async () => {
    for (let p = next(); p !== undefined; p = next()) {
      try {
        const r = await resolve(p);
        if (r === 'missing') { missing++; continue; }
        if (r === 'not-file') { notFiles++; continue; }
        for (const o of r.objects) {
          if (signal?.aborted) return;
          if (isPresent(o.hash)) { alreadyCached++; continue; }
          if (bytes + o.size > limits.maxBytes) { overBudget++; continue; }
          bytes += o.size;
          // Booked before the download: a read that joins it while in flight is a hit.
          ledger.fetched(o.hash, o.size);
          try { await o.fetch(); } catch (err) { ledger.dropped(o.hash); throw err; }
          objects++;
        }
      } catch (err) {
        failed++;
        firstError ??= `${p}: ${(err as Error).message}`;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limits.concurrency) }, worker));
  return { considered, objects, bytes, alreadyCached, missing, notFiles, overBudget, failed, ...(firstError ? { firstError } : {}) };
}
