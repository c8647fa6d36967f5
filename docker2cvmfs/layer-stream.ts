/**
 * A layer blob turned into its verified, uncompressed tar stream.
 *
 * Model: blob → `CompressedTap` (sha256, byte count against the descriptor, magic sniff) →
 * gunzip | zstd | nothing → `VerifyingOutput` (sha256 of the tar, the diffID). The output is the
 * last stream of the pipeline and is what the caller reads; its flush waits for the compressed
 * side's verdict, so `end` is only emitted once the blob digest, its size and the diffID all
 * matched. Every failure destroys the output with one ConvertError and rejects `done` with the
 * same error. Backpressure is the pipeline's: nothing is read from the blob faster than the
 * consumer drains the tar (plus the streams' high-water marks).
 */
import { createHash, type Hash } from 'node:crypto';
import { PassThrough, Readable, Transform, pipeline, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DecompressStream } from 'zstd-napi';
import { ConvertError, isConvertError } from './errors.js';
import { layerMediaType, type Descriptor, type LayerCompression } from './image.js';

export interface VerifiedLayerOptions {
  readonly signal?: AbortSignal;
  /** Called as compressed bytes pass, with the running total. */
  readonly onProgress?: (compressedBytes: number) => void;
}

export interface LayerTotals {
  readonly compressedBytes: number;
  readonly uncompressedBytes: number;
  /** The diffID computed from the tar: present only when the caller gave none to check against. */
  readonly diffId?: string;
}

export interface VerifiedLayer {
  /** The uncompressed tar. A clean `end` means: blob digest, size and diffID all verified. */
  readonly tar: Readable;
  /** Resolves after verification; rejects with the error `tar` was destroyed with. */
  readonly done: Promise<LayerTotals>;
}

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const SNIFF_BYTES = ZSTD_MAGIC.length;
const INFLATE_CHUNK_BYTES = 64 * 1024;

function sniff(head: Buffer): LayerCompression | 'unknown' {
  if (head.length >= GZIP_MAGIC.length && head.subarray(0, GZIP_MAGIC.length).equals(GZIP_MAGIC)) return 'gzip';
  if (head.length >= ZSTD_MAGIC.length && head.subarray(0, ZSTD_MAGIC.length).equals(ZSTD_MAGIC)) return 'zstd';
  // An empty or tiny blob cannot be a compressed stream; a tar has no magic at offset 0.
  return head.length < SNIFF_BYTES ? 'unknown' : 'none';
}

/** Hashes and counts the compressed bytes; checks the content's magic against the media type. */
class CompressedTap extends Transform {
  private readonly hash: Hash = createHash('sha256');
  private head: Buffer = Buffer.alloc(0);
  private sniffed = false;
  bytes = 0;

  constructor(private readonly d: Descriptor, private readonly compression: LayerCompression,
    private readonly onProgress?: (n: number) => void) { super(); }

  private checkMagic(final: boolean): void {
    if (this.sniffed || (!final && this.head.length < SNIFF_BYTES)) return;
    this.sniffed = true;
    const found = sniff(this.head);
    const ok = found === this.compression
      // A 1..3-byte or empty blob: only an uncompressed type can hold it (and the tar check fails it).
      || (found === 'unknown' && this.compression === 'none')
      || (found === 'none' && this.compression === 'none');
    if (!ok) {
      throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE',
        `layer ${this.d.digest}: media type ${this.d.mediaType} says ${this.compression === 'none' ? 'uncompressed' : this.compression}, `
        + `but the content is ${found === 'unknown' ? 'too short to be compressed' : found === 'none' ? 'not compressed' : found}`);
    }
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.bytes += chunk.length;
      if (this.bytes > this.d.size) {
        throw new ConvertError('D2C_DIGEST_MISMATCH',
          `layer ${this.d.digest}: the blob is longer than the ${this.d.size} bytes its descriptor declares`);
      }
      if (!this.sniffed) { this.head = Buffer.concat([this.head, chunk]).subarray(0, SNIFF_BYTES); this.checkMagic(false); }
      this.hash.update(chunk);
      this.onProgress?.(this.bytes);
      cb(null, chunk);
    } catch (err) { cb(err as Error); }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.checkMagic(true);
      if (this.bytes < this.d.size) {
        throw new ConvertError('D2C_TRUNCATED',
          `layer ${this.d.digest}: the blob ended after ${this.bytes} of ${this.d.size} bytes`);
      }
      const got = `sha256:${this.hash.digest('hex')}`;
      if (got !== this.d.digest) {
        throw new ConvertError('D2C_DIGEST_MISMATCH', `layer ${this.d.digest}: the blob's sha256 is ${got}: the source serves corrupted data`);
      }
      cb();
    } catch (err) { cb(err as Error); }
  }
}

/** The consumer-facing end: hashes the tar and holds back `end` until every check passed. */
class VerifyingOutput extends Transform {
  private readonly hash: Hash = createHash('sha256');
  bytes = 0;
  /** sha256 of the tar, `sha256:…`, once flushed. */
  computed: string | undefined;

