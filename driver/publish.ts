/**
 * Publishing a committed layer (thin commits, R9 opt-in; thin-images-and-layout.md §3.6, §7, R44):
 * the layer tar is gzipped reproducibly to a spool file while both digests are computed, uploaded
 * to the publisher's S3 bucket under the hex sha256 of the gzip bytes, and the publisher's status
 * API is polled until the layer is in the repository ("done"), has failed (its reason ends the
 * wait at once), or an overall deadline passes. Knows S3 and the status API, nothing of layers.
 *
 * Status contract: `GET <publisher>/status/<key>?format=json` with `Authorization: Bearer <token>`
 * answers `{key, state: queued|publishing|done|failed|unknown, reason?, digest, diffId?, revision?,
 * url?}`. "unknown" right after the upload may mean the bucket's webhook has not arrived yet, so it
 * keeps the wait going like "queued" and "publishing".
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { constants as zc, createGzip } from 'node:zlib';
import { S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { Logger } from './driver.js';
import { DriverError } from './errors.js';

export interface PublishSettings {
  /** Base URL of the publisher's status API, e.g. http://publisher.example.org:3000. */
  readonly publisherUrl: string;
  /** Bearer token for the status API; or `tokenFile`, read at every commit (so it can be rotated). */
  readonly token?: string;
  readonly tokenFile?: string;
  readonly s3: {
    readonly bucket: string;
    /** e.g. http://publisher.example.org:9000; default AWS S3 of `region`. Path-style URLs always. */
    readonly endpoint?: string;
    /** Key prefix, without leading or trailing slash; '' for the bucket's root. */
    readonly prefix?: string;
    readonly region?: string;
    /** Default: the SDK's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, …). */
    readonly credentials?: { readonly accessKeyId: string; readonly secretAccessKey: string; readonly sessionToken?: string };
  };
  /** How long to wait for "done" after the upload; default 10 minutes. */
  readonly deadlineMs?: number;
  /** Timeout of one status request; default 10 s (never past the deadline). */
  readonly requestTimeoutMs?: number;
  /** First pause between status requests, growing to 5 s; default 1 s. */
  readonly pollIntervalMs?: number;
}

export const DEFAULT_PUBLISH_DEADLINE_MS = 10 * 60_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
const DEFAULT_POLL_MS = 1_000;
const MAX_POLL_MS = 5_000;
/** The shortest status request made near the deadline. */
const MIN_REQUEST_MS = 200;
const PART_BYTES = 8 * 1024 * 1024;
/** Fixed, so that the same diff gives the same bytes and the same key (Node writes mtime 0, no name). */
const GZIP_LEVEL = 6;

export interface SpooledLayer {
  readonly file: string;
  /** Hex sha256 of the gzip bytes: the object key and the thin.json digest. */
  readonly digest: string;
  /** Hex sha256 of the uncompressed tar. */
  readonly diffId: string;
  /** Bytes of the gzip file. */
  readonly size: number;
}

export interface PublishedLayer {
  readonly key: string;
  readonly digest: string;
  /** cvmfs://<fqrn>/<path of the layer directory>. */
  readonly url: string;
  /** The repository revision that holds the layer, when the publisher says. */
  readonly revision?: number;
}

const HEX64 = /^[0-9a-f]{64}$/;
const STATES = ['queued', 'publishing', 'done', 'failed', 'unknown'] as const;
type State = (typeof STATES)[number];
interface StatusAnswer {
  readonly state: State;
  readonly reason?: string;
  readonly digest?: string;
  readonly diffId?: string;
  readonly revision?: number;
  readonly url?: string;
}

const failed = (why: string, cause?: unknown) => new DriverError('DRIVER_PUBLISH_FAILED', why, cause === undefined ? undefined : { cause });
const messageOf = (err: unknown) => (err instanceof Error ? `${err.name !== 'Error' ? `${err.name}: ` : ''}${err.message}` : String(err));
const bare = (d: string) => d.replace(/^sha256:/, '');

function hashing(h: ReturnType<typeof createHash>, count?: { n: number }): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) { h.update(chunk); if (count) count.n += chunk.length; cb(null, chunk); },
  });
}

