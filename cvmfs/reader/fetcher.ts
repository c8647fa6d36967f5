/**
 * HTTP fetcher with host failover and proxies (docs/cvmfs-format.md §13.2). It knows servers,
 * proxies, time-outs and back-off, and nothing of caches or hashes: the caller's `consume`
 * reads the body and throws an `integrity`-kind error when the bytes are bad. Then the same URL is
 * tried once more with `no-cache` headers (forcing proxies to refetch), and after that the next
 * host. A host that failed stays skipped (sticky failover) until `hostResetMs` has passed.
 *
 * Every attempt settles: each one runs under a watchdog that aborts it when the server is silent
 * (`timeoutMs`), slower than `lowSpeedLimitBytesPerSecond` over `lowSpeedWindowMs`
 * (CVMFS_LOW_SPEED_LIMIT), or not done within `deadlineMs`; a body that ends before its
 * Content-Length is an error. The watchdog measures the server's time only: its clock stops while
 * the consumer's buffer is full (backpressure from a slow consumer, e.g. a cache write) and while
 * our own event loop is blocked, so neither is taken for a slow server. Those failures, like
 * refused connections, fail over to the next proxy or host; only a connection error before any
 * response gets a retry on the same host (a timed-out host is not retried).
 */
import http from 'node:http';
import { Readable } from 'node:stream';
import { CvmfsError, isCvmfsError, messageOf } from '../errors.js';

export interface FetchMetrics { requests: number; failovers: number; retriesNoCache: number }

/** CVMFS_TIMEOUT_DIRECT. */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** CVMFS_LOW_SPEED_LIMIT. */
export const DEFAULT_LOW_SPEED_LIMIT_BYTES_PER_SECOND = 1024;
/** Generous: a 16 MiB chunk needs ~28 KB/s, a 200 MB catalog ~330 KB/s to make it. */
export const DEFAULT_DEADLINE_MS = 600_000;
const WATCHDOG_TICK_MIN_MS = 10;
const WATCHDOG_TICK_MAX_MS = 1000;

export interface FetcherOptions {
  /** Base URLs, e.g. `http://s1.example.org/cvmfs/repo.example.org`, tried in order. */
  readonly servers: readonly string[];
  /** Proxy groups (CVMFS_HTTP_PROXY form: `|` within a group, `;` between groups); empty = DIRECT. */
  readonly proxies?: readonly (readonly string[])[];
  /** Longest wait for the response headers (from the socket's assignment, connect included), and
   *  the longest silence within a body. Default 10 s. */
  readonly timeoutMs?: number;
  /** A body arriving slower than this, averaged over `lowSpeedWindowMs`, is aborted
   *  (CVMFS_LOW_SPEED_LIMIT); 0 disables. Default 1024 bytes/s. */
  readonly lowSpeedLimitBytesPerSecond?: number;
  /** The window of the low-speed limit; unset or 0: `timeoutMs`, as in the stock client. */
  readonly lowSpeedWindowMs?: number;
  /** Longest one attempt (one object from one host through one proxy) may take, headers and body;
   *  0 disables. Default 10 min. */
  readonly deadlineMs?: number;
  /** Extra attempts on one host after a connection error before any response (refused, reset),
   *  with exponential back-off. Timeouts and slow or truncated transfers are not retried there. */
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

export interface FetchOptions {
  /** Aborts the fetch: the current attempt is torn down and fetch() rejects with CVMFS_ABORTED. */
  readonly signal?: AbortSignal;
}

/** Parses CVMFS_HTTP_PROXY syntax; `DIRECT` means no proxy. */
export function parseProxyList(spec: string | undefined): string[][] {
  if (!spec) return [];
  return spec.split(';').map((g) => g.split('|').map((p) => p.trim()).filter((p) => p && p !== 'DIRECT'))
    .filter((g) => g.length > 0);
}

type Attempt = { readonly server: number; readonly proxy: string | null };

interface Limits { readonly timeoutMs: number; readonly lowSpeedLimit: number; readonly lowSpeedWindowMs: number; readonly deadlineMs: number }

/**
 * The clock of one attempt. It counts the server's time: wall time while we wait for the server,
 * not while `pause()`d (the consumer's buffer is full), and at most two ticks per tick, so that a
 * blocked event loop (ours) is not charged to the server. Checks run after pending I/O
 * (setImmediate), so bytes that arrived during a stall are counted first.
 */
class Watchdog {
  private serverMs = 0;
  private last = performance.now();
  private running = true;
  private inBody = false;
  private lastByteMs = 0;
  private windowStartMs = 0;
  private windowBytes = 0;
  private stopped = false;
  private readonly tickMs: number;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly l: Limits, private readonly onFail: (err: CvmfsError) => void) {
    const periods = [l.timeoutMs, l.lowSpeedLimit > 0 ? l.lowSpeedWindowMs : Infinity, l.deadlineMs > 0 ? l.deadlineMs : Infinity];
    this.tickMs = Math.max(WATCHDOG_TICK_MIN_MS, Math.min(WATCHDOG_TICK_MAX_MS, Math.min(...periods) / 4));
    this.timer = setInterval(() => setImmediate(() => this.check()), this.tickMs);
    this.timer.unref();
  }

