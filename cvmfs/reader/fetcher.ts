/**
 * HTTP fetcher with host failover and proxies (docs/cvmfs-format.md §13.2). It knows servers,
 * proxies, time-outs and back-off, and nothing of caches or hashes: the caller's `consume`
 * reads the body and throws an `integrity`-kind error when the bytes are bad. Then the same URL is
 * tried once more with `no-cache` headers (forcing proxies to refetch), and after that the next
 * host. A host that failed stays skipped (sticky failover) until `hostResetMs` has passed.
 */
import http from 'node:http';
import type { Readable } from 'node:stream';
import { CvmfsError, isCvmfsError } from '../errors.js';

export interface FetchMetrics { requests: number; failovers: number; retriesNoCache: number }

export interface FetcherOptions {
  /** Base URLs, e.g. `http://s1.example.org/cvmfs/repo.example.org`, tried in order. */
  readonly servers: readonly string[];
  /** Proxy groups (CVMFS_HTTP_PROXY form: `|` within a group, `;` between groups); empty = DIRECT. */
  readonly proxies?: readonly (readonly string[])[];
  readonly timeoutMs?: number;
  /** Extra attempts on one host after connection errors, with exponential back-off. */
  readonly maxRetries?: number;
  readonly backoffInitMs?: number;
  readonly backoffMaxMs?: number;
  readonly hostResetMs?: number;
  readonly maxSockets?: number;
  readonly random?: () => number;
  readonly now?: () => number;
  readonly userAgent?: string;
}

export interface FetchInfo { readonly url: string; readonly noCache: boolean }

/** Parses CVMFS_HTTP_PROXY syntax; `DIRECT` means no proxy. */
export function parseProxyList(spec: string | undefined): string[][] {
  if (!spec) return [];
  return spec.split(';').map((g) => g.split('|').map((p) => p.trim()).filter((p) => p && p !== 'DIRECT'))
    .filter((g) => g.length > 0);
}

type Attempt = { readonly server: number; readonly proxy: string | null };

export class Fetcher {
  readonly metrics: FetchMetrics = { requests: 0, failovers: 0, retriesNoCache: 0 };
  private readonly agent: http.Agent;
  private currentHost = 0;
  private hostSwitchedAt = 0;
  private readonly o: Required<Omit<FetcherOptions, 'proxies'>> & { proxies: readonly (readonly string[])[] };
  private closed = false;

  constructor(opts: FetcherOptions) {
    if (opts.servers.length === 0) throw new CvmfsError('CVMFS_BAD_ARGUMENT', 'no server URL configured');
    for (const s of opts.servers) {
      if (!/^https?:\/\//.test(s)) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `server URL "${s}" must start with http://`);
      if (s.startsWith('https:')) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `server URL "${s}": HTTPS is not supported yet; use http:// (content is verified by signatures and hashes)`);
    }
    this.o = {
      servers: opts.servers.map((s) => s.replace(/\/+$/, '')), proxies: opts.proxies ?? [],
      timeoutMs: opts.timeoutMs ?? 10_000, maxRetries: opts.maxRetries ?? 1, backoffInitMs: opts.backoffInitMs ?? 2000,
      backoffMaxMs: opts.backoffMaxMs ?? 10_000, hostResetMs: opts.hostResetMs ?? 1_800_000, maxSockets: opts.maxSockets ?? 16,
      random: opts.random ?? Math.random, now: opts.now ?? Date.now, userAgent: opts.userAgent ?? 'cvmfs-graphdriver',
    };
    this.agent = new http.Agent({ keepAlive: true, maxSockets: this.o.maxSockets, keepAliveMsecs: 30_000 });
  }

  get servers(): readonly string[] { return this.o.servers; }
  get host(): string { return this.o.servers[this.currentHost]!; }

