/**
 * RepositoryStorage in an S3 bucket (AWS S3 or any S3-compatible store: MinIO, Ceph RGW, s3rver),
 * under a key prefix. The bucket's HTTP endpoint, `http(s)://<endpoint>/<bucket>/<prefix>`, is
 * then the stratum 0 that clients, Squid caches and stock stratum 1s read.
 *
 * Ordering is what makes it safe to read while it is being written: objects and catalogs are
 * uploaded first, each PUT is durable once S3 answers it, and the manifest is one PutObject
 * (atomic on S3: a reader sees the old object or the new one, never part of one) issued only
 * after every upload has been answered. A reader therefore never sees a manifest naming an
 * object that is not there yet.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand,
  S3Client, S3ServiceException, type PutObjectCommandInput, type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { CvmfsError } from '../errors.js';
import { sweepStaleSideFiles, takeFileLock } from './file-lock.js';
import type { ObjectStats, RepositoryStorage, WriterLock } from './storage.js';

/** The same lifetimes `cvmfs-repo serve` sends (docs/cvmfs-format.md §14). */
export const S3_OBJECT_CACHE_CONTROL = 'public, max-age=259200';
export const S3_LETTER_CACHE_CONTROL = 'public, max-age=61';
/** The object in the bucket (under the prefix) naming the writer that holds the lock. */
export const S3_LOCK_OBJECT = '.cvmfs-writer-lock';

const DEFAULT_TIMEOUT_MS = 5 * 60_000;
const DEFAULT_MAX_ATTEMPTS = 5;
const DEFAULT_CONCURRENCY = 32;
const DEFAULT_MULTIPART_BYTES = 32 * 1024 * 1024;
const MIN_PART_BYTES = 5 * 1024 * 1024;
const PART_BYTES = 8 * 1024 * 1024;

export interface S3StorageOptions {
  readonly bucket: string;
  /** Key prefix, without leading or trailing slash ('' for the bucket's root). */
  readonly prefix?: string;
  /** e.g. http://127.0.0.1:9000; default: AWS S3 of `region`. */
  readonly endpoint?: string;
  /** Default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1 with an endpoint, else the SDK's chain (profile). */
  readonly region?: string;
  /** Default: the SDK's default chain (AWS_* environment, shared config and credentials files, …). */
  readonly credentials?: S3ClientConfig['credentials'];
  /** Path-style URLs (endpoint/bucket/key), which every S3-compatible store supports; default true. */
  readonly forcePathStyle?: boolean;
  /** Longest one operation (all its attempts) may take; default 5 min. */
  readonly timeoutMs?: number;
  /** Attempts per request, the SDK's standard retry strategy between them; default 5. */
  readonly maxAttempts?: number;
  /** Requests in flight at once; default 32. */
  readonly concurrency?: number;
  /** Objects above this many bytes are sent as a multipart upload; default 32 MiB, at least 5 MiB. */
  readonly multipartBytes?: number;
  /**
   * The local directory of the host-side writer locks (one subdirectory per endpoint, bucket and
   * prefix); default $XDG_STATE_HOME/cvmfs-graphdriver/s3-locks, else ~/.local/state/….
   */
  readonly lockDir?: string;
  /** The name this host goes by in the bucket's lock object; default os.hostname(). */
  readonly hostname?: string;
  /** Warnings (a lock object that could not be removed); default process.emitWarning. */
  readonly log?: (line: string) => void;
}

/** The content of the bucket's lock object. */
interface BucketLock { readonly host: string; readonly pid: number; readonly nonce: string; readonly owner: string; readonly since: string }

function parseBucketLock(raw: string): BucketLock | undefined {
  try {
    const v = JSON.parse(raw) as Partial<BucketLock>;
    if (typeof v.host === 'string' && typeof v.pid === 'number' && typeof v.nonce === 'string') {
      return { host: v.host, pid: v.pid, nonce: v.nonce, owner: typeof v.owner === 'string' ? v.owner : '', since: typeof v.since === 'string' ? v.since : '?' };
    }
  } catch { /* not ours */ }
  return undefined;
}