  private advance(): void {
    const now = performance.now();
    if (this.running) this.serverMs += Math.min(now - this.last, 2 * this.tickMs);
    this.last = now;
  }

  /** The consumer holds the stream: stop the clock. */
  pause(): void { this.advance(); this.running = false; }
  resume(): void { if (!this.running) { this.last = performance.now(); this.running = true; } }

  /** The response headers arrived: the body's idle and low-speed clocks start now. */
  response(): void {
    this.advance();
    this.inBody = true;
    this.lastByteMs = this.windowStartMs = this.serverMs;
  }

  bytes(n: number): void {
    this.advance();
    this.lastByteMs = this.serverMs;
    this.windowBytes += n;
  }

  stop(): void { this.stopped = true; clearInterval(this.timer); }

  private check(): void {
    if (this.stopped) return;
    this.advance();
    const { timeoutMs, lowSpeedLimit, lowSpeedWindowMs, deadlineMs } = this.l;
    const ms = this.serverMs;
    if (!this.inBody) {
      if (ms >= timeoutMs) return this.fail(new CvmfsError('CVMFS_TRANSFER_TIMEOUT', `no response within ${timeoutMs} ms`));
    } else {
      if (ms - this.lastByteMs >= timeoutMs) return this.fail(new CvmfsError('CVMFS_TRANSFER_TIMEOUT', `no data for ${timeoutMs} ms`));
      const span = ms - this.windowStartMs;
      if (lowSpeedLimit > 0 && span >= lowSpeedWindowMs) {
        if (this.windowBytes * 1000 < lowSpeedLimit * span) {
          return this.fail(new CvmfsError('CVMFS_TRANSFER_TOO_SLOW',
            `${this.windowBytes} bytes in ${Math.round(span)} ms, below the low-speed limit of ${lowSpeedLimit} bytes/s`));
        }
        this.windowStartMs = ms;
        this.windowBytes = 0;
      }
    }
    if (deadlineMs > 0 && ms >= deadlineMs) this.fail(new CvmfsError('CVMFS_TRANSFER_DEADLINE', `not done within the deadline of ${deadlineMs} ms`));
  }

  private fail(err: CvmfsError): void { this.stop(); this.onFail(err); }
}

