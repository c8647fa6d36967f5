/**
 * The publisher's HTTP edge (thin-images-and-layout.md §7.4, R42–R45): protocol only.
 *
 *   POST /events, POST /     MinIO bucket notifications → jobs; 200 only after the rows are committed
 *   GET  /status/<key>       `publishing` | `done` | `unknown` | `failed: <reason>` (text/plain),
 *                            or with ?format=json the job as JSON
 *   GET  /healthz            liveness and queue counts (no token)
 *   GET  /metrics            Prometheus text format (no token: counts only)
 *   GET  /cvmfs/<fqrn>/…     with `serve`: the repository, read-only, as `cvmfs-repo serve` serves it
 *
 * With a token set, the webhook and the status API need `Authorization: Bearer <token>` (MinIO's
 * `auth_token`; a bare token, as MinIO releases before 2023 send it, is accepted too), compared in
 * constant time; anything else is 401 PUB_BAD_TOKEN and no job. Errors are mapped once, by kind
 * (errors.ts), to `{"code", "error"}` JSON answers.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type NextFunction, type Request, type Response } from 'express';
import { repositoryHandler } from '../cvmfs/server/http-server.js';
import { layerUrl } from '../docker2cvmfs/index.js';
import { httpStatusOf, PublisherError } from './errors.js';
import { isCreateEvent, parseEventBody, WEBHOOK_BODY_MAX_BYTES, type EventRecord } from './events.js';
import type { Job, JobStore } from './jobs.js';
import { digestOfKey } from './layer-key.js';
import type { PublisherMetrics } from './metrics.js';
import type { Logger } from './worker.js';

export interface PublisherAppOptions {
  readonly jobs: JobStore;
  readonly metrics: PublisherMetrics;
  readonly fqrn: string;
  /** Called after new jobs were committed (wakes the worker). */
  readonly onQueued: () => void;
  readonly log: Logger;
  /** Bearer token of the webhook and the status API; none: both are open. */
  readonly token?: string;
  /** Only events of these buckets are taken; others are logged and ignored. */
  readonly buckets?: readonly string[];
  /** Serve this repository directory at /cvmfs/<fqrn>/. */
  readonly serveDir?: string;
  readonly clock?: { now(): Date };
}

/** `GET /status/<key>?format=json`. Times are ISO 8601; digests `sha256:<hex>`. */
export interface JobStatus {
  readonly key: string;
  readonly state: 'queued' | 'publishing' | 'done' | 'failed' | 'unknown';
  readonly reason?: string;
  readonly code?: string;
  readonly digest?: string;
  readonly diffId?: string;
  readonly revision?: number;
  /** Where the layer is: `cvmfs://<fqrn>/.layers/<xx>/<hex>/layerfs` (for thin.json). */
  readonly url?: string;
  readonly queuedAt?: string;
  readonly startedAt?: string;
  readonly finishedAt?: string;
  /** From the event to done or failed. */
  readonly seconds?: number;
}

const iso = (ms: number | undefined): string | undefined => (ms === undefined ? undefined : new Date(ms).toISOString());

export function statusOf(job: Job | undefined, key: string, fqrn: string): JobStatus {
  if (!job) return { key, state: 'unknown' };
  const finished = job.state === 'done' || job.state === 'failed';
  const s: JobStatus = {
    key, state: job.state,
    reason: job.state === 'failed' || job.state === 'queued' ? job.reason : undefined,
    code: job.state === 'failed' || job.state === 'queued' ? job.code : undefined,
    digest: job.digest, diffId: job.diffId, revision: job.state === 'done' ? job.revision : undefined,
    url: job.state === 'done' && job.digest ? layerUrl(fqrn, job.digest) : undefined,
    queuedAt: iso(job.queuedAt), startedAt: iso(job.startedAt), finishedAt: iso(job.finishedAt),
    seconds: finished && job.finishedAt !== undefined ? (job.finishedAt - job.queuedAt) / 1000 : undefined,
  };
  return JSON.parse(JSON.stringify(s)) as JobStatus; // drops the undefined members
}

/** The original plain-text answers; queued counts as publishing. */
export function statusText(s: JobStatus): string {
  switch (s.state) {
    case 'queued': case 'publishing': return 'publishing';
    case 'done': return 'done';
    case 'failed': return `failed: ${s.reason ?? 'unknown reason'}`;
    default: return 'unknown';
  }
}

/** Constant-time check of an Authorization header against the token. */
function tokenMatches(header: string | undefined, token: string): boolean {
  if (header === undefined) return false;
  const m = /^Bearer\s+(.+)$/i.exec(header.trim());
  const given = m ? m[1]!.trim() : header.trim();
  // Hashing first gives equal lengths, as timingSafeEqual needs, without leaking the token's.
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}

