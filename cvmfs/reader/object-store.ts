/**
 * Verified objects, composed from the fetcher and the cache (docs/cvmfs-format.md §13.3): the
 * raw body is hashed as it streams, inflated into a cache transaction, and committed only if the
 * hash matches and the inflated size equals the size the catalog promised. Concurrent requests
 * for one object share one download.
 */
import { createWriteStream } from 'node:fs';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createInflate } from 'node:zlib';
import { CvmfsError, isCvmfsError } from '../errors.js';
import { createHasher, parseTextualHash, textualHash } from '../format/hash.js';
import { objectPath, type ObjectSuffix } from '../format/object.js';
import type { ObjectCache } from './cache.js';
import type { Fetcher } from './fetcher.js';

/** Catalogs and certificates carry no size in their parent; bound what they may inflate to. */
export const MAX_UNSIZED_OBJECT_BYTES = 2 * 1024 * 1024 * 1024;

export interface ObjectRef {
  /** Textual hash without suffix. */
  readonly hash: string;
  readonly suffix: ObjectSuffix;
  readonly compressed: boolean;
  /** Inflated size, when the parent states it (files, chunks). */
  readonly size?: bigint;
}

export interface StoreMetrics { objectsFetched: number; bytesFetched: number; bytesInflated: number; hashMismatches: number }

class Limit extends Transform {
  seen = 0;
  constructor(private readonly max: number, private readonly what: string) { super(); }
  override _transform(c: Buffer, _e: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.seen += c.length;
    if (this.seen > this.max) cb(new CvmfsError('CVMFS_HASH_MISMATCH', `${this.what} inflates beyond ${this.max} bytes`));
    else cb(null, c);
  }
}

export class ObjectStore {
  readonly metrics: StoreMetrics = { objectsFetched: 0, bytesFetched: 0, bytesInflated: 0, hashMismatches: 0 };
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(private readonly fetcher: Fetcher, readonly cache: ObjectCache) {}

  /** Path of the verified, inflated object in the cache; fetches it if needed. */
  get(ref: ObjectRef): Promise<string> {
    if (this.cache.lookup(ref.hash)) return Promise.resolve(this.cache.pathOf(ref.hash));
    let p = this.inflight.get(ref.hash);
    if (!p) {
      p = this.download(ref).finally(() => this.inflight.delete(ref.hash));
      this.inflight.set(ref.hash, p);
    }
    return p;
  }

  private async download(ref: ObjectRef): Promise<string> {
    const { algo, digest } = parseTextualHash(ref.hash);
    const rel = objectPath(ref.hash, ref.suffix);
    const max = ref.size !== undefined ? Number(ref.size) : MAX_UNSIZED_OBJECT_BYTES;
    const { tmp, size } = await this.fetcher.fetch(rel, async (body: Readable) => {
      const tmp = this.cache.tempFile();
      const hasher = createHasher(algo);
      let raw = 0;
      const tap = new Transform({ transform(c: Buffer, _e, cb) { hasher.update(c); raw += c.length; cb(null, c); } });
      const limit = new Limit(max, rel);
      try {
        await pipeline(body, tap, ref.compressed ? createInflate() : new PassThrough(), limit, createWriteStream(tmp));
      } catch (err) {
        await this.cache.abort(tmp);
        if (isCvmfsError(err)) { this.metrics.hashMismatches++; throw err; }
        if ((err as NodeJS.ErrnoException).code?.startsWith('Z_')) {
          this.metrics.hashMismatches++;
          throw new CvmfsError('CVMFS_HASH_MISMATCH', `object ${rel} is not a valid zlib stream: the server or a proxy serves corrupted data`, { cause: err });
        }
        throw err;
      }
      this.metrics.bytesFetched += raw;
      const got = hasher.digest();
      if (!got.equals(digest)) {
        await this.cache.abort(tmp);
        this.metrics.hashMismatches++;
        throw new CvmfsError('CVMFS_HASH_MISMATCH',
          `object ${rel} failed verification (got ${textualHash(algo, got)}): the server or a proxy serves corrupted data`);
      }
      if (ref.size !== undefined && BigInt(limit.seen) !== ref.size) {
        await this.cache.abort(tmp);
        this.metrics.hashMismatches++;
        throw new CvmfsError('CVMFS_HASH_MISMATCH', `object ${rel} inflates to ${limit.seen} bytes, the catalog says ${ref.size}`);
      }
      return { tmp, size: limit.seen };
    });
    this.metrics.objectsFetched++;
    this.metrics.bytesInflated += size;
    return this.cache.commit(ref.hash, tmp, size);
  }
}
