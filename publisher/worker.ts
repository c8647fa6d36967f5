/**
 * The worker: queued jobs → one writer transaction → one new revision (R43, R46).
 *
 * Model: the worker takes the jobs that are due (at most maxBatch, oldest first) as one batch and runs one `transaction()` for it.
 * Per job, inside the transaction: the digest comes from the key (R41; or, with `allowUnnamed`, from
 * a first pass over the object); a layer already in the repository (layerfs and layers.json) is
 * reused; otherwise the object is fetched (S3 GetObject, streamed), its compression sniffed from
 * its first bytes, and it streams through `verifiedLayer` (digest and size checked, diffID
 * computed) into `/.layers/<xx>/<digest>/layerfs`; then layers.json (compressed digest and diffID,
 * R47) and origin.json (`s3://<bucket>/<key>`), DUCC's `.metadata`, as the converter writes them.
 *
 * A job that fails (missing object, digest mismatch, corrupt data, a tar our rules refuse) fails
 * alone: its ingest was refused before it edited the transaction, which stays usable
 * (transaction.ts), and the nested catalogs made for it alone (`/.layers`, `/.layers/<xx>`) are
 * removed again. The rest of the batch publishes. When no job of a batch changed anything,
 * nothing is published (the transaction is abandoned), so failures leave the repository as it
 * was. A failure of the transaction itself (lock held, storage, keys) requeues the whole batch
 * with a back-off; so do per-job failures worth retrying (store unreachable), up to MAX_ATTEMPTS.
 *
 * Outcomes are written to the job store after the transaction returned, i.e. after the manifest
 * of the new revision is in place: a crash in between leaves jobs publishing, they are queued
 * again at start, and the retry finds their layers present (done, same revision).
 */
import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CodedError, CvmfsError } from '../cvmfs/errors.js';
import { loadState, transaction, type Clock, type RepositoryStorage, type Transaction } from '../cvmfs/writer/index.js';
import {
  isConvertError, layerFs, layerInfoFile, layerInfoJson, layerOriginFile, layerShard, LAYERS_ROOT, MEDIA, verifiedLayer, withOrigin,
  type Descriptor,
} from '../docker2cvmfs/index.js';
import { isPublisherError, isRetryable, PublisherError } from './errors.js';
import type { Job, JobOutcome, JobStore } from './jobs.js';
import type { PublisherMetrics } from './metrics.js';
import type { ObjectStore } from './object-store.js';

export type Logger = (level: 'debug' | 'info' | 'warn' | 'error', line: string) => void;

/** Tries of a job whose failures are worth retrying, before it is failed for good. */
export const MAX_ATTEMPTS = 5;
export const WORKER_DEFAULTS = {
  /** First back-off after a retryable failure; doubles per attempt. */
  retryDelayMs: 2000,
  retryDelayMaxMs: 60_000,
} as const;

export interface WorkerOptions {
  readonly jobs: JobStore;
  readonly objects: ObjectStore;
  readonly storage: RepositoryStorage;
  readonly keysDir: string;
  readonly metrics: PublisherMetrics;
  readonly log: Logger;
  /** Accept keys that name no sha256: the digest is computed in a first pass over the object. */
  readonly allowUnnamed?: boolean;
  readonly threads?: number;
  readonly clock?: Clock;
  readonly retryDelayMs?: number;
  /**
   * Jobs per batch (one revision). Every job of a batch is done only when the batch's revision is
   * published, so a cap bounds the event→done latency (bench/publisher: 38-layer batches of 20 MiB
   * layers made the median ~60 s) at a few percent of throughput. Default 8.
   */
  readonly maxBatch?: number;
}

export const DEFAULT_MAX_BATCH = 8;

/** Raised inside the transaction to abandon it when nothing of the batch is worth a revision. */
class NothingToPublish extends Error {}