function describeBucketLock(raw: string): string {
  const l = parseBucketLock(raw);
  return l ? `host ${l.host} pid ${l.pid}${l.owner ? `: ${l.owner}` : ''}, since ${l.since}` : `unreadable content ${JSON.stringify(raw.slice(0, 80))}`;
}

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
}

/** The S3 error code (NoSuchKey, NoSuchBucket, AccessDenied, …) or the network error's code. */
function errorCode(err: unknown): string {
  if (err instanceof S3ServiceException) return err.name;
  if (err instanceof Error) {
    const e = err as NodeJS.ErrnoException;
    if (e.name === 'AbortError' || e.name === 'TimeoutError') return 'Timeout';
    return typeof e.code === 'string' ? e.code : e.name;
  }
  return 'Error';
}

function httpStatus(err: unknown): number | undefined {
  return err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined;
}

const isNotFound = (err: unknown): boolean => {
  const c = errorCode(err);
  return c === 'NoSuchKey' || c === 'NotFound' || (httpStatus(err) === 404 && c !== 'NoSuchBucket');
};

/** A counting semaphore: at most `n` holders at once. */
class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly n: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.n) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.active++;
    try { return await fn(); } finally {
      const next = this.waiting.shift();
      if (next) next(); else this.active--;
    }
  }
}

function defaultLockDir(env: NodeJS.ProcessEnv): string {
  const xdg = env.XDG_STATE_HOME;
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.local', 'state');
  return path.join(base, 'cvmfs-graphdriver', 's3-locks');
}

/**
 * `s3://bucket/prefix` → bucket and prefix (undefined when `store` is not an s3 URL). The
 * prefix loses leading and trailing slashes; `s3://bucket` is the bucket's root.
 */
export function parseS3Url(store: string): { bucket: string; prefix: string } | undefined {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(store);
  if (m === null) return undefined;
  const bucket = m[1]!;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(bucket)) {
    throw new CvmfsError('CVMFS_BAD_ARGUMENT', `"${bucket}" in ${store} is not an S3 bucket name`);
  }
  const prefix = (m[2] ?? '').replace(/^\/+|\/+$/g, '');
  if (prefix.split('/').some((c) => c === '.' || c === '..' || (prefix !== '' && c === ''))) {
    throw new CvmfsError('CVMFS_BAD_ARGUMENT', `the prefix "${prefix}" in ${store} has an empty, "." or ".." component`);
  }
  return { bucket, prefix };
}

export class S3Storage implements RepositoryStorage {
  readonly location: string;
  readonly client: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  private readonly endpoint: string | undefined;
  private readonly timeoutMs: number;
  private readonly maxAttempts: number;
  private readonly multipartBytes: number;
  private readonly limiter: Limiter;
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly options: S3StorageOptions;

  constructor(o: S3StorageOptions) {
    this.options = o;
    this.bucket = o.bucket;
    this.prefix = (o.prefix ?? '').replace(/^\/+|\/+$/g, '');
    this.endpoint = o.endpoint?.replace(/\/+$/, '');
    this.timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxAttempts = Math.max(1, o.maxAttempts ?? DEFAULT_MAX_ATTEMPTS);
    this.multipartBytes = Math.max(o.multipartBytes ?? DEFAULT_MULTIPART_BYTES, MIN_PART_BYTES);
    this.limiter = new Limiter(Math.max(1, o.concurrency ?? DEFAULT_CONCURRENCY));
    this.location = `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ''}${this.endpoint ? ` at ${this.endpoint}` : ''}`;
    const region = o.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? (this.endpoint ? 'us-east-1' : undefined);
    this.client = new S3Client({
      ...(this.endpoint ? { endpoint: this.endpoint } : {}),
      ...(region ? { region } : {}),
      ...(o.credentials ? { credentials: o.credentials } : {}),
      forcePathStyle: o.forcePathStyle ?? true,
      // Newer SDKs default to aws-chunked uploads with CRC trailers, which s3rver and several
      // other S3-compatible stores do not understand: checksums only where an API requires them.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: this.maxAttempts,
      requestHandler: { connectionTimeout: 10_000, requestTimeout: 60_000, throwOnRequestTimeout: true },
    });
  }

