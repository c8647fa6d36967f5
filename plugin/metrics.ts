/**
 * The plugin's Prometheus metrics: the CernVM-FS client counters of every repository, on a
 * registry of its own (no global registry, as in publisher/metrics.ts), served as GET /metrics on
 * a unix socket or a TCP address apart from the plugin socket.
 *
 * Export is generic, so counters added to `Repository.counters()` appear without a change here:
 * - a numeric field `fooBarBytes` is `cvmfs_client_foo_bar_bytes_total` (a counter) with the label
 *   `repository="<fqrn>"`, unless it is a level that can go down (`GAUGE_FIELDS`): then it is the
 *   gauge `cvmfs_client_foo_bar_bytes`;
 * - a boolean field (`offline`) is a gauge, 0 or 1;
 * - strings (`rootHash`) are not exported;
 * - `cvmfs_client_mounted` is 1 for a mounted repository, 0 for one unmounted since, whose last
 *   counters are kept (a remount starts them from zero: a counter reset, which rate() absorbs).
 * Values are read from the source at every scrape; nothing is counted here.
 */
import fs from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { Counter, Gauge, Registry } from 'prom-client';
import type { Logger } from '../driver/index.js';

export const METRIC_PREFIX = 'cvmfs_client_';

/** Numeric fields that are levels, not totals since the client started. */
export const GAUGE_FIELDS: ReadonlySet<string> = new Set(['revision', 'cacheUsedBytes', 'catalogsAttached', 'prefetchWasteBytes']);

const HELP: Readonly<Record<string, string>> = {
  revision: 'Revision of the repository being served',
  offline: '1 while the client serves from its cache because no server answers',
  bytesFetched: 'Compressed object bytes downloaded',
  objectsFetched: 'Objects downloaded',
  bytesInflated: 'Bytes of downloaded objects after decompression',
  cacheHits: 'Object reads answered by the local cache',
  cacheMisses: 'Object reads that had to download',
  evictions: 'Objects evicted from the cache to stay within quota',
  evictedBytes: 'Bytes evicted from the cache to stay within quota',
  cacheUsedBytes: 'Bytes in the local cache now',
  requests: 'HTTP requests sent to servers and proxies',
  failovers: 'Switches to another server or proxy after a failure',
  retriesNoCache: 'Requests retried with Cache-Control: no-cache after a bad answer',
  hashMismatches: 'Downloaded objects that failed verification',
  catalogsAttached: 'Catalogs attached now (root and nested)',
  prefetchObjects: 'Objects fetched ahead of a read (prefetch lists and siblings)',
  prefetchBytes: 'Inflated bytes of objects fetched ahead of a read',
  prefetchHits: 'Prefetched objects that a read then needed',
  prefetchHitBytes: 'Inflated bytes of prefetched objects that a read then needed',
  prefetchWasteBytes: 'Prefetched bytes that no read has needed so far',
};

/** One repository at one scrape; `counters` is any object, its numeric and boolean fields exported. */
export interface RepositorySample {
  readonly fqrn: string;
  readonly counters: object;
  /** false: the repository is unmounted and these are its last counters; default true. */
  readonly mounted?: boolean;
}

export interface PluginMetrics {
  readonly registry: Registry;
  /** Reads the source and renders the exposition text: the content type and body of GET /metrics. */
  render(): Promise<{ contentType: string; body: string }>;
}

/** `bytesFetched` → `bytes_fetched`; undefined for a name Prometheus would refuse. */
export function snakeCase(field: string): string | undefined {
  const s = field.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2').toLowerCase();
  return /^[a-z_][a-z0-9_]*$/.test(s) ? s : undefined;
}

/** The metric a counters field is exported as, or undefined when it is not exported. */
export function metricOf(field: string, value: unknown): { name: string; type: 'counter' | 'gauge' } | undefined {
  const snake = snakeCase(field);
  if (snake === undefined) return undefined;
  if (typeof value === 'boolean') return { name: METRIC_PREFIX + snake, type: 'gauge' };
  if (typeof value !== 'number') return undefined;
  return GAUGE_FIELDS.has(field) ? { name: METRIC_PREFIX + snake, type: 'gauge' } : { name: `${METRIC_PREFIX}${snake}_total`, type: 'counter' };
}

/**
 * Metrics over `source`, which is called once per scrape and should not throw (a throw answers
 * the scrape with 500). Metrics are registered as fields first appear and stay registered.
 */