/** A failure after a layer was ingested: the transaction holds part of a job, so the batch fails. */
class BatchFailure extends Error {
  constructor(readonly error: unknown) { super(errorMessage(error)); }
}

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** The layer media type of a blob from its first bytes (the store's Content-Type is not trusted). */
export function mediaTypeOf(head: Buffer): string {
  if (head.subarray(0, 2).equals(GZIP_MAGIC)) return MEDIA.ociLayerGzip;
  if (head.subarray(0, 4).equals(ZSTD_MAGIC)) return MEDIA.ociLayerZstd;
  return MEDIA.ociLayer;
}

/**
 * Reads at least `n` bytes (fewer at the end) and puts them back; returns them and the stream to
 * read from then on (a fresh one holding them if the original ended meanwhile).
 */
async function peek(stream: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const parts: Buffer[] = [];
  let have = 0;
  while (have < n) {
    const chunk = stream.read() as Buffer | null;
    if (chunk !== null) { parts.push(chunk); have += chunk.length; continue; }
    if (stream.readableEnded || stream.destroyed) break;
    await new Promise<void>((resolve, reject) => {
      const done = () => { stream.off('readable', done); stream.off('end', done); stream.off('error', fail); resolve(); };
      const fail = (e: Error) => { stream.off('readable', done); stream.off('end', done); reject(e); };
      stream.once('readable', done).once('end', done).once('error', fail);
    });
    if (stream.errored) throw stream.errored;
  }
  const head = Buffer.concat(parts);
  if (stream.readableEnded) return { head, stream: Readable.from(head.length ? [head] : []) };
  if (head.length) stream.unshift(head);
  return { head, stream };
}

function errorMessage(err: unknown): string { return err instanceof Error ? err.message : String(err); }

/** Any failure of one job as a coded publisher error; the reason a client sees. */
function jobError(err: unknown, job: Job): PublisherError {
  if (err instanceof PublisherError) return err;
  const where = `s3://${job.bucket}/${job.key}`;
  if (isConvertError(err)) {
    switch (err.code) {
      case 'D2C_DIGEST_MISMATCH': return new PublisherError('PUB_DIGEST_MISMATCH', `${where}: ${err.message}`, { cause: err });
      case 'D2C_TRUNCATED': return new PublisherError('PUB_TRUNCATED', `${where}: ${err.message}`, { cause: err });
      case 'D2C_IO_FAILED': {
        const inner = (err.cause instanceof PublisherError) ? err.cause : undefined;
        return inner ?? new PublisherError('PUB_S3_FAILED', `${where}: ${err.message}`, { cause: err });
      }
      default: return new PublisherError('PUB_BAD_LAYER', `${where}: ${err.message}`, { cause: err });
    }
  }
  if (err instanceof CvmfsError) {
    if (err.code.startsWith('CVMFS_TAR_')) return new PublisherError('PUB_BAD_LAYER', `${where}: ${err.message}`, { cause: err });
    return new PublisherError('PUB_REPOSITORY_ERROR', `${where}: ${err.message}`, { cause: err });
  }
  if (err instanceof CodedError) return new PublisherError('PUB_REPOSITORY_ERROR', `${where}: ${err.message}`, { cause: err });
  return new PublisherError('PUB_INTERNAL', `${where}: ${errorMessage(err)}`, { cause: err });
}

/**
 * Which of the two failures of an ingest to report. A verdict on the blob (digest, size, the
 * transfer) wins; otherwise the tar reader's own error does, because the layer stream then only
 * echoes it (a tar error tears the pipeline down through the decompressor).
 */
function firstCause(verifyError: unknown, ingestError: unknown): unknown {
  if (isConvertError(verifyError) && ['D2C_DIGEST_MISMATCH', 'D2C_TRUNCATED', 'D2C_IO_FAILED'].includes(verifyError.code)) return verifyError;
  if (ingestError instanceof CvmfsError && ingestError.code.startsWith('CVMFS_TAR_')) return ingestError;
  return verifyError ?? ingestError;
}

/** diffID of a layer already in the repository (its layerfs and a readable layers.json). */
async function storedDiffId(tx: Transaction, digest: string): Promise<string | undefined> {
  if (await tx.lookup(layerFs(digest)) === undefined) return undefined;
  const info = await tx.readFile(layerInfoFile(digest)).catch(() => undefined);
  if (info === undefined) return undefined;
  try {
    const doc = JSON.parse(info.toString('utf8')) as { 'diff-digest'?: unknown }[];
    const d = Array.isArray(doc) ? doc[0]?.['diff-digest'] : undefined;
    return typeof d === 'string' && /^sha256:[0-9a-f]{64}$/.test(d) ? d : undefined;
  } catch { return undefined; }
}

interface Ingested { readonly digest: string; readonly diffId: string; readonly bytes: number; readonly ingestedBytes: number; readonly changed: boolean }

export class Worker {
  private stopping = false;
  private readonly abort = new AbortController();
  private wake: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private loop: Promise<void> | undefined;
  private readonly clock: Clock;

  constructor(private readonly o: WorkerOptions) {
    this.clock = o.clock ?? { now: () => new Date() };
  }

  private now(): number { return this.clock.now().getTime(); }

  /** Starts the loop (idempotent); reads the current revision for the metrics first. */
  start(): void {
    this.loop ??= (async () => {
      try { this.o.metrics.revision((await loadState(this.o.storage)).manifest.revision, false); } catch (err) {
        this.o.log('warn', `cannot read the repository's revision: ${errorMessage(err)}`);
      }
      await this.run();
    })();
  }

  /** New jobs are queued: take them as soon as the current batch is done. */
  notify(): void { this.wake?.(); }

  /**
   * Stops: the batch under way is aborted (nothing of it is published; its jobs are queued again
   * and resume at the next start). Idempotent.
   */
  async close(): Promise<void> {
    this.stopping = true;
    this.abort.abort(new PublisherError('PUB_ABORTED', 'the publisher is shutting down'));
    this.wake?.();
    await this.loop;
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      const batch = this.o.jobs.takeQueued(this.now(), this.o.maxBatch ?? DEFAULT_MAX_BATCH);
      if (batch.length === 0) { await this.sleep(); continue; }
      try { await this.publishBatch(batch); } catch (err) {
        // Only a failure to record outcomes gets here; the jobs stay publishing and resume at start.
        this.o.log('error', `batch of ${batch.length} jobs: ${errorMessage(err)}`);
        await new Promise((r) => setTimeout(r, this.o.retryDelayMs ?? WORKER_DEFAULTS.retryDelayMs));
      }
    }
  }

  private sleep(): Promise<void> {
    return new Promise<void>((resolve) => {
      const due = this.o.jobs.nextDue();
      const done = () => { clearTimeout(this.timer); this.wake = undefined; resolve(); };
      this.wake = done;
      if (due !== undefined) this.timer = setTimeout(done, Math.max(10, due - this.now()));
    });
  }

  private backoff(attempts: number): number {
    const base = this.o.retryDelayMs ?? WORKER_DEFAULTS.retryDelayMs;
    return Math.min(WORKER_DEFAULTS.retryDelayMaxMs, base * 2 ** Math.max(0, attempts));
  }

  /** The outcome of a job that failed with `err`: retried later, or failed for good. */
  private failure(job: Job, err: PublisherError, digest?: string): JobOutcome {
    if (this.stopping && (err.code === 'PUB_ABORTED' || this.abort.signal.aborted)) {
      return { state: 'queued', code: 'PUB_ABORTED', reason: err.message, notBefore: 0, countAttempt: false };
    }
    if (isRetryable(err) && job.attempts + 1 < MAX_ATTEMPTS) {
      return { state: 'queued', code: err.code, reason: err.message, notBefore: this.now() + this.backoff(job.attempts), countAttempt: true };
    }
    return { state: 'failed', code: err.code, reason: err.message, ...(digest ? { digest } : {}) };
  }

  private async publishBatch(batch: readonly Job[]): Promise<void> {
    const { log } = this.o;
    log('info', `publishing a batch of ${batch.length}: ${batch.map((j) => `s3://${j.bucket}/${j.key}`).join(', ')}`);
    const outcomes = new Map<number, JobOutcome>();
    const good = new Map<number, Ingested>();
    let result: { revision: number; published: boolean } | undefined;
    try {
      const r = await transaction({ storage: this.o.storage, keysDir: this.o.keysDir, clock: this.o.clock, threads: this.o.threads, what: 'cvmfs-publisher' }, async (tx) => {
        let worthPublishing = false;
        for (const job of batch) {
          if (this.abort.signal.aborted) throw this.abort.signal.reason;
          let digest = job.digest;
          try {
            digest ??= await this.digestOfUnnamed(job);
            const got = await this.publishJob(tx, job, digest);
            good.set(job.id, got);
            if (got.changed) worthPublishing = true;
          } catch (err) {
            if (err instanceof BatchFailure) throw err.error;
            if (err instanceof CvmfsError && err.code === 'CVMFS_CLOSED') throw err; // the transaction itself is gone
            const e = jobError(err, job);
            log(isRetryable(e) ? 'warn' : 'error', `job ${job.id}: ${e.message}`);
            outcomes.set(job.id, this.failure(job, e, digest));
          }
        }
        if (this.abort.signal.aborted) throw this.abort.signal.reason;
        if (!worthPublishing && tx.changed) throw new NothingToPublish();
      }).catch((err: unknown) => {
        if (err instanceof NothingToPublish) return undefined;
        throw err;
      });
      result = r ? { revision: r.revision, published: r.published } : undefined;
      if (result === undefined) result = { revision: (await loadState(this.o.storage)).manifest.revision, published: false };
    } catch (err) {
      const e = isPublisherError(err) ? err
        : err instanceof CodedError ? new PublisherError('PUB_REPOSITORY_ERROR', `publishing the batch failed: ${err.message}`, { cause: err })
          : new PublisherError('PUB_INTERNAL', `publishing the batch failed: ${errorMessage(err)}`, { cause: err });
      log(this.stopping ? 'info' : 'error', e.message);
      for (const job of batch) if (!outcomes.has(job.id) || outcomes.get(job.id)!.state !== 'failed') outcomes.set(job.id, this.failure(job, e));
      good.clear();
    }
    if (result) {
      for (const job of batch) {
        const g = good.get(job.id);
        if (!g) continue;
        outcomes.set(job.id, { state: 'done', digest: g.digest, diffId: g.diffId, revision: result.revision, bytes: g.bytes, ingestedBytes: g.ingestedBytes });
      }
    }
    const now = this.now();
    this.o.jobs.finish(outcomes, now);
    if (result) {
      this.o.metrics.revision(result.revision, result.published);
      if (result.published) log('info', `published revision ${result.revision}`);
    }
    for (const job of batch) {
      const o = outcomes.get(job.id);
      if (o?.state === 'done') {
        const g = good.get(job.id)!;
        this.o.metrics.finished('done', (now - job.queuedAt) / 1000);
        if (g.changed && g.bytes > 0) this.o.metrics.ingested(g.bytes, g.ingestedBytes);
        log('info', `job ${job.id} s3://${job.bucket}/${job.key}: done, ${o.digest} (diffID ${o.diffId}) in revision ${o.revision}`);
      } else if (o?.state === 'failed') this.o.metrics.finished('failed', (now - job.queuedAt) / 1000);
    }
  }

  /** --allow-unnamed: a first pass over the object for its sha256 (the layer path needs it up front). */
  private async digestOfUnnamed(job: Job): Promise<string> {
    if (!this.o.allowUnnamed) {
      throw new PublisherError('PUB_CANNOT_VERIFY',
        `s3://${job.bucket}/${job.key}: cannot verify: the key names no sha256 (its last component must be <64 hex> or sha256:<64 hex>); start the publisher with --allow-unnamed to accept such keys`);
    }
    const obj = await this.o.objects.get(job.bucket, job.key, this.abort.signal);
    this.o.log('debug', `job ${job.id}: hashing ${obj.size} bytes (--allow-unnamed)`);
    const hash = createHash('sha256');
    await pipeline(obj.body, new Writable({ write(c: Buffer, _e, cb) { hash.update(c); cb(); } }), { signal: this.abort.signal });
    return `sha256:${hash.digest('hex')}`;
  }

  private async publishJob(tx: Transaction, job: Job, digest: string): Promise<Ingested> {
    const origin = `s3://${job.bucket}/${job.key}`;
    const present = await storedDiffId(tx, digest);
    if (present !== undefined) {
      const changed = await this.addOrigin(tx, digest, origin);
      this.o.log('info', `job ${job.id}: layer ${digest} is in the repository already`);
      return { digest, diffId: present, bytes: 0, ingestedBytes: 0, changed };
    }
    const obj = await this.o.objects.get(job.bucket, job.key, this.abort.signal);
    this.o.log('debug', `job ${job.id}: fetching ${obj.size} bytes`);
    let created: string | undefined;
    let totals: { compressedBytes: number; uncompressedBytes: number; diffId?: string };
    let body = obj.body;
    try {
      const peeked = await peek(body, ZSTD_MAGIC.length);
      body = peeked.stream;
      const d: Descriptor = { mediaType: mediaTypeOf(peeked.head), digest, size: obj.size };
      // Nested catalogs above the layer, made for this job if missing (and removed if it fails).
      for (const c of [LAYERS_ROOT, layerShard(digest)]) {
        if (await tx.lookup(c) === undefined && created === undefined) created = c;
        await tx.ensureCatalog(c);
      }
      const { tar, done } = verifiedLayer(body, d, undefined, { signal: this.abort.signal });
      let verifyError: unknown;
      done.catch((e: unknown) => { verifyError = e; });
      try {
        await tx.ingest(layerFs(digest), tar);
        totals = await done;
        this.o.log('debug', `job ${job.id}: ingested ${totals.compressedBytes} → ${totals.uncompressedBytes} bytes`);
      } catch (err) {
        body.destroy();
        tar.destroy();
        await Promise.race([done.catch(() => {}), new Promise((r) => setTimeout(r, 200))]);
        throw firstCause(verifyError, err);
      }
    } catch (err) {
      body.destroy();
      obj.body.destroy();
      if (created !== undefined) await tx.remove(created).catch((e: unknown) => { throw new BatchFailure(e); });
      throw err;
    }
    const diffId = totals.diffId!;
    try {
      await tx.writeFile(layerInfoFile(digest), layerInfoJson(digest, diffId, totals.uncompressedBytes, this.clock.now()));
      await this.addOrigin(tx, digest, origin);
    } catch (err) { throw new BatchFailure(err); }
    return { digest, diffId, bytes: totals.compressedBytes, ingestedBytes: totals.uncompressedBytes, changed: true };
  }

  private async addOrigin(tx: Transaction, digest: string, origin: string): Promise<boolean> {
    const next = withOrigin(await tx.readFile(layerOriginFile(digest)).catch(() => undefined), origin);
    if (next === undefined) return false;
    await tx.writeFile(layerOriginFile(digest), next);
    return true;
  }
}