export function createPublisherApp(o: PublisherAppOptions): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  const now = () => (o.clock?.now() ?? new Date()).getTime();
  const raw = express.raw({ type: () => true, limit: WEBHOOK_BODY_MAX_BYTES });

  const auth = (req: Request, _res: Response, next: NextFunction) => {
    if (o.token === undefined || tokenMatches(req.get('authorization'), o.token)) { next(); return; }
    next(new PublisherError('PUB_BAD_TOKEN', `${req.method} ${req.path}: ${req.get('authorization') === undefined ? 'no Authorization header' : 'wrong token'}`));
  };

  const onEvents = (req: Request, res: Response) => {
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const records = parseEventBody(body);
    const take: EventRecord[] = [];
    for (const r of records) {
      if (!isCreateEvent(r.eventName)) { o.log('info', `ignored ${r.eventName} for s3://${r.bucket}/${r.key}`); continue; }
      if (o.buckets && !o.buckets.includes(r.bucket)) { o.log('warn', `ignored ${r.eventName} for s3://${r.bucket}/${r.key}: not a bucket of ours`); continue; }
      take.push(r);
    }
    const queued = o.jobs.enqueue(take.map((r) => ({ bucket: r.bucket, key: r.key, etag: r.etag, digest: digestOfKey(r.key) })), now());
    const fresh = queued.filter((q) => q.created);
    o.metrics.eventRecords('queued', fresh.length);
    o.metrics.eventRecords('duplicate', queued.length - fresh.length);
    o.metrics.eventRecords('ignored', records.length - take.length);
    for (const q of fresh) o.log('info', `job ${q.job.id}: s3://${q.job.bucket}/${q.job.key} ${q.job.state}`);
    if (fresh.some((q) => q.job.state === 'queued')) o.onQueued();
    res.status(200).json({
      accepted: queued.length, ignored: records.length - take.length,
      jobs: queued.map((q) => ({ key: q.job.key, state: q.job.state, duplicate: !q.created })),
    });
  };
  app.post(['/', '/events'], auth, raw, onEvents);

  app.get('/status/*key', auth, (req: Request, res: Response) => {
    const parts = (req.params as { key?: string[] | string }).key;
    const key = Array.isArray(parts) ? parts.join('/') : String(parts ?? '');
    const s = statusOf(o.jobs.latestForKey(key), key, o.fqrn);
    res.set('Cache-Control', 'no-store');
    if (req.query['format'] === 'json') { res.status(200).json(s); return; }
    res.status(200).type('text/plain').send(statusText(s));
  });

  app.get('/healthz', (_req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store').status(200).json({ ok: true, fqrn: o.fqrn, jobs: o.jobs.counts() });
  });

  app.get('/metrics', (_req: Request, res: Response, next: NextFunction) => {
    o.metrics.render().then(({ contentType, body }) => { res.status(200).type(contentType).send(body); }, next);
  });

  if (o.serveDir !== undefined) {
    const prefix = `/cvmfs/${o.fqrn}/`;
    const serve = repositoryHandler({ dir: o.serveDir, fqrn: o.fqrn, log: (l) => o.log('warn', l) });
    app.use((req: Request, res: Response, next: NextFunction) => {
      if ((req.method === 'GET' || req.method === 'HEAD') && req.path.startsWith(prefix)) { void serve(req, res); return; }
      next();
    });
  }

  app.use((req: Request, _res: Response, next: NextFunction) => {
    next(new PublisherError('PUB_NO_SUCH_ENDPOINT', `${req.method} ${req.path}`));
  });

  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const e = codedOf(err, req);
    const status = httpStatusOf(e);
    if (status >= 500) o.log('error', `${req.method} ${req.path}: ${e.message}`);
    else if (status === 401) o.log('warn', `${req.method} ${req.path} from ${req.ip}: ${e.message}`);
    if (res.headersSent) { res.destroy(); return; }
    if (status === 401) res.set('WWW-Authenticate', 'Bearer');
    res.status(status).json({ code: e.code, error: e.message });
  });
  return app;
}

/** body-parser and express errors as coded ones. */
function codedOf(err: unknown, req: Request): PublisherError {
  if (err instanceof PublisherError) return err;
  const e = err as { type?: string; status?: number; message?: string };
  if (e?.type === 'entity.too.large') return new PublisherError('PUB_BAD_EVENT', `the body is larger than ${WEBHOOK_BODY_MAX_BYTES} bytes`, { cause: err });
  if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500) {
    return new PublisherError('PUB_BAD_EVENT', `${req.method} ${req.path}: ${e.message ?? 'bad request'}`, { cause: err });
  }
  return new PublisherError('PUB_INTERNAL', `${req.method} ${req.path}: ${e?.message ?? String(err)}`, { cause: err });
}

export interface ListeningPublisher {
  readonly server: http.Server;
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

export async function listenPublisher(app: express.Express, port: number, bind: string): Promise<ListeningPublisher> {
  const server = http.createServer({ noDelay: true, keepAlive: true }, app);
  server.keepAliveTimeout = 60_000;
  server.headersTimeout = 30_000;
  server.requestTimeout = 120_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, bind, () => { server.off('error', reject); resolve(); });
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    server, port: addr.port, url: `http://${host}:${addr.port}`,
    close: () => new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); }),
  };
}