  private key(name: string): string {
    if (name === '' || name.startsWith('/') || name.includes('\0') || name.split('/').some((c) => c === '' || c === '.' || c === '..')) {
      throw new CvmfsError('CVMFS_BAD_ARGUMENT', `"${name}" lies outside the repository`);
    }
    return this.prefix ? `${this.prefix}/${name}` : name;
  }

  private fail(what: string, key: string | undefined, err: unknown): CvmfsError {
    if (err instanceof CvmfsError) return err;
    const code = errorCode(err);
    const where = key === undefined ? `bucket ${this.bucket}` : `s3://${this.bucket}/${key}`;
    const at = this.endpoint ? ` at ${this.endpoint}` : '';
    const detail = code === 'Timeout' ? `no answer within ${Math.round(this.timeoutMs / 1000)} s` : (err as Error).message || code;
    return new CvmfsError('CVMFS_STORAGE_FAILED', `cannot ${what} ${where}${at}: ${code}: ${detail}`, { cause: err });
  }

  /** One SDK call under the concurrency limit and the operation timeout; errors are coded. */
  private async call<T>(what: string, key: string | undefined, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return this.limiter.run(async () => {
      const signal = AbortSignal.timeout(this.timeoutMs);
      try { return await fn(signal); } catch (err) { throw this.fail(what, key, err); }
    });
  }