  constructor(private readonly d: Descriptor, private readonly diffId: string | undefined, private readonly upstreamVerified: () => boolean) { super(); }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    // The compressed tap flushes before the decompressor can end, so its verdict is in by now;
    // a decompressor that ends early (trailing bytes it ignores) must not skip the blob checks.
    if (!this.upstreamVerified()) {
      cb(new ConvertError('D2C_BAD_IMAGE', `layer ${this.d.digest}: the compressed stream ended before the blob did`));
      return;
    }
    const got = `sha256:${this.hash.digest('hex')}`;
    this.computed = got;
    if (this.diffId !== undefined && got !== this.diffId) {
      cb(new ConvertError('D2C_DIFFID_MISMATCH',
        `layer ${this.d.digest}: uncompressed content has diffID ${got}, the image config says ${this.diffId}`));
      return;
    }
    cb();
  }
}

function decompressor(c: LayerCompression): Transform {
  // 64 KiB output chunks instead of zlib's 16 KiB: fewer stream turns, ~40 % faster measured.
  if (c === 'gzip') return createGunzip({ chunkSize: INFLATE_CHUNK_BYTES });
  // zstd-napi's stream is a Transform at run time; its typings describe it as its own class.
  if (c === 'zstd') return new DecompressStream() as unknown as Transform;
  return new PassThrough();
}

/** An error of the decompressor: the blob is not a valid stream of its compression. */
function decompressError(err: unknown, d: Descriptor, c: LayerCompression): ConvertError {
  if (isConvertError(err)) return err;
  const e = err as NodeJS.ErrnoException;
  const msg = e?.message ?? String(err);
  if (e?.code === 'Z_BUF_ERROR' || /unexpected end|truncated|incomplete/i.test(msg)) {
    return new ConvertError('D2C_TRUNCATED', `layer ${d.digest}: the ${c} stream ends early (${msg})`, { cause: err });
  }
  return new ConvertError('D2C_BAD_IMAGE', `layer ${d.digest}: corrupt ${c} data (${msg})`, { cause: err });
}

function readError(err: unknown, d: Descriptor): ConvertError {
  if (isConvertError(err)) return err;
  const msg = (err as Error)?.message ?? String(err);
  return new ConvertError('D2C_IO_FAILED', `layer ${d.digest}: reading the layer failed (${msg})`, { cause: err });
}

/**
 * Decompresses `blob` per `d.mediaType` and verifies it against `d` (digest, size) and `diffId`.
 * With `diffId` undefined (a layer known by its compressed digest only, as the publisher gets
 * them), the diffID is computed instead and given in `done`.
 * The caller must read `tar` to the end (or destroy it); `done` settles after the last check.
 */
export function verifiedLayer(blob: Readable, d: Descriptor, diffId: string | undefined, opts: VerifiedLayerOptions = {}): VerifiedLayer {
  const kind = layerMediaType(d.mediaType);
  const compression: LayerCompression = kind?.compression ?? 'none';
  const tap = new CompressedTap(d, compression, opts.onProgress);
  let tapFlushed = false;
  tap.once('end', () => { tapFlushed = true; });
  const output = new VerifyingOutput(d, diffId, () => tapFlushed || tap.writableFinished);
  // A consumer that only awaits `done` must not crash the process with an unhandled 'error'.
  output.on('error', () => {});

  let settle!: { resolve: (v: LayerTotals) => void; reject: (e: ConvertError) => void };
  const done = new Promise<LayerTotals>((resolve, reject) => { settle = { resolve, reject }; });
  done.catch(() => {});
  let failed: ConvertError | undefined;
  const fail = (err: unknown): void => {
    if (failed) return;
    failed = readError(err, d);
    output.destroy(failed);
    blob.destroy();
    settle.reject(failed);
  };

  if (!kind) {
    fail(new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `layer ${d.digest}: media type ${d.mediaType} is not a layer type we accept`));
    return { tar: output, done };
  }
  const signal = opts.signal;
  const onAbort = (): void => fail(new ConvertError('D2C_IO_FAILED', `layer ${d.digest}: aborted`, { cause: signal?.reason }));
  if (signal?.aborted) { onAbort(); return { tar: output, done }; }
  signal?.addEventListener('abort', onAbort, { once: true });

  const inflate = decompressor(compression);
  // Attached before pipeline() so that the error's origin decides its code, not pipeline's echo
  // of it; the first error recorded (a verification verdict, typically) wins.
  blob.on('error', (e: Error) => fail(e));
  tap.on('error', (e: Error) => fail(e));
  inflate.on('error', (e: Error) => fail(decompressError(e, d, compression)));
  pipeline(blob, tap, inflate, output, (err) => {
    signal?.removeEventListener('abort', onAbort);
    // A consumer destroying `tar` early shows up here as ERR_STREAM_PREMATURE_CLOSE.
    if (err) { fail(err); return; }
    if (failed) return;
    const totals = { compressedBytes: tap.bytes, uncompressedBytes: output.bytes };
    settle.resolve(diffId === undefined ? { ...totals, diffId: output.computed! } : totals);
  });
  return { tar: output, done };
}
