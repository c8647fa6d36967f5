/**
 * Objects from the S3 API (R40: any S3-compatible store, not MinIO's files on disk), through
 * `@aws-sdk/client-s3` v3 with path-style addressing. Credentials come from the SDK's default
 * chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, …).
 *
 * Every call settles: the answer's headers must arrive within `headersTimeoutMs`, and the body
 * must not go silent for `idleTimeoutMs` while we are waiting for it. The idle clock only runs
 * while our side has taken everything delivered (its buffer is empty), so a slow ingest
 * (backpressure) is never blamed on the store.
 */
import { PassThrough, type Readable } from 'node:stream';
import { GetObjectCommand, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { PublisherError } from './errors.js';

export interface StoredObject {
  /** The object's bytes, streamed; destroy it when not read to the end. */
  readonly body: Readable;
  /** Content-Length. */
  readonly size: number;
  /** ETag without quotes. */
  readonly etag: string;
}

/** Where the publisher reads uploaded layers from. */
export interface ObjectStore {
  /** PUB_OBJECT_NOT_FOUND, PUB_S3_FAILED or PUB_S3_TIMEOUT when the object cannot be had. */
  get(bucket: string, key: string, signal?: AbortSignal): Promise<StoredObject>;
  close(): void;
}

export interface S3StoreOptions {
  readonly endpoint: string;
  readonly region?: string;
  readonly headersTimeoutMs?: number;
  readonly idleTimeoutMs?: number;
  /** Passed on to the SDK (credentials in tests). */
  readonly credentials?: S3ClientConfig['credentials'];
}

export const S3_DEFAULTS = {
  region: 'us-east-1',
  headersTimeoutMs: 30_000,
  idleTimeoutMs: 60_000,
  connectionTimeoutMs: 10_000,
} as const;

/** The client configuration the publisher (and its tests) use with any S3 store. */
export function s3ClientConfig(o: S3StoreOptions): S3ClientConfig {
  return {
    endpoint: o.endpoint,
    region: o.region ?? S3_DEFAULTS.region,
    forcePathStyle: true,
    // Stores such as s3rver do not understand the SDK's newer aws-chunked uploads and CRC checks.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: { connectionTimeout: S3_DEFAULTS.connectionTimeoutMs },
    maxAttempts: 3,
    ...(o.credentials ? { credentials: o.credentials } : {}),
  };
}

interface SdkError { name?: string; message?: string; $metadata?: { httpStatusCode?: number } }

/** A body that must keep delivering while we want more; see the model above. */
function watched(body: Readable, idleMs: number, what: string): Readable {
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  let last = Date.now();
  body.on('data', () => { last = Date.now(); });
  const timer = setInterval(() => {
    if (out.readableLength > 0 || out.writableLength > 0) { last = Date.now(); return; } // our side is behind
    if (Date.now() - last > idleMs) {
      clearInterval(timer);
      const err = new PublisherError('PUB_S3_TIMEOUT', `${what}: no data for ${idleMs / 1000} s`);
      body.destroy(err);
      out.destroy(err);
    }
  }, Math.max(100, Math.min(1000, idleMs / 4)));
  timer.unref();
  const stop = () => clearInterval(timer);
  out.once('close', stop);
  body.once('close', stop);
  body.once('error', (err) => out.destroy(err));
  out.once('close', () => { if (!body.readableEnded) body.destroy(); });
  body.pipe(out);
  return out;
}

export class S3ObjectStore implements ObjectStore {
  private readonly client: S3Client;
  private readonly headersTimeoutMs: number;
  private readonly idleTimeoutMs: number;

  constructor(private readonly o: S3StoreOptions) {
    this.client = new S3Client(s3ClientConfig(o));
    this.headersTimeoutMs = o.headersTimeoutMs ?? S3_DEFAULTS.headersTimeoutMs;
    this.idleTimeoutMs = o.idleTimeoutMs ?? S3_DEFAULTS.idleTimeoutMs;
  }

  async get(bucket: string, key: string, signal?: AbortSignal): Promise<StoredObject> {
    const what = `s3://${bucket}/${key} at ${this.o.endpoint}`;
    const ac = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; ac.abort(); }, this.headersTimeoutMs);
    const onAbort = () => ac.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: ac.signal });
      const body = res.Body as Readable | undefined;
      if (body === undefined || typeof (body as Readable).pipe !== 'function') throw new PublisherError('PUB_S3_FAILED', `${what}: the answer has no body`);
      const size = res.ContentLength;
      if (size === undefined || !Number.isSafeInteger(size) || size < 0) {
        body.destroy();
        throw new PublisherError('PUB_S3_FAILED', `${what}: the answer has no Content-Length`);
      }
      // From here on, the caller's signal aborts through the pipeline (verifiedLayer); our
      // controller is only for the headers.
      return { body: watched(body, this.idleTimeoutMs, what), size, etag: (res.ETag ?? '').replace(/^"(.*)"$/, '$1') };
    } catch (err) {
      if (err instanceof PublisherError) throw err;
      if (timedOut) throw new PublisherError('PUB_S3_TIMEOUT', `${what}: no answer within ${this.headersTimeoutMs / 1000} s`, { cause: err });
      if (signal?.aborted) throw new PublisherError('PUB_ABORTED', `${what}: aborted`, { cause: err });
      const e = err as SdkError;
      const status = e.$metadata?.httpStatusCode;
      if (e.name === 'NoSuchKey' || e.name === 'NotFound' || e.name === 'NoSuchBucket' || status === 404) {
        throw new PublisherError('PUB_OBJECT_NOT_FOUND', `${what}: the object does not exist (${e.name ?? status})`, { cause: err });
      }
      throw new PublisherError('PUB_S3_FAILED', `${what}: ${e.name ?? 'error'}${status ? ` (HTTP ${status})` : ''}: ${e.message ?? String(err)}`, { cause: err });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  close(): void { this.client.destroy(); }
}