  /** Tracks a write until it settles, for flush(). */
  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    const done = (): void => { this.inFlight.delete(p); };
    p.then(done, done);
    return p;
  }

  /** No skeleton on S3 (there are no directories); checks that the bucket exists and answers. */
  async init(): Promise<void> {
    try {
      await this.limiter.run(() => this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: AbortSignal.timeout(this.timeoutMs) }));
    } catch (err) {
      const code = errorCode(err);
      const at = this.endpoint ?? 'AWS S3';
      if (code === 'NotFound' || code === 'NoSuchBucket' || httpStatus(err) === 404) {
        throw new CvmfsError('CVMFS_STORAGE_FAILED', `the bucket ${this.bucket} does not exist at ${at} (${code}): create it first`, { cause: err });
      }
      throw this.fail('reach', undefined, err);
    }
  }

  async get(name: string): Promise<Buffer | undefined> {
    const key = this.key(name);
    return this.call('read', key, async (abortSignal) => {
      // The SDK retries a request, not a body cut off after the headers: that is retried here.
      for (let attempt = 1; ; attempt++) {
        let res;
        try {
          res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal });
        } catch (err) {
          if (isNotFound(err)) return undefined;
          throw err;
        }
        if (res.Body === undefined) return Buffer.alloc(0);
        try {
          return Buffer.from(await res.Body.transformToByteArray());
        } catch (err) {
          if (attempt >= this.maxAttempts || abortSignal.aborted) throw err;
          await new Promise((resolve) => setTimeout(resolve, 50 * 2 ** attempt));
        }
      }
    });
  }

  private async exists(key: string): Promise<boolean> {
    return this.call('look up', key, async (abortSignal) => {
      try {
        await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal });
        return true;
      } catch (err) {
        if (isNotFound(err)) return false;
        throw err;
      }
    });
  }

  private async upload(key: string, data: Uint8Array, params: Omit<PutObjectCommandInput, 'Bucket' | 'Key' | 'Body'>): Promise<void> {
    if (data.byteLength <= this.multipartBytes) {
      await this.call('write', key, (abortSignal) =>
        this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: data, ContentLength: data.byteLength, ...params }), { abortSignal }));
      return;
    }
    // Large objects (big catalogs): multipart, its parts in parallel; one slot of the limiter. Parts are
    // at most multipartBytes, else lib-storage sends an object smaller than one part as a single PUT.
    await this.call('write', key, async () => {
      const abortController = new AbortController();
      const timer = setTimeout(() => abortController.abort(), this.timeoutMs);
      try {
        const up = new Upload({
          client: this.client, abortController, queueSize: 4, partSize: Math.min(PART_BYTES, this.multipartBytes), leavePartsOnError: false,
          params: { Bucket: this.bucket, Key: key, Body: Buffer.from(data.buffer, data.byteOffset, data.byteLength), ...params },
        });
        await up.done();
      } finally { clearTimeout(timer); }
    });
  }

  /** Content-addressed: skipped when present (a race between two writers puts the same bytes twice). */
  putObject(objectPath: string, data: Uint8Array): Promise<'written' | 'present'> {
    const key = this.key(objectPath);
    return this.track((async () => {
      if (await this.exists(key)) return 'present' as const;
      await this.upload(key, data, { ContentType: 'application/octet-stream', CacheControl: S3_OBJECT_CACHE_CONTROL });
      return 'written' as const;
    })());
  }

  /** An S3 PUT is durable once answered: waits for every upload still in flight; rejects with the first failure. */
  async flush(): Promise<void> {
    while (this.inFlight.size > 0) {
      const results = await Promise.allSettled([...this.inFlight]);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason instanceof CvmfsError ? failed.reason : this.fail('write', undefined, failed.reason);
    }
  }

  /** One PutObject: S3 replaces an object atomically, so readers see the old letter or the new one. */
  async putLetter(name: string, data: Uint8Array): Promise<void> {
    const key = this.key(name);
    await this.call('write', key, (abortSignal) => this.client.send(new PutObjectCommand({
      Bucket: this.bucket, Key: key, Body: data, ContentLength: data.byteLength,
      ContentType: 'application/x-cvmfs', CacheControl: S3_LETTER_CACHE_CONTROL,
    }), { abortSignal }));
  }

  /*
   * The writer lock. S3 has no create-if-absent that every store implements (If-None-Match on
   * PUT is recent on AWS and missing from s3rver and older MinIO/Ceph), so the lock is two parts:
   *
   * 1. A lock file on this host, in a private state directory (`lockDir`), one per endpoint,
   *    bucket and prefix, by the protocol of file-lock.ts (link(2), takeover of dead pids). It
   *    keeps out every other writer on this host that uses the same state directory.
   * 2. The object `<prefix>/.cvmfs-writer-lock` in the bucket, JSON naming host, pid, a random
   *    nonce, the command and the time. Taking the lock: read it; if present and held by a live
   *    writer (another host, or a live pid of this host), fail with CVMFS_REPO_LOCKED; if it names
   *    a dead pid of this host, take it over; then PUT ours and read it back (of two hosts that
   *    both saw no lock, the one whose PUT landed first reads the other's and gives up).
   *    `verify()` re-reads it (and the local lock) right before each letter, so a writer whose
   *    bucket lock was replaced by another host never publishes. Release deletes it only when it
   *    still holds our nonce.
   *
   * Limits: the bucket lock is check-then-act, not atomic. Two hosts can both pass the read-back
   * if their PUTs and reads interleave exactly; the loser is then caught by its next verify(),
   * and only a replacement landing between a verify() and the letter's PUT (milliseconds) goes
   * unseen. Even then nothing is torn: objects are content-addressed and only added, each letter
   * is replaced whole, so the later manifest wins (a lost update). A writer that died on another
   * host leaves its lock object: remove it by hand after checking that writer is gone
   * (CVMFS_REPO_LOCKED says which object). Hosts are told apart by `hostname` (default
   * os.hostname()): two hosts with one name could take over each other's lock when their pids
   * differ (still caught by verify()). The lock object is served with the repository; it reveals
   * the writer's host name and pid.
   */
  async lock(owner: string): Promise<WriterLock> {
    const dir = path.join(this.options.lockDir ?? defaultLockDir(process.env),
      createHash('sha256').update(`${this.endpoint ?? 'aws'}\n${this.bucket}\n${this.prefix}`).digest('hex').slice(0, 32));
    try {
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      const st = await fs.lstat(dir);
      if (!st.isDirectory() || (typeof process.getuid === 'function' && st.uid !== process.getuid()) || (st.mode & 0o022) !== 0) {
        throw new CvmfsError('CVMFS_STORAGE_FAILED', `the lock directory ${dir} is not a directory private to this user: remove it`);
      }
      // Which store this directory locks, for whoever looks into it.
      await fs.writeFile(path.join(dir, 'store'), `${this.location}\n`, { mode: 0o600 });
    } catch (err) {
      if (err instanceof CvmfsError) throw err;
      throw new CvmfsError('CVMFS_STORAGE_FAILED', `cannot create the lock directory ${dir}: ${(err as Error).message}`, { cause: err });
    }
    const file = path.join(dir, 'writer.lock');
    const local = await takeFileLock({ file, what: `repository ${this.location}` }, owner);
    try {
      await sweepStaleSideFiles(file);
      return await this.takeBucketLock(local, owner);
    } catch (err) {
      await local.release().catch(() => {});
      throw err;
    }
  }

  private async takeBucketLock(local: WriterLock, owner: string): Promise<WriterLock> {
    const key = this.key(S3_LOCK_OBJECT);
    const host = this.options.hostname ?? os.hostname();
    const url = `s3://${this.bucket}/${key}`;
    const held = await this.get(S3_LOCK_OBJECT);
    if (held !== undefined) {
      const raw = held.toString('utf8');
      const l = parseBucketLock(raw);
      const staleHere = l !== undefined && l.host === host && l.pid !== process.pid && !pidAlive(l.pid);
      if (!staleHere) {
        throw new CvmfsError('CVMFS_REPO_LOCKED',
          `repository ${this.location} is being written by another writer (${describeBucketLock(raw)}, lock object ${url}); ` +
          `wait for it, or delete ${url} if that writer is gone`);
      }
    }
    const mine = `${JSON.stringify({ host, pid: process.pid, nonce: randomBytes(16).toString('hex'), owner: owner.replace(/\s+/g, ' '), since: new Date().toISOString() })}\n`;
    await this.call('write', key, (abortSignal) => this.client.send(new PutObjectCommand({
      Bucket: this.bucket, Key: key, Body: Buffer.from(mine), ContentType: 'application/json', CacheControl: 'no-store',
    }), { abortSignal }));
    const back = (await this.get(S3_LOCK_OBJECT))?.toString('utf8');
    if (back !== mine) {
      throw new CvmfsError('CVMFS_REPO_LOCKED',
        `repository ${this.location}: another writer took the lock object ${url} at the same time (${back === undefined ? 'now gone' : describeBucketLock(back)}); try again`);
    }
    let released = false;
    return {
      verify: async () => {
        await local.verify();
        const now = released ? undefined : (await this.get(S3_LOCK_OBJECT))?.toString('utf8');
        if (now !== mine) {
          throw new CvmfsError('CVMFS_REPO_LOCKED',
            `the writer lock object ${url} is no longer held by this writer (${now === undefined ? 'it is gone' : `now ${describeBucketLock(now)}`}): ` +
            'another writer took it over; not publishing, the repository stays at its previous revision');
        }
      },
      release: async () => {
        if (released) return;
        released = true;
        try {
          // Read-compare-delete is not atomic; a lock object replaced in between is the race above.
          if ((await this.get(S3_LOCK_OBJECT))?.toString('utf8') === mine) {
            await this.call('delete', key, (abortSignal) => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal }));
          }
        } catch (err) {
          // Not thrown: release runs after the outcome (a published revision, or the error that
          // stopped it) is decided, and must not replace it. A lock object left behind names this
          // host and a dead pid, so the next writer here takes it over; elsewhere it is removed by hand.
          (this.options.log ?? ((l: string) => process.emitWarning(l)))(
            `could not remove the writer lock object ${url}: ${(err as Error).message}; delete it by hand if no writer is running`);
        } finally {
          await local.release();
        }
      },
    };
  }

  /**
   * Nothing to sweep: objects go straight to their final keys (a PUT is all-or-nothing, so an
   * interrupted upload leaves no partial object, only at worst an unreferenced whole one), and an
   * interrupted multipart upload is aborted by the uploader (parts the store keeps after a crash
   * are invisible to readers and go with a bucket lifecycle rule). The local lock directory's
   * side files are swept when the lock is taken.
   */
  async sweepStaging(): Promise<void> { /* no staging area on S3 */ }

  async objectStats(): Promise<ObjectStats> {
    const prefix = this.key('data') + '/';
    let count = 0, bytes = 0;
    let token: string | undefined;
    do {
      const page = await this.call('list', prefix, (abortSignal) => this.client.send(new ListObjectsV2Command({
        Bucket: this.bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}),
      }), { abortSignal }));
      for (const o of page.Contents ?? []) { count++; bytes += o.Size ?? 0; }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return { count, bytes };
  }

  /** Closes the client's connections. */
  close(): void { this.client.destroy(); }
}