export function createPluginMetrics(source: () => Promise<readonly RepositorySample[]>): PluginMetrics {
  const registry = new Registry();
  const byName = new Map<string, Counter | Gauge>();
  const mounted = new Gauge({ name: `${METRIC_PREFIX}mounted`, help: '1 for a mounted repository, 0 for one unmounted since (its last counters are kept)', labelNames: ['repository'], registers: [registry] });
  byName.set(`${METRIC_PREFIX}mounted`, mounted);
  const metric = (field: string, m: { name: string; type: 'counter' | 'gauge' }): Counter | Gauge | undefined => {
    const have = byName.get(m.name);
    if (have) return (have instanceof Counter) === (m.type === 'counter') ? have : undefined;
    const config = { name: m.name, help: HELP[field] ?? `Repository.counters().${field}`, labelNames: ['repository'], registers: [registry] };
    const made = m.type === 'counter' ? new Counter(config) : new Gauge(config);
    byName.set(m.name, made);
    return made;
  };
  return {
    registry,
    async render() {
      const samples = await source();
      // Everything is set again from the source, so a repository no longer reported disappears.
      for (const m of byName.values()) m.reset();
      for (const { fqrn, counters, mounted: isMounted } of samples) {
        const labels = { repository: fqrn };
        mounted.set(labels, isMounted === false ? 0 : 1);
        for (const [field, value] of Object.entries(counters)) {
          const m = metricOf(field, value);
          const target = m && metric(field, m);
          if (!target) continue;
          const n = typeof value === 'boolean' ? Number(value) : (value as number);
          if (target instanceof Counter) { if (Number.isFinite(n) && n >= 0) target.inc(labels, n); } else target.set(labels, n);
        }
      }
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
}

/** Where GET /metrics is served (plugin/settings.ts `metricsAddress`). */
export type MetricsAddress =
  | { readonly kind: 'unix'; readonly path: string }
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number };

export interface MetricsServer {
  /** `unix:/path` or `http://host:port/metrics`, with the port actually bound. */
  readonly url: string;
  /** Stops listening, drops open connections and removes the socket file; idempotent. */
  close(): Promise<void>;
}

const METRICS_REQUEST_TIMEOUT_MS = 10_000;

/**
 * Serves GET (and HEAD) /metrics; anything else is 404. Every request settles: a failed render
 * is 500 with its message. A unix socket is made 0600 in a directory created 0700; a stale socket
 * file is replaced, any other file there is refused.
 */
export async function listenMetrics(metrics: PluginMetrics, address: MetricsAddress, log: Logger): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    const pathname = (req.url ?? '').split('?')[0];
    if ((req.method !== 'GET' && req.method !== 'HEAD') || pathname !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('not found: this server answers GET /metrics\n');
      return;
    }
    metrics.render().then(({ contentType, body }) => {
      res.writeHead(200, { 'Content-Type': contentType }).end(req.method === 'HEAD' ? undefined : body);
    }, (err: Error) => {
      log('warn', `GET /metrics: ${err.message}`);
      res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`${err.message}\n`);
    });
  });
  server.requestTimeout = METRICS_REQUEST_TIMEOUT_MS;
  server.headersTimeout = METRICS_REQUEST_TIMEOUT_MS;
  const listening = () => new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.once('listening', () => { server.off('error', reject); resolve(); });
  });
  let url: string;
  if (address.kind === 'unix') {
    await fs.mkdir(path.dirname(address.path), { recursive: true, mode: 0o700 });
    const st = await fs.lstat(address.path).catch(() => undefined);
    if (st && !st.isSocket()) throw new Error(`cannot serve metrics at ${address.path}: a file that is not a socket is there`);
    if (st) await fs.rm(address.path, { force: true });
    const done = listening();
    server.listen(address.path);
    await done;
    await fs.chmod(address.path, 0o600);
    url = `unix:${address.path}`;
  } else {
    const done = listening();
    server.listen(address.port, address.host);
    await done;
    const bound = server.address();
    const port = bound !== null && typeof bound === 'object' ? bound.port : address.port;
    url = `http://${address.host.includes(':') ? `[${address.host}]` : address.host}:${port}/metrics`;
  }
  let closing: Promise<void> | undefined;
  return {
    url,
    close() {
      closing ??= (async () => {
        await new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); });
        if (address.kind === 'unix') await fs.rm(address.path, { force: true });
      })();
      return closing;
    },
  };
}
