/**
 * One HTTP exchange over Node's fetch (undici), with the limits every registry request needs:
 * a time-out until the response headers (`timeoutMs`), an idle time-out within the body (no bytes
 * for `idleTimeoutMs` while the consumer is reading: a paused consumer does not count), a check
 * that the body is as long as its Content-Length, and the caller's AbortSignal. Redirects are never
 * followed here (`redirect: 'manual'`): the client decides where the Authorization header may go.
 *
 * Failures become ConvertErrors: connection errors and time-outs D2C_REGISTRY_UNREACHABLE, a short
 * body D2C_TRUNCATED, the caller's abort D2C_ABORTED (or the abort reason, if that is a
 * ConvertError already). Statuses are the caller's business.
 */
import { Readable } from 'node:stream';
import { ConvertError, isConvertError } from '../errors.js';

export type FetchFn = (input: string | URL, init?: RequestInit) => Promise<Response>;

export interface HttpLimits {
  /** Longest wait for the response headers, connect included. */
  readonly timeoutMs: number;
  /** Longest silence within a body while it is being read. */
  readonly idleTimeoutMs: number;
  readonly userAgent: string;
}

export type RequestBody = Buffer | string | URLSearchParams | Readable;

export interface SendSpec {
  readonly method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  readonly url: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: RequestBody;
  readonly signal?: AbortSignal | undefined;
}

/** A response whose headers arrived. `close()` releases it (cancels an unread body); idempotent. */
export interface Exchange {
  readonly url: string;
  readonly res: Response;
  close(): void;
}

const origin = (url: string): string => { try { return new URL(url).origin; } catch { return url; } };

/** What the caller's signal means as an error. */
export function abortError(signal: AbortSignal, what: string): ConvertError {
  const r: unknown = signal.reason;
  if (isConvertError(r)) return r;
  return new ConvertError('D2C_ABORTED', `${what}: aborted${r instanceof Error ? ` (${r.message})` : ''}`, { cause: r });
}

/** undici's `fetch failed` hides the reason in `cause` (ECONNREFUSED, ENOTFOUND, a TLS error, …). */
export function describeNetworkError(err: unknown): string {
  const cause = (err as { cause?: unknown }).cause;
  const c = cause instanceof Error ? cause : err instanceof Error ? err : undefined;
  if (!c) return String(err);
  const code = (c as NodeJS.ErrnoException).code;
  return code && !c.message.includes(code) ? `${c.message} (${code})` : c.message;
}

export async function send(fetchFn: FetchFn, limits: HttpLimits, spec: SendSpec): Promise<Exchange> {
  const what = `${spec.method} ${spec.url}`;
  if (spec.signal?.aborted) throw abortError(spec.signal, what);
  const controller = new AbortController();
  const onAbort = () => controller.abort(abortError(spec.signal!, what));
  spec.signal?.addEventListener('abort', onAbort, { once: true });
  const timer = setTimeout(() => controller.abort(new ConvertError('D2C_REGISTRY_UNREACHABLE',
    `${what}: no response within ${limits.timeoutMs} ms`)), limits.timeoutMs);
  const headers: Record<string, string> = { 'User-Agent': limits.userAgent, ...spec.headers };
  const streamed = spec.body instanceof Readable;
  let res: Response;
  try {
    res = await fetchFn(spec.url, {
      method: spec.method, headers, redirect: 'manual', signal: controller.signal,
      ...(spec.body !== undefined ? { body: spec.body as NonNullable<RequestInit['body']> } : {}),
      ...(streamed ? { duplex: 'half' as const } : {}),
    });
  } catch (err) {
    clearTimeout(timer);
    spec.signal?.removeEventListener('abort', onAbort);
    if (controller.signal.aborted) {
      const r: unknown = controller.signal.reason;
      throw isConvertError(r) ? r : new ConvertError('D2C_ABORTED', `${what}: aborted`, { cause: r });
    }
    if (isConvertError(err)) throw err;
    throw new ConvertError('D2C_REGISTRY_UNREACHABLE', `cannot reach ${origin(spec.url)} (${what}): ${describeNetworkError(err)}`, { cause: err });
  }
  clearTimeout(timer);
  let closed = false;
  return {
    url: spec.url, res,
    close() {
      if (closed) return;
      closed = true;
      spec.signal?.removeEventListener('abort', onAbort);
      if (res.body && !res.bodyUsed) res.body.cancel().catch(() => { /* already failed */ });
    },
  };
}

