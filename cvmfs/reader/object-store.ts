/**
 * Verified objects, composed from the fetcher and the cache (docs/cvmfs-format.md §13.3): the
 * raw body is hashed as it streams, inflated into a cache transaction, and committed only if the
 * hash matches and the inflated size equals the size the catalog promised. Concurrent requests
 * for one object share one download.
 */
import { constants as fsc } from 'node:fs';
import { open, writeFile } from 'node:fs/promises';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createInflate, inflateSync } from 'node:zlib';
import { CvmfsError, isCvmfsError } from '../errors.js';
import { createHasher, parseTextualHash, textualHash, type HashAlgo } from '../format/hash.js';
import { ZlibPool } from '../zlib-pool.js';
import { objectPath, type ObjectSuffix } from '../format/object.js';
import type { ObjectCache } from './cache.js';
import type { Fetcher } from './fetcher.js';

/** Scratch files are ours (created exclusively by the cache); never written through a symlink. */
const WRITE_NOFOLLOW = fsc.O_WRONLY | fsc.O_TRUNC | fsc.O_NOFOLLOW;
/** Catalogs and certificates carry no size in their parent; bound what they may inflate to. */
export const MAX_UNSIZED_OBJECT_BYTES = 2 * 1024 * 1024 * 1024;
/** Objects up to this size are read whole into memory, the common case for container files. */
export const SMALL_OBJECT_BYTES = 256 * 1024;
export const DEFAULT_MEMORY_CACHE_BYTES = 64 * 1024 * 1024;
/** zlib output step of the streaming path: Node's 16 KiB default costs a thread-pool round trip per 16 KiB. */
const INFLATE_CHUNK_BYTES = 256 * 1024;
/** Sized objects up to this inflate on this thread, larger ones on the zlib pool. */
const INLINE_INFLATE_BYTES = 1024 * 1024;
/** Sized objects up to this are downloaded whole and inflated in one call on a worker thread. */
export const BUFFERED_OBJECT_BYTES = 64 * 1024 * 1024;
/** Deflate can grow incompressible input slightly; allow that much slack over the inflated size. */
const COMPRESSED_SLACK_BYTES = 64 * 1024;

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
  private readonly inflightSmall = new Map<string, Promise<Buffer>>();
  /** Verified small objects, LRU by insertion order. */
  private readonly memory = new Map<string, Buffer>();
  private memoryBytes = 0;

  private zlib: ZlibPool | undefined;

  constructor(private readonly fetcher: Fetcher, readonly cache: ObjectCache, private readonly memoryCacheBytes = DEFAULT_MEMORY_CACHE_BYTES) {}

  private get pool(): ZlibPool { return (this.zlib ??= new ZlibPool()); }

  /** Releases the workers and the memory cache (a closed store may still be referenced). */
  async close(): Promise<void> {
    this.memory.clear();
    this.memoryBytes = 0;
    await this.zlib?.close();
  }

  /** Reads a body into memory, hashing as it arrives; fails beyond `maxBytes`. */
  private async readBody(body: Readable, rel: string, algo: HashAlgo, maxBytes: number): Promise<{ stored: Buffer; digest: Buffer }> {
    const hasher = createHasher(algo);
    const parts: Buffer[] = [];
    let n = 0;
    for await (const c of body as AsyncIterable<Buffer>) {
      n += c.length;
      if (n > maxBytes) throw new CvmfsError('CVMFS_HASH_MISMATCH', `object ${rel} is larger than its catalog entry allows`);
      hasher.update(c);
      parts.push(c);
    }
    this.metrics.bytesFetched += n;
    return { stored: Buffer.concat(parts, n), digest: hasher.digest() };
  }

  /** Checks a downloaded object against its name and its catalog size; returns the inflated bytes. */
  private async verified(ref: ObjectRef & { size: bigint }, rel: string, algo: HashAlgo, expect: Buffer,
    got: { stored: Buffer; digest: Buffer }, inflate: (b: Buffer, max: number) => Promise<Buffer> | Buffer): Promise<Buffer> {
    if (!got.digest.equals(expect)) {
      this.metrics.hashMismatches++;
      throw new CvmfsError('CVMFS_HASH_MISMATCH',
        `object ${rel} failed verification (got ${textualHash(algo, got.digest)}): the server or a proxy serves corrupted data`);
    }
    let plain: Buffer;
    try { plain = ref.compressed ? await inflate(got.stored, Number(ref.size) + 1) : got.stored; } catch (err) {
      this.metrics.hashMismatches++;
      throw new CvmfsError('CVMFS_HASH_MISMATCH', `object ${rel} does not inflate to its catalog size ${ref.size}`, { cause: err });
    }
    if (BigInt(plain.length) !== ref.size) {
      this.metrics.hashMismatches++;
      throw new CvmfsError('CVMFS_HASH_MISMATCH', `object ${rel} inflates to ${plain.length} bytes, the catalog says ${ref.size}`);
    }
    return plain;
  }

  private async commitBytes(hash: string, rel: string, data: Buffer): Promise<string> {
    let tmp: string | undefined;
    try {
      tmp = this.cache.tempFile();
      await writeFile(tmp, data, { flag: WRITE_NOFOLLOW });
      return await this.cache.commit(hash, tmp, data.length);
    } catch (err) {
      if (tmp !== undefined) await this.cache.abort(tmp);
      throw new CvmfsError('CVMFS_CACHE_FAILED', `cannot store object ${rel} in the cache: ${(err as Error).message}`, { cause: err });
    }
  }

  private remember(hash: string, data: Buffer): void {
    if (data.length > this.memoryCacheBytes / 4) return;
    // inflateSync's result sits in a 16 KiB buffer: kept as is, a 4 KiB file would hold 16 KiB.
    if (data.buffer.byteLength > 2 * data.length) data = Buffer.from(data);
    this.memory.set(hash, data);
    this.memoryBytes += data.length;
    for (const [k, v] of this.memory) {
      if (this.memoryBytes <= this.memoryCacheBytes) break;
      this.memory.delete(k);
      this.memoryBytes -= v.length;
    }
  }

  /**
   * The verified, inflated bytes of an object whose size is known (small files, chunks): from
   * memory, else the disk cache, else downloaded into memory, verified, and committed to the disk
   * cache. Small objects inflate on this thread, larger ones on the zlib pool.
   */
  read(ref: ObjectRef & { size: bigint }): Promise<Buffer> {
    const hit = this.memory.get(ref.hash);
    if (hit) {
      this.memory.delete(ref.hash);
      this.memory.set(ref.hash, hit);
      this.cache.lookup(ref.hash);
      return Promise.resolve(hit);
    }
    let p = this.inflightSmall.get(ref.hash);
    if (!p) {
      p = this.readSmall(ref).finally(() => this.inflightSmall.delete(ref.hash));
      this.inflightSmall.set(ref.hash, p);
    }
    return p;
  }

  private async readSmall(ref: ObjectRef & { size: bigint }): Promise<Buffer> {
    // A prefetch (get) of this object in flight: wait for it rather than download it twice.
    await this.inflight.get(ref.hash)?.catch(() => {});
    if (this.cache.lookup(ref.hash)) {
      const data = await this.cache.readObject(ref.hash);
      if (BigInt(data.length) === ref.size) { this.remember(ref.hash, data); return data; }
    }
    const { algo, digest } = parseTextualHash(ref.hash);
    const rel = objectPath(ref.hash, ref.suffix);
    const data = await this.fetcher.fetch(rel, async (body: Readable) =>
      this.verified(ref, rel, algo, digest, await this.readBody(body, rel, algo, Number(ref.size) + COMPRESSED_SLACK_BYTES),
        (b, max) => (ref.size <= BigInt(SMALL_OBJECT_BYTES) ? inflateSync(b, { maxOutputLength: max }) : this.pool.inflate(b, max))));
    this.metrics.objectsFetched++;
    this.metrics.bytesInflated += data.length;
    await this.commitBytes(ref.hash, rel, data);
    this.remember(ref.hash, data);
    return data;
  }

  /** Whether the object is in memory or the disk cache (no side effects on the LRU order). */
  has(hash: string): boolean { return this.memory.has(hash) || this.cache.has(hash); }

  /** Whether a download of the object is under way. */
  isInFlight(hash: string): boolean { return this.inflight.has(hash) || this.inflightSmall.has(hash); }

  /** Path of the verified, inflated object in the cache; fetches it if needed. */
  get(ref: ObjectRef): Promise<string> {
    if (this.cache.lookup(ref.hash)) return Promise.resolve(this.cache.pathOf(ref.hash));
    let p = this.inflight.get(ref.hash);
    if (!p) {
      const small = this.inflightSmall.get(ref.hash);
      p = (small ? small.then(() => (this.cache.lookup(ref.hash) ? this.cache.pathOf(ref.hash) : this.download(ref)), () => this.download(ref)) : this.download(ref))
        .finally(() => this.inflight.delete(ref.hash));
      this.inflight.set(ref.hash, p);
    }
    return p;
  }

  private async download(ref: ObjectRef): Promise<string> {
    const { algo, digest } = parseTextualHash(ref.hash);
    const rel = objectPath(ref.hash, ref.suffix);
    if (ref.size !== undefined && ref.size <= BigInt(BUFFERED_OBJECT_BYTES)) {
      const sized = { ...ref, size: ref.size };
      const data = await this.fetcher.fetch(rel, async (body: Readable) =>
        this.verified(sized, rel, algo, digest, await this.readBody(body, rel, algo, Number(ref.size) + COMPRESSED_SLACK_BYTES),
          // A small catalog inflates in about a millisecond here: cheaper than starting the pool at mount.
          (b, max) => (sized.size <= BigInt(INLINE_INFLATE_BYTES) ? inflateSync(b, { maxOutputLength: max }) : this.pool.inflate(b, max))));
      this.metrics.objectsFetched++;
      this.metrics.bytesInflated += data.length;
      return this.commitBytes(ref.hash, rel, data);
    }
    const max = ref.size !== undefined ? Number(ref.size) : MAX_UNSIZED_OBJECT_BYTES;
    const { tmp, size } = await this.fetcher.fetch(rel, async (body: Readable) => {
      const tmp = this.cache.tempFile();
      const hasher = createHasher(algo);
      let raw = 0;
      const tap = new Transform({ transform(c: Buffer, _e, cb) { hasher.update(c); raw += c.length; cb(null, c); } });
      const limit = new Limit(max, rel);
      try {
        await pipeline(body, tap, ref.compressed ? createInflate({ chunkSize: INFLATE_CHUNK_BYTES }) : new PassThrough(), limit, (await open(tmp, WRITE_NOFOLLOW)).createWriteStream());
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