  /** The attempts in order: current host first, then the others; per host each proxy (or DIRECT). */
  private plan(): Attempt[] {
    if (this.currentHost !== 0 && this.o.now() - this.hostSwitchedAt > this.o.hostResetMs) this.currentHost = 0;
    const n = this.o.servers.length;
    const proxies: (string | null)[] = this.o.proxies.length === 0 ? [null]
      : this.o.proxies.flatMap((g) => {
        const start = Math.floor(this.o.random() * g.length);
        return g.map((_, i) => g[(start + i) % g.length]!);
      });
    const out: Attempt[] = [];
    for (let i = 0; i < n; i++) for (const proxy of proxies) out.push({ server: (this.currentHost + i) % n, proxy });
    return out;
  }

  /**
   * GETs `rel` below the base URL and hands the body to `consume`. Resolves with what `consume`
   * returns; rejects with CVMFS_ALL_SERVERS_FAILED listing what each attempt saw.
   */
  async fetch<T>(rel: string, consume: (body: Readable, info: FetchInfo) => Promise<T>): Promise<T> {
    if (this.closed) throw new CvmfsError('CVMFS_CLOSED', 'the fetcher is closed');
    const failures: string[] = [];
    let integrityOnly = true;
    let lastError: unknown;
    for (const a of this.plan()) {
      const url = `${this.o.servers[a.server]}/${rel}`;
      let lastWasIntegrity = false;
      for (let attempt = 0; ; attempt++) {
        const noCache = lastWasIntegrity;
        try {
          const result = await this.once(url, a.proxy, noCache, consume);
          if (a.server !== this.currentHost) { this.currentHost = a.server; this.hostSwitchedAt = this.o.now(); this.metrics.failovers++; }
          return result;
        } catch (err) {
          const why = err instanceof Error ? err.message : String(err);
          const integrity = isCvmfsError(err) && err.kind === 'integrity';
          if (integrity && !noCache) { lastWasIntegrity = true; this.metrics.retriesNoCache++; continue; }
          failures.push(`${url}${a.proxy ? ` via ${a.proxy}` : ''}: ${why}`);
          integrityOnly &&= integrity;
          lastError = err;
          const retriable = !integrity && !(isCvmfsError(err, 'CVMFS_HTTP_ERROR'));
          if (!retriable || attempt >= this.o.maxRetries) break;
          const backoff = Math.min(this.o.backoffMaxMs, this.o.backoffInitMs * 2 ** attempt) * (0.5 + this.o.random() / 2);
          await new Promise((r) => setTimeout(r, backoff));
        }
      }
    }
    // Every server sent bad data: report what was wrong (e.g. a bad signature), not "unavailable".
    if (integrityOnly && isCvmfsError(lastError)) throw lastError;
    throw new CvmfsError('CVMFS_ALL_SERVERS_FAILED', `cannot fetch ${rel} from any server:\n  ${failures.join('\n  ')}`);
  }

  private once<T>(url: string, proxy: string | null, noCache: boolean, consume: (body: Readable, info: FetchInfo) => Promise<T>): Promise<T> {
    this.metrics.requests++;
    const target = new URL(url);
    const via = proxy ? new URL(proxy.includes('://') ? proxy : `http://${proxy}`) : target;
    const headers: http.OutgoingHttpHeaders = { 'User-Agent': this.o.userAgent, Connection: 'Keep-Alive', Host: target.host };
    if (noCache) { headers['Pragma'] = 'no-cache'; headers['Cache-Control'] = 'no-cache'; }
    return new Promise<T>((resolve, reject) => {
      const req = http.request({
        host: via.hostname, port: via.port || 80, path: proxy ? url : target.pathname + target.search, method: 'GET',
        headers, agent: this.agent, timeout: this.o.timeoutMs,
      });
      req.on('socket', (s) => s.setNoDelay(true));
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.o.timeoutMs} ms`)));
      req.on('error', (err) => reject(err));
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        if (status !== 200 || res.headers['x-squid-error'] || /error=/.test(String(res.headers['proxy-status'] ?? ''))) {
          res.resume();
          reject(new CvmfsError('CVMFS_HTTP_ERROR', `HTTP ${status}${res.headers['x-squid-error'] ? ` (${res.headers['x-squid-error']})` : ''}`));
          return;
        }
        consume(res, { url, noCache }).then(resolve, (err) => { res.destroy(); reject(err); });
      });
      req.end();
    });
  }

  close(): void {
    this.closed = true;
    this.agent.destroy();
  }
}