/**
 * The body of `ex` as a Node stream. It errors with D2C_TRUNCATED when it ends before
 * Content-Length, D2C_REGISTRY_UNREACHABLE when no byte comes for `idleTimeoutMs` while being read
 * or the connection breaks, and with the abort error when the caller's signal fires. Destroying it
 * releases the connection.
 */
export function bodyStream(ex: Exchange, limits: HttpLimits, signal: AbortSignal | undefined, what: string): Readable {
  const body = ex.res.body;
  const encoded = (ex.res.headers.get('content-encoding') ?? 'identity').toLowerCase() !== 'identity';
  const lengthHeader = ex.res.headers.get('content-length');
  const expected = lengthHeader !== null && /^\d+$/.test(lengthHeader) && !encoded ? Number(lengthHeader) : undefined;
  if (!body) { ex.close(); return Readable.from([]); }
  const reader = body.getReader();
  let got = 0;
  let timer: NodeJS.Timeout | undefined;
  let finished = false;
  const onAbort = () => out.destroy(abortError(signal!, what));
  const out: Readable = new Readable({
    read() {
      timer = setTimeout(() => {
        out.destroy(new ConvertError('D2C_REGISTRY_UNREACHABLE', `${what}: no data for ${limits.idleTimeoutMs} ms after ${got} bytes`));
      }, limits.idleTimeoutMs);
      reader.read().then(({ done, value }) => {
        clearTimeout(timer);
        if (out.destroyed) return;
        if (done) {
          finished = true;
          if (expected !== undefined && got < expected) {
            out.destroy(new ConvertError('D2C_TRUNCATED', `${what}: the body ended after ${got} of ${expected} bytes`));
          } else out.push(null);
          return;
        }
        got += value.byteLength;
        out.push(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
      }, (err: unknown) => {
        clearTimeout(timer);
        if (out.destroyed) return;
        if (signal?.aborted) { out.destroy(abortError(signal, what)); return; }
        if (isConvertError(err)) { out.destroy(err); return; }
        const short = expected !== undefined && got < expected;
        out.destroy(new ConvertError(short ? 'D2C_TRUNCATED' : 'D2C_REGISTRY_UNREACHABLE',
          `${what}: the connection broke after ${got}${expected !== undefined ? ` of ${expected}` : ''} bytes: ${describeNetworkError(err)}`, { cause: err }));
      });
    },
    destroy(err, cb) {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (!finished) reader.cancel().catch(() => { /* the transfer failed already */ });
      ex.close();
      cb(err);
    },
  });
  if (signal?.aborted) queueMicrotask(onAbort);
  else signal?.addEventListener('abort', onAbort, { once: true });
  out.on('end', () => { signal?.removeEventListener('abort', onAbort); ex.close(); });
  return out;
}

/** Reads a whole (small) body, at most `maxBytes`, else `tooLarge()` is thrown. */
export async function readBody(ex: Exchange, limits: HttpLimits, signal: AbortSignal | undefined, what: string,
  maxBytes: number, tooLarge: () => ConvertError): Promise<Buffer> {
  const declared = Number(ex.res.headers.get('content-length') ?? NaN);
  if (declared > maxBytes) { ex.close(); throw tooLarge(); }
  const chunks: Buffer[] = [];
  let n = 0;
  const s = bodyStream(ex, limits, signal, what);
  try {
    for await (const c of s) {
      const b = c as Buffer;
      n += b.length;
      if (n > maxBytes) throw tooLarge();
      chunks.push(b);
    }
  } finally { s.destroy(); }
  return Buffer.concat(chunks);
}

/** Drops the body of an answer we do not read (an error, a redirect). */
export function discard(ex: Exchange): void { ex.close(); }

/**
 * `Retry-After` in ms (delta seconds or an HTTP date), undefined when absent or unreadable.
 */
export function retryAfterMs(header: string | null, nowMs: number): number | undefined {
  if (header === null) return undefined;
  const t = header.trim();
  if (/^\d+$/.test(t)) return Number(t) * 1000;
  const date = Date.parse(t);
  return Number.isNaN(date) ? undefined : Math.max(0, date - nowMs);
}

/** Sleeps `ms`, rejecting with the abort error when `signal` fires first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) { reject(abortError(signal, 'waiting to retry')); return; }
    const onAbort = () => { clearTimeout(timer); reject(abortError(signal!, 'waiting to retry')); };
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