function aborted(signal: AbortSignal): CvmfsError {
  return new CvmfsError('CVMFS_ABORTED', `the fetch was aborted${signal.reason instanceof Error ? `: ${signal.reason.message}` : ''}`, { cause: signal.reason });
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) { reject(aborted(signal)); return; }
    const onAbort = () => { clearTimeout(timer); reject(aborted(signal!)); };
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

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
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    for (const [name, v] of Object.entries({ timeoutMs, lowSpeedLimitBytesPerSecond: opts.lowSpeedLimitBytesPerSecond,
      lowSpeedWindowMs: opts.lowSpeedWindowMs, deadlineMs: opts.deadlineMs })) {
      if (v !== undefined && !(v >= 0 && Number.isFinite(v))) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `${name} must be a finite number ≥ 0, not ${v}`);
    }
    if (!(timeoutMs > 0)) throw new CvmfsError('CVMFS_BAD_ARGUMENT', 'timeoutMs must be > 0');
    this.o = {
      servers: opts.servers.map((s) => s.replace(/\/+$/, '')), proxies: opts.proxies ?? [],
      timeoutMs, lowSpeedLimitBytesPerSecond: opts.lowSpeedLimitBytesPerSecond ?? DEFAULT_LOW_SPEED_LIMIT_BYTES_PER_SECOND,
      lowSpeedWindowMs: opts.lowSpeedWindowMs || timeoutMs, deadlineMs: opts.deadlineMs ?? DEFAULT_DEADLINE_MS,
      maxRetries: opts.maxRetries ?? 1, backoffInitMs: opts.backoffInitMs ?? 2000,
      backoffMaxMs: opts.backoffMaxMs ?? 10_000, hostResetMs: opts.hostResetMs ?? 1_800_000, maxSockets: opts.maxSockets ?? 32,
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
   * Moves the sticky host from `from` to `to`, unless another fetch moved it already. Called as
   * soon as a host has failed, before the next one is asked, so that any fetch starting meanwhile
   * (such as the certificate fetch nested in the manifest's `consume`) skips the failed host.
   */
  private switchHost(from: number, to: number): void {
    if (this.currentHost !== from || from === to) return;
    this.currentHost = to;
    this.hostSwitchedAt = this.o.now();
    this.metrics.failovers++;
  }

  /**
   * GETs `rel` below the base URL and hands the body to `consume`. Resolves with what `consume`
   * returns; rejects with CVMFS_ALL_SERVERS_FAILED listing what each attempt saw (or with the
   * integrity error when every server sent bad data, or CVMFS_ABORTED).
   */
  async fetch<T>(rel: string, consume: (body: Readable, info: FetchInfo) => Promise<T>, opts: FetchOptions = {}): Promise<T> {
    const { signal } = opts;
    const failures: string[] = [];
    let integrityOnly = true;
    let lastError: unknown;
    const failedHosts = new Set<number>();
    let previous: number | undefined;
    for (const a of this.plan()) {
      if (previous !== undefined && a.server !== previous) { failedHosts.add(previous); this.switchHost(previous, a.server); }
      previous = a.server;
      const url = `${this.o.servers[a.server]}/${rel}`;
      // A host that answers with a good status is working: record it before `consume` runs.
      const answered = () => { if (failedHosts.has(this.currentHost)) this.switchHost(this.currentHost, a.server); };
      let lastWasIntegrity = false;
      for (let attempt = 0; ; attempt++) {
        if (this.closed) throw new CvmfsError('CVMFS_CLOSED', 'the fetcher is closed');
        if (signal?.aborted) throw aborted(signal);
        const noCache = lastWasIntegrity;
        try {
          return await this.once(url, a.proxy, noCache, consume, answered, signal);
        } catch (err) {
          if (isCvmfsError(err, 'CVMFS_ABORTED')) throw err;
          if (signal?.aborted) throw aborted(signal);
          const integrity = isCvmfsError(err) && err.kind === 'integrity';
          if (integrity && !noCache) { lastWasIntegrity = true; this.metrics.retriesNoCache++; continue; }
          failures.push(`${url}${a.proxy ? ` via ${a.proxy}` : ''}: ${messageOf(err)}`);
          integrityOnly &&= integrity;
          lastError = err;
          if (!isCvmfsError(err, 'CVMFS_CONNECTION_FAILED') || attempt >= this.o.maxRetries) break;
          await sleep(Math.min(this.o.backoffMaxMs, this.o.backoffInitMs * 2 ** attempt) * (0.5 + this.o.random() / 2), signal);
        }
      }
    }
    // Every server sent bad data: report what was wrong (e.g. a bad signature), not "unavailable".
    if (integrityOnly && isCvmfsError(lastError)) throw lastError;
    throw new CvmfsError('CVMFS_ALL_SERVERS_FAILED', `cannot fetch ${rel} from any server:\n  ${failures.join('\n  ')}`);
  }

  /**
   * One GET. Settles once the transfer failed (watchdog, truncation, connection error, bad
   * status: the body is destroyed with that error, so `consume` sees it) and `consume` settled,
   * or once `consume` settled after a complete body. A transfer error wins over what `consume`
   * made of the broken body.
   */
  private once<T>(url: string, proxy: string | null, noCache: boolean, consume: (body: Readable, info: FetchInfo) => Promise<T>,
    answered: () => void, signal: AbortSignal | undefined): Promise<T> {
    this.metrics.requests++;
    const target = new URL(url);
    const via = proxy ? new URL(proxy.includes('://') ? proxy : `http://${proxy}`) : target;
    const headers: http.OutgoingHttpHeaders = { 'User-Agent': this.o.userAgent, Connection: 'Keep-Alive', Host: target.host };
    if (noCache) { headers['Pragma'] = 'no-cache'; headers['Cache-Control'] = 'no-cache'; }
    const limits: Limits = { timeoutMs: this.o.timeoutMs, lowSpeedLimit: this.o.lowSpeedLimitBytesPerSecond,
      lowSpeedWindowMs: this.o.lowSpeedWindowMs, deadlineMs: this.o.deadlineMs };
    return new Promise<T>((resolve, reject) => {
      let failure: CvmfsError | undefined;
      let watchdog: Watchdog | undefined;
      let body: Readable | undefined;
      let ended = false;
      let consuming = false;
      let settled = false;
      const settle = (err: unknown, value?: T): void => {
        if (settled) return;
        settled = true;
        watchdog?.stop();
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err); else resolve(value as T);
      };
      const req = http.request({
        host: via.hostname, port: via.port || 80, path: proxy ? url : target.pathname + target.search, method: 'GET', headers, agent: this.agent,
      });
      /** Ends the transfer with `err`: tears down the connection and hands the error to the consumer. */
      const fail = (err: CvmfsError): void => {
        if (failure || ended) return;
        failure = err;
        watchdog?.stop();
        req.destroy(err);
        if (body && consuming) body.destroy(err); else settle(err);
      };
      const onAbort = () => fail(aborted(signal!));
      if (signal?.aborted) { onAbort(); return; }
      signal?.addEventListener('abort', onAbort, { once: true });
      req.on('socket', (s) => {
        s.setNoDelay(true);
        watchdog ??= new Watchdog(limits, fail);
      });
      req.on('error', (err) => {
        if (body) fail(new CvmfsError('CVMFS_TRANSFER_TRUNCATED', `the connection broke during the body: ${err.message}`, { cause: err }));
        else fail(new CvmfsError('CVMFS_CONNECTION_FAILED', err.message, { cause: err }));
      });
      req.on('response', (res) => {
        if (failure) { res.destroy(); return; }
        const status = res.statusCode ?? 0;
        if (status !== 200 || res.headers['x-squid-error'] || /error=/.test(String(res.headers['proxy-status'] ?? ''))) {
          // Not drained: a hostile error body could be endless, and this connection is not reused.
          fail(new CvmfsError('CVMFS_HTTP_ERROR', `HTTP ${status}${res.headers['x-squid-error'] ? ` (${res.headers['x-squid-error']})` : ''}`));
          return;
        }
        answered();
        watchdog?.response();
        const length = res.headers['content-length'] !== undefined ? Number(res.headers['content-length']) : undefined;
        let got = 0;
        const truncated = (why: string) => new CvmfsError('CVMFS_TRANSFER_TRUNCATED',
          `the body ended after ${got}${length !== undefined ? ` of ${length}` : ''} bytes: ${why}`);
        const b = new Readable({
          read: () => { watchdog?.resume(); res.resume(); },
          destroy: (err, cb) => {
            // The consumer gave up early: the rest of the body is not wanted, nor the connection.
            if (!ended && !failure) { ended = true; watchdog?.stop(); req.destroy(); }
            cb(err);
          },
        });
        b.on('error', () => { /* the consumer sees it through its own read; never an uncaught 'error' */ });
        body = b;
        res.on('data', (c: Buffer) => {
          got += c.length;
          watchdog?.bytes(c.length);
          if (b.destroyed) return;
          if (!b.push(c)) { res.pause(); watchdog?.pause(); }
        });
        res.on('end', () => {
          if (failure || ended) return;
          if (!res.complete) { fail(truncated('the connection closed')); return; }
          ended = true;
          watchdog?.stop();
          b.push(null);
        });
        res.on('error', (err) => fail(truncated(err.message)));
        res.on('close', () => { if (!ended) fail(truncated('the connection closed')); });
        consuming = true;
        Promise.resolve().then(() => consume(b, { url, noCache })).then(
          (value) => { consuming = false; if (!ended) { ended = true; req.destroy(); } settle(failure, value); },
          (err: unknown) => { consuming = false; if (!ended) { ended = true; req.destroy(); } settle(failure ?? err ?? new Error('consume failed')); },
        );
      });
      req.end();
    });
  }

  close(): void {
    this.closed = true;
    this.agent.destroy();
  }
}