/**
 * Writes `tar` gzipped to `file` (created exclusively, 0600), hashing the tar and the gzip bytes.
 * Reproducible: fixed level and header, so the same tar always gives the same digest.
 */
export async function spoolLayer(tar: Readable, file: string): Promise<SpooledLayer> {
  const tarHash = createHash('sha256');
  const gzHash = createHash('sha256');
  const count = { n: 0 };
  await pipeline(tar, hashing(tarHash), createGzip({ level: GZIP_LEVEL, memLevel: 8, strategy: zc.Z_DEFAULT_STRATEGY }),
    hashing(gzHash, count), createWriteStream(file, { flags: 'wx', mode: 0o600 }));
  return { file, digest: gzHash.digest('hex'), diffId: tarHash.digest('hex'), size: count.n };
}

function parseStatus(text: string): StatusAnswer | string {
  let doc: unknown;
  try { doc = JSON.parse(text); } catch { return `not JSON: ${JSON.stringify(text.slice(0, 200))}`; }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return 'not a JSON object';
  const o = doc as Record<string, unknown>;
  const state = STATES.find((s) => s === o.state);
  if (!state) return `"state" is ${JSON.stringify(o.state)}, not one of ${STATES.join(', ')}`;
  const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
  const revision = typeof o.revision === 'number' && Number.isInteger(o.revision) ? o.revision : undefined;
  const [reason, digest, diffId, url] = [str(o.reason), str(o.digest), str(o.diffId), str(o.url)];
  return { state, ...(reason ? { reason } : {}), ...(digest ? { digest } : {}), ...(diffId ? { diffId } : {}),
    ...(revision !== undefined ? { revision } : {}), ...(url ? { url } : {}) };
}

/** One status request: an answer, a reason to keep waiting (`retry`), or an error that ends the wait. */
type Poll = { readonly answer: StatusAnswer } | { readonly retry: string };

export class LayerPublisher {
  private readonly client: S3Client;
  private readonly base: URL;
  private readonly prefix: string;
  private readonly deadlineMs: number;
  private readonly requestTimeoutMs: number;
  private readonly pollMs: number;

  constructor(private readonly s: PublishSettings, private readonly log: Logger) {
    const bad = (why: string) => new DriverError('DRIVER_PUBLISH_CONFIG', why);
    try { this.base = new URL(s.publisherUrl.replace(/\/+$/, '') + '/'); } catch { throw bad(`publisher URL ${JSON.stringify(s.publisherUrl)} is not a URL`); }
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') throw bad(`publisher URL ${s.publisherUrl} is not http(s)`);
    if (!s.token && !s.tokenFile) throw bad('no publisher token (CVMFSGD_PUBLISHER_TOKEN or CVMFSGD_PUBLISHER_TOKEN_FILE)');
    if (!s.s3.bucket) throw bad('no S3 bucket (CVMFSGD_PUBLISH_S3_BUCKET)');
    if (s.s3.endpoint) { try { new URL(s.s3.endpoint); } catch { throw bad(`S3 endpoint ${JSON.stringify(s.s3.endpoint)} is not a URL`); } }
    this.prefix = (s.s3.prefix ?? '').replace(/^\/+|\/+$/g, '');
    if (this.prefix.split('/').some((c) => c === '.' || c === '..')) throw bad(`S3 key prefix ${JSON.stringify(s.s3.prefix)} has a . or .. component`);
    const positive = (v: number | undefined, d: number, what: string) => {
      if (v === undefined) return d;
      if (!Number.isFinite(v) || v <= 0) throw bad(`${what} must be > 0, not ${v}`);
      return v;
    };
    this.deadlineMs = positive(s.deadlineMs, DEFAULT_PUBLISH_DEADLINE_MS, 'the publish deadline');
    this.requestTimeoutMs = positive(s.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS, 'the status request timeout');
    this.pollMs = positive(s.pollIntervalMs, DEFAULT_POLL_MS, 'the status poll interval');
    this.client = new S3Client({
      ...(s.s3.endpoint ? { endpoint: s.s3.endpoint } : {}),
      region: s.s3.region || 'us-east-1',
      ...(s.s3.credentials ? { credentials: { ...s.s3.credentials } } : {}),
      forcePathStyle: true,
      // Newer SDKs default to aws-chunked uploads with CRC trailers, which several S3-compatible
      // stores do not understand: checksums only where an API requires them.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 5,
      requestHandler: { connectionTimeout: 10_000, requestTimeout: 120_000, throwOnRequestTimeout: true },
    });
  }

  /** Where layers go, for logs and `docker info`. */
  describe(): string {
    return `${this.base.href} (s3://${this.s.s3.bucket}${this.prefix ? `/${this.prefix}` : ''}${this.s.s3.endpoint ? ` at ${this.s.s3.endpoint}` : ''})`;
  }

  keyOf(digest: string): string { return this.prefix ? `${this.prefix}/${digest}` : digest; }

  /** Uploads, then waits for the publisher to report the layer in the repository. */
  async publish(layer: SpooledLayer, signal?: AbortSignal): Promise<PublishedLayer> {
    const key = await this.upload(layer, signal);
    return this.waitDone(key, layer, signal);
  }

  async upload(layer: SpooledLayer, signal?: AbortSignal): Promise<string> {
    const key = this.keyOf(layer.digest);
    const where = `s3://${this.s.s3.bucket}/${key}${this.s.s3.endpoint ? ` at ${this.s.s3.endpoint}` : ''}`;
    signal?.throwIfAborted();
    const abortController = new AbortController();
    const onAbort = () => abortController.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    const t0 = Date.now();
    try {
      const up = new Upload({
        client: this.client, abortController, queueSize: 2, partSize: PART_BYTES, leavePartsOnError: false,
        params: { Bucket: this.s.s3.bucket, Key: key, Body: createReadStream(layer.file), ContentType: 'application/x-gzip' },
      });
      await up.done();
    } catch (err) {
      if (signal?.aborted) throw new DriverError('DRIVER_PUBLISH_ABORTED', `upload to ${where} abandoned: the daemon closed the Diff request`, { cause: err });
      const name = err instanceof Error ? err.name : '';
      const code = ['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'Forbidden'].includes(name) ? 'DRIVER_PUBLISH_UNAUTHORIZED' : 'DRIVER_PUBLISH_FAILED';
      throw new DriverError(code, `upload of ${layer.size} bytes to ${where} failed: ${messageOf(err)}`, { cause: err });
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    this.log('info', `uploaded layer sha256:${layer.digest} (${layer.size} bytes) to ${where} in ${Date.now() - t0} ms`);
    return key;
  }

  private async token(): Promise<string> {
    if (this.s.token) return this.s.token;
    const file = this.s.tokenFile!;
    const t = await fs.readFile(file, 'utf8').then((x) => x.trim(), (err: Error) => {
      throw new DriverError('DRIVER_PUBLISH_CONFIG', `cannot read the publisher token file ${file}: ${err.message}`, { cause: err });
    });
    if (!t) throw new DriverError('DRIVER_PUBLISH_CONFIG', `the publisher token file ${file} is empty`);
    return t;
  }

  private statusUrl(key: string): URL {
    const u = new URL(`status/${key.split('/').map(encodeURIComponent).join('/')}`, this.base);
    u.searchParams.set('format', 'json');
    return u;
  }

  private async poll(url: URL, token: string, timeoutMs: number, signal?: AbortSignal): Promise<Poll> {
    const timeout = AbortSignal.timeout(timeoutMs);
    let res: Response;
    let text: string;
    try {
      res = await fetch(url, { headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' }, signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
      text = await res.text();
    } catch (err) {
      if (signal?.aborted) throw new DriverError('DRIVER_PUBLISH_ABORTED', `waiting for ${url.origin}: the daemon closed the Diff request`, { cause: err });
      if (timeout.aborted) return { retry: `no answer within ${timeoutMs} ms` };
      const cause = (err as { cause?: unknown }).cause;
      return { retry: `request failed: ${messageOf(cause ?? err)}` };
    }
    if (res.status === 401 || res.status === 403) {
      throw new DriverError('DRIVER_PUBLISH_UNAUTHORIZED', `publisher ${url.origin} refused the status request (HTTP ${res.status}): check CVMFSGD_PUBLISHER_TOKEN`);
    }
    if (res.status === 200 || res.status === 404) {
      const a = parseStatus(text);
      if (typeof a !== 'string') return { answer: a };
      if (res.status === 200) throw failed(`publisher ${url.origin} answered the status of ${url.pathname} with ${a}`);
    }
    if (res.status === 400) throw failed(`publisher ${url.origin} rejected the status request ${url.pathname} (HTTP 400): ${text.slice(0, 300)}`);
    return { retry: `HTTP ${res.status}${text ? `: ${text.slice(0, 200).trim()}` : ''}` };
  }

  /** Polls the status until "done" (checked against what was uploaded), "failed", or the deadline. */
  async waitDone(key: string, layer: SpooledLayer, signal?: AbortSignal): Promise<PublishedLayer> {
    const url = this.statusUrl(key);
    const start = Date.now();
    const end = start + this.deadlineMs;
    /** The last state answered, and what went wrong since (a failed request, an error status). */
    let lastState: State | undefined;
    let problem: string | undefined;
    let pause = this.pollMs;
    for (;;) {
      if (signal?.aborted) throw new DriverError('DRIVER_PUBLISH_ABORTED', `waiting for the publisher to publish ${key}: the daemon closed the Diff request`);
      const token = await this.token();
      // A request cut short by the deadline says nothing about the publisher: it does not replace the last answer.
      const timeoutMs = Math.min(this.requestTimeoutMs, Math.max(MIN_REQUEST_MS, end - Date.now()));
      const p = await this.poll(url, token, timeoutMs, signal);
      if ('answer' in p) {
        const a = p.answer;
        if (a.state === 'failed') throw failed(`publisher ${url.origin} failed to publish ${key}: ${a.reason ?? 'no reason given'}`);
        if (a.state === 'done') return this.checkDone(key, layer, a, url);
        lastState = a.state;
        problem = undefined;
      } else {
        if (timeoutMs === this.requestTimeoutMs || problem === undefined) problem = p.retry;
        this.log('debug', `status of ${key} from ${url.origin}: ${p.retry}`);
      }
      const left = end - Date.now();
      if (left <= 0) {
        const last = lastState ? `last answer: ${lastState}${problem ? `, then ${problem}` : ''}` : `no answer: ${problem ?? 'none'}`;
        throw new DriverError('DRIVER_PUBLISH_TIMEOUT', `publisher ${url.origin} did not report ${key} done within ${Math.round(this.deadlineMs / 100) / 10} s `
          + `(CVMFSGD_PUBLISH_DEADLINE_SECONDS); ${last}`);
      }
      try { await sleep(Math.min(pause, left), undefined, signal ? { signal } : {}); } catch { /* aborted: checked above */ }
      pause = Math.min(MAX_POLL_MS, pause * 1.5);
    }
  }

  private checkDone(key: string, layer: SpooledLayer, a: StatusAnswer, url: URL): PublishedLayer {
    const who = `publisher ${url.origin}`;
    if (a.digest !== undefined && bare(a.digest) !== layer.digest) {
      throw failed(`${who} reports ${key} done with digest ${a.digest}, but the uploaded layer is sha256:${layer.digest}`);
    }
    if (a.diffId !== undefined && HEX64.test(bare(a.diffId)) && bare(a.diffId) !== layer.diffId) {
      throw failed(`${who} reports ${key} done with diffID ${a.diffId}, but the uploaded layer's diffID is sha256:${layer.diffId}`);
    }
    if (a.url === undefined || !/^cvmfs:\/\/[^/]+\/.+$/.test(a.url)) {
      throw failed(`${who} reports ${key} done without a cvmfs://<repository>/<path> URL (${JSON.stringify(a.url ?? null)}): the layer cannot be located`);
    }
    return { key, digest: layer.digest, url: a.url, ...(a.revision !== undefined ? { revision: a.revision } : {}) };
  }
}
