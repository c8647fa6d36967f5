/**
 * A Registry HTTP API v2 client (distribution spec; docs/thin-images-and-layout.md §8.3, R21–R23):
 * manifests and indexes (Docker v2 and OCI), platform selection, blobs, tags, and push.
 *
 * Every request goes through three layers, innermost first:
 *   send()         one fetch with a headers time-out, a body idle time-out and the caller's signal;
 *   withRetries()  429 and 503 answers are retried after `Retry-After` (else exponential back-off
 *                  with jitter), at most `maxAttempts` times; connection failures of GET and HEAD
 *                  are retried `maxConnectAttempts` times;
 *   api()          authentication (auth.ts): first without credentials, then the remembered
 *                  challenge's scheme; a refused cached token is renewed once.
 * Redirects are followed by the client itself so the registry's Authorization never goes to
 * another host (blob storage behind S3 / a CDN).
 *
 * Verification: manifests fetched by digest, and configs, are hashed here; blobs are not (the
 * caller hashes while it streams), but a body shorter than its Content-Length is an error.
 * Concurrency: one client may serve many requests at once; tokens and challenges are shared.
 */
import type { Readable } from 'node:stream';
import { ConvertError, isConvertError } from '../errors.js';
import { MEDIA, SHA256_DIGEST, layerMediaType, type BlobSource, type Descriptor, type Platform, type ResolvedImage } from '../image.js';
import { MAX_CONFIG_BYTES, MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES, checkDigest, checkIndexDepth, parseConfig, parseManifest, readAll,
  sha256, type ParsedManifest } from '../manifest.js';
import { hostPlatform, selectManifest } from '../platform.js';
import { formatReference, plainHttpAllowed, registryEndpoint, type ImageReference, type RegistryEndpoint } from '../reference.js';
import { Authenticator, repositoryScope } from './auth.js';
import type { CredentialStore } from './credentials.js';
import { bodyStream, readBody, retryAfterMs, send, sleep as defaultSleep, type Exchange, type FetchFn, type HttpLimits,
  type RequestBody, type SendSpec } from './http.js';

export interface RegistryClientOptions {
  readonly credentials?: CredentialStore;
  /** Hosts (`host` or `host:port`) that may be spoken to over plain HTTP (loopback always may). */
  readonly insecure?: readonly string[];
  /** Longest wait for response headers. Default 30 s. */
  readonly timeoutMs?: number;
  /** Longest silence within a body being read (blobs, manifests). Default 60 s. */
  readonly idleTimeoutMs?: number;
  /** Attempts for an answer of 429 or 503 before D2C_REGISTRY_ERROR. Default 5. */
  readonly maxAttempts?: number;
  /** Attempts of a GET / HEAD whose connection failed before D2C_REGISTRY_UNREACHABLE. Default 3. */
  readonly maxConnectAttempts?: number;
  /** First back-off without `Retry-After`; doubles per attempt, with jitter. Default 1 s. */
  readonly backoffInitMs?: number;
  /** The longest single wait; a `Retry-After` beyond it fails at once. Default 60 s. */
  readonly maxRetryAfterMs?: number;
  readonly maxRedirects?: number;
  readonly userAgent?: string;
  readonly fetch?: FetchFn;
  readonly now?: () => number;
  readonly random?: () => number;
  readonly sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

export const DEFAULTS = {
  timeoutMs: 30_000,
  idleTimeoutMs: 60_000,
  maxAttempts: 5,
  maxConnectAttempts: 3,
  backoffInitMs: 1000,
  maxRetryAfterMs: 60_000,
  maxRedirects: 5,
  userAgent: 'docker2cvmfs (cvmfs-graphdriver)',
} as const;

/**
 * Named limits on what a registry may send us. Manifest, config and index-depth limits are
 * manifest.ts's, shared with the other sources (re-exported here for importers of this module).
 */
export { MAX_CONFIG_BYTES, MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES };
/** The parsers this module used to hold; they are manifest.ts's now. */
export { parseConfig, parseDescriptor, parseManifest } from '../manifest.js';
export const MAX_ERROR_BODY_BYTES = 64 * 1024;
export const MAX_TAG_PAGES = 10_000;

export const MANIFEST_ACCEPT = [MEDIA.ociIndex, MEDIA.dockerManifestList, MEDIA.ociManifest, MEDIA.dockerManifest].join(', ');

/** A manifest as fetched: the exact bytes, their sha256, and what they parse to. */
export type FetchedManifest = {
  readonly bytes: Buffer;
  /** sha256 of `bytes` */
  readonly digest: string;
  /** `Docker-Content-Digest` as the registry sent it (checked to equal `digest` when sha256). */
  readonly contentDigest?: string;
} & ParsedManifest;

/** A registry image: ResolvedImage plus where it came from. */
export interface RegistryImage extends ResolvedImage {
  readonly reference: ImageReference;
  /** The manifest list / index the platform entry was chosen from, if any. */
  readonly indexDigest?: string;
  /** The platform of the chosen index entry (absent for a plain manifest). */
  readonly platform?: Platform;
}

export interface BlobOptions {
  /** Foreign / non-distributable layers: try `descriptor.urls` first (then the registry). */
  readonly foreignUrls?: boolean;
}

export type PushBlobResult = 'exists' | 'mounted' | 'uploaded';

export interface PushBlobOptions {
  /** Another repository of the same registry to mount the blob from (cross-repository mount). */
  readonly mountFrom?: string;
  /** POST + PATCH + PUT instead of POST + monolithic PUT. */
  readonly chunked?: boolean;
  readonly signal?: AbortSignal;
}

type Method = SendSpec['method'];

interface ApiRequest {
  readonly ref: ImageReference;
  readonly method: Method;
  readonly url: string;
  readonly scopes: readonly string[];
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: () => RequestBody;
  readonly signal?: AbortSignal | undefined;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

interface RegistryErrorEntry { readonly code: string; readonly message: string }

export class RegistryClient {
  private readonly o: Required<Omit<RegistryClientOptions, 'credentials'>> & { readonly credentials?: CredentialStore };
  private readonly limits: HttpLimits;
  private readonly auth: Authenticator;

  constructor(opts: RegistryClientOptions = {}) {
    this.o = {
      ...DEFAULTS, insecure: [], fetch: (input, init) => fetch(input, init), now: Date.now, random: Math.random, sleep: defaultSleep,
      ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)),
    } as RegistryClient['o'];
    this.limits = { timeoutMs: this.o.timeoutMs, idleTimeoutMs: this.o.idleTimeoutMs, userAgent: this.o.userAgent };
    this.auth = new Authenticator({
      credentials: this.o.credentials, insecure: this.o.insecure, now: this.o.now, limits: this.limits,
      clientId: 'docker2cvmfs', send: (spec) => this.withRetries(() => spec),
    });
  }

  endpoint(ref: ImageReference): RegistryEndpoint { return registryEndpoint(ref, { insecure: this.o.insecure }); }

  private repoUrl(ref: ImageReference, rest: string): string { return `${this.endpoint(ref).baseUrl}/${ref.repository}/${rest}`; }

  // ---------------------------------------------------------------------------------------------
  // Transport

  /** One request, repeated on 429 / 503 (and on connection failures of GET / HEAD). */
  private async withRetries(spec: () => SendSpec): Promise<Exchange> {
    for (let attempt = 1, connectAttempt = 1; ; attempt++) {
      const s = spec();
      let ex: Exchange;
      try {
        ex = await send(this.o.fetch, this.limits, s);
      } catch (err) {
        if (isConvertError(err, 'D2C_REGISTRY_UNREACHABLE') && (s.method === 'GET' || s.method === 'HEAD')
          && connectAttempt < this.o.maxConnectAttempts && !s.signal?.aborted) {
          await this.o.sleep(this.backoff(connectAttempt++), s.signal);
          continue;
        }
        throw err;
      }
      const status = ex.res.status;
      if (status !== 429 && status !== 503) return ex;
      const after = retryAfterMs(ex.res.headers.get('retry-after'), this.o.now());
      ex.close();
      const what = `${s.method} ${s.url}`;
      if (after !== undefined && after > this.o.maxRetryAfterMs) {
        throw new ConvertError('D2C_REGISTRY_ERROR', `${what}: HTTP ${status}, retry after ${Math.ceil(after / 1000)} s (longer than the `
          + `${Math.round(this.o.maxRetryAfterMs / 1000)} s we wait)${status === 429 ? ': the registry limits the request rate' : ''}`);
      }
      if (attempt >= this.o.maxAttempts) {
        throw new ConvertError('D2C_REGISTRY_ERROR', `${what}: HTTP ${status} ${status === 429 ? '(too many requests)' : '(service unavailable)'}`
          + ` after ${attempt} attempts`);
      }
      await this.o.sleep(Math.min(this.o.maxRetryAfterMs, after ?? this.backoff(attempt)), s.signal);
    }
  }

  private backoff(attempt: number): number {
    return Math.min(this.o.maxRetryAfterMs, this.o.backoffInitMs * 2 ** (attempt - 1)) * (0.5 + this.o.random() / 2);
  }

  /** A request to the registry API, authenticated as the host asks. */
  private async api(r: ApiRequest): Promise<Exchange> {
    const ep = this.endpoint(r.ref);
    const sameHost = new URL(r.url).host === ep.host;
    let renewed = false;
    let challengeScope: string | undefined;
    let scopeRetried = false;
    for (;;) {
      const auth = sameHost ? await this.auth.authorize(ep.host, r.ref.registry, r.scopes, ep.scheme, r.signal, challengeScope) : undefined;
      const ex = await this.withRetries(() => ({
        method: r.method, url: r.url, signal: r.signal,
        headers: { ...r.headers, ...(auth ? { Authorization: auth.value } : {}) },
        ...(r.body ? { body: r.body() } : {}),
      }));
      if (ex.res.status !== 401 || !sameHost) return ex;
      const header = ex.res.headers.get('www-authenticate');
      ex.close();
      const ch = this.auth.learn(ep.host, header);
      if (!ch) {
        throw new ConvertError('D2C_AUTH_FAILED', `${r.method} ${r.url}: registry ${ep.host} answered 401 with no challenge we can answer`
          + ` (WWW-Authenticate: ${header ?? 'absent'})`);
      }
      const scope = ch.params['scope'];
      if (!auth) { challengeScope = scope; continue; }
      if (auth.scheme === 'bearer' && !auth.fresh && !renewed) {
        // A cached token the registry no longer takes (expired early, revoked): renew it once.
        this.auth.invalidate(ep.host, r.scopes);
        renewed = true;
        challengeScope = scope;
        continue;
      }
      if (auth.scheme === 'bearer' && scope && scope !== challengeScope && !scopeRetried) {
        // The registry wants a scope we did not ask for (e.g. the source of a mount).
        scopeRetried = true;
        challengeScope = scope;
        continue;
      }
      throw await this.auth.refused(ep.host, r.ref.registry, r.scopes, ch.params['error'] ?? '');
    }
  }

  /** May a request go to `next` after a redirect from `from`? Plain HTTP only where allowed. */
  private checkRedirect(from: URL, next: URL, what: string): void {
    if (next.protocol !== 'https:' && next.protocol !== 'http:') {
      throw new ConvertError('D2C_REGISTRY_ERROR', `${what}: redirected to an unsupported URL ${next.toString()}`);
    }
    if (next.protocol === 'http:' && !plainHttpAllowed(next.host, this.o.insecure) && !(from.protocol === 'http:' && from.host === next.host)) {
      throw new ConvertError('D2C_REGISTRY_ERROR', `${what}: redirected to plain HTTP ${next.origin}; refused (list ${next.host} as insecure to allow it)`);
    }
  }

  /** GET / HEAD following redirects; only the registry's API host gets its Authorization. */
  private async follow(r: ApiRequest): Promise<Exchange> {
    const apiHost = this.endpoint(r.ref).host;
    let url = new URL(r.url);
    for (let hops = 0; ; hops++) {
      const ex = url.host === apiHost
        ? await this.api({ ...r, url: url.toString() })
        : await this.withRetries(() => ({ method: r.method, url: url.toString(), signal: r.signal, ...(r.headers ? { headers: r.headers } : {}) }));
      if (!REDIRECTS.has(ex.res.status)) return ex;
      const location = ex.res.headers.get('location');
      ex.close();
      const what = `${r.method} ${r.url}`;
      if (!location) throw new ConvertError('D2C_REGISTRY_ERROR', `${what}: HTTP ${ex.res.status} without a Location`);
      if (hops >= this.o.maxRedirects) throw new ConvertError('D2C_REGISTRY_ERROR', `${what}: more than ${this.o.maxRedirects} redirects`);
      const next = new URL(location, url);
      this.checkRedirect(url, next, what);
      url = next;
    }
  }

  /** The ConvertError for an unexpected answer; reads (a bounded part of) the registry's error body. */
  private async failure(ex: Exchange, what: string, signal: AbortSignal | undefined, notFound?: string): Promise<ConvertError> {
    const status = ex.res.status;
    let errors: RegistryErrorEntry[] = [];
    if (ex.res.body && status >= 400) {
      try {
        const b = await readBody(ex, this.limits, signal, what, MAX_ERROR_BODY_BYTES, () => new ConvertError('D2C_REGISTRY_ERROR', 'error body too large'));
        const parsed: unknown = JSON.parse(b.toString('utf8'));
        const list = (parsed as { errors?: unknown }).errors;
        if (Array.isArray(list)) {
          errors = list.filter((e): e is Record<string, unknown> => typeof e === 'object' && e !== null)
            .map((e) => ({ code: String(e['code'] ?? ''), message: String(e['message'] ?? '') }));
        }
      } catch { /* not JSON: the status says enough */ }
    }
    ex.close();
    const codes = new Set(errors.map((e) => e.code));
    const detail = errors.length ? `: ${errors.map((e) => `${e.code}${e.message ? ` (${e.message})` : ''}`).join(', ')}` : '';
    const msg = `${what}: HTTP ${status}${detail}`;
    if (status === 404 || codes.has('MANIFEST_UNKNOWN') || codes.has('NAME_UNKNOWN') || codes.has('BLOB_UNKNOWN')) {
      return new ConvertError('D2C_IMAGE_NOT_FOUND', notFound ? `${notFound}${detail}` : msg);
    }
    if (status === 401 || status === 403 || codes.has('DENIED') || codes.has('UNAUTHORIZED')) return new ConvertError('D2C_AUTH_FAILED', msg);
    if (codes.has('DIGEST_INVALID')) return new ConvertError('D2C_DIGEST_MISMATCH', msg);
    return new ConvertError('D2C_REGISTRY_ERROR', msg);
  }

  // ---------------------------------------------------------------------------------------------
  // Pull

  /**
   * The manifest or index `ref` names (its digest if it has one, else its tag). The bytes are
   * checked against the reference's digest and against `Docker-Content-Digest` (sha256 only).
   * D2C_IMAGE_NOT_FOUND for an unknown repository or tag, D2C_DIGEST_MISMATCH, and
   * D2C_UNSUPPORTED_MEDIA_TYPE for schema 1 and non-image artifacts.
   */
  async getManifest(ref: ImageReference, opts: { readonly signal?: AbortSignal } = {}): Promise<FetchedManifest> {
    const name = formatReference(ref);
    const what = `manifest of ${name}`;
    const ex = await this.follow({
      ref, method: 'GET', url: this.repoUrl(ref, `manifests/${ref.digest ?? ref.tag ?? 'latest'}`), signal: opts.signal,
      scopes: [repositoryScope(ref.repository, 'pull')], headers: { Accept: MANIFEST_ACCEPT },
    });
    if (ex.res.status !== 200) throw await this.failure(ex, `GET ${what}`, opts.signal, `image ${name} not found at ${this.endpoint(ref).host}`);
    const contentType = (ex.res.headers.get('content-type') ?? '').split(';')[0]!.trim();
    const contentDigest = ex.res.headers.get('docker-content-digest') ?? undefined;
    const bytes = await readBody(ex, this.limits, opts.signal, what, MAX_MANIFEST_BYTES,
      () => new ConvertError('D2C_BAD_IMAGE', `${what} is larger than ${MAX_MANIFEST_BYTES} bytes`));
    const digest = sha256(bytes);
    if (ref.digest !== undefined && digest !== ref.digest) {
      throw new ConvertError('D2C_DIGEST_MISMATCH', `${what}: the registry sent bytes with digest ${digest}, not ${ref.digest}`);
    }
    if (contentDigest !== undefined && contentDigest.startsWith('sha256:') && contentDigest !== digest) {
      throw new ConvertError('D2C_DIGEST_MISMATCH', `${what}: Docker-Content-Digest says ${contentDigest} but the bytes hash to ${digest}`);
    }
    return { ...parseManifest(bytes, contentType, what), bytes, digest, ...(contentDigest !== undefined ? { contentDigest } : {}) };
  }

  /**
   * The image `ref` names, for `platform` (default: the host's). An index is resolved to its entry
   * for the platform (D2C_PLATFORM_NOT_FOUND lists what it has); the config is fetched and checked
   * against its digest and size. The result's `source` reads blobs from `ref`'s repository.
   */
  async resolve(ref: ImageReference, platform: Platform = hostPlatform(),
    opts: BlobOptions & { readonly signal?: AbortSignal } = {}): Promise<RegistryImage> {
    const name = formatReference(ref);
    let m = await this.getManifest(ref, opts);
    let indexDigest: string | undefined;
    let chosen: Descriptor | undefined;
    for (let depth = 0; m.kind === 'index'; depth++) {
      checkIndexDepth(depth + 1, name);
      indexDigest ??= m.digest;
      chosen = selectManifest(m.index.manifests, platform, `image index ${name}`);
      const child = await this.getManifest({ ...ref, digest: chosen.digest }, opts);
      if (child.bytes.length !== chosen.size) {
        throw new ConvertError('D2C_BAD_IMAGE', `${name}: the index entry for ${chosen.digest} says ${chosen.size} bytes, the manifest has ${child.bytes.length}`);
      }
      m = child;
    }
    const manifest = m.manifest;
    const configType = manifest.config.mediaType;
    if (configType !== MEDIA.dockerConfig && configType !== MEDIA.ociConfig) {
      throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `${name} is not a container image: its config has media type ${configType}`);
    }
    for (const l of manifest.layers) {
      if (!layerMediaType(l.mediaType)) {
        throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `${name}: layer ${l.digest} has media type ${l.mediaType}, which is not supported`);
      }
    }
    const configBytes = await this.fetchBlobBytes(ref, manifest.config, MAX_CONFIG_BYTES, `config of ${name}`, opts.signal);
    const config = parseConfig(configBytes, `config ${manifest.config.digest} of ${name}`, manifest.layers.length);
    return {
      name, reference: ref, manifest, manifestBytes: m.bytes, manifestDigest: m.digest, config, configBytes,
      source: this.source(ref, opts),
      ...(indexDigest !== undefined ? { indexDigest } : {}),
      ...(chosen?.platform ? { platform: chosen.platform } : {}),
    };
  }

  /** Blobs of `ref`'s repository as a BlobSource (the tag and digest of `ref` do not matter). */
  source(ref: ImageReference, opts: BlobOptions = {}): BlobSource {
    return { openBlob: (d, signal) => this.openBlob(ref, d, signal, opts) };
  }

  /**
   * Streams blob `d` of `ref`'s repository, unverified (the caller hashes). Redirects are followed
   * without the registry's Authorization. With `foreignUrls`, `d.urls` are tried first.
   */
  async openBlob(ref: ImageReference, d: Descriptor, signal?: AbortSignal, opts: BlobOptions = {}): Promise<Readable> {
    if (!SHA256_DIGEST.test(d.digest)) throw new ConvertError('D2C_BAD_IMAGE', `blob digest ${JSON.stringify(d.digest)} is not sha256:<64 hex>`);
    const what = `blob ${d.digest} of ${formatReference(ref)}`;
    const failures: string[] = [];
    if (opts.foreignUrls) {
      for (const u of d.urls ?? []) {
        try {
          let url: URL;
          try { url = new URL(u); } catch { throw new ConvertError('D2C_BAD_IMAGE', `not a URL: ${u}`); }
          if (url.protocol !== 'https:' && !(url.protocol === 'http:' && plainHttpAllowed(url.host, this.o.insecure))) {
            throw new ConvertError('D2C_REGISTRY_ERROR', `${url.protocol} URL refused (only https, or http to loopback / insecure hosts)`);
          }
          const ex = await this.follow({ ref, method: 'GET', url: url.toString(), scopes: [], signal, headers: { 'Accept-Encoding': 'identity' } });
          if (ex.res.status === 200) return bodyStream(ex, this.limits, signal, `${what} from ${url.origin}`);
          throw await this.failure(ex, `GET ${url.toString()}`, signal);
        } catch (err) {
          if (isConvertError(err, 'D2C_ABORTED')) throw err;
          failures.push(`${u}: ${(err as Error).message}`);
        }
      }
    }
    const ex = await this.follow({
      ref, method: 'GET', url: this.repoUrl(ref, `blobs/${d.digest}`), signal,
      scopes: [repositoryScope(ref.repository, 'pull')], headers: { 'Accept-Encoding': 'identity' },
    });
    if (ex.res.status !== 200) {
      const err = await this.failure(ex, `GET ${what}`, signal, `${what} not found`);
      if (failures.length === 0) throw err;
      throw new ConvertError(err.code, `${err.message}; its URLs failed too:\n  ${failures.join('\n  ')}`, { cause: err });
    }
    return bodyStream(ex, this.limits, signal, what);
  }

  /** A small blob in memory, checked against the descriptor's size and digest. */
  private async fetchBlobBytes(ref: ImageReference, d: Descriptor, maxBytes: number, what: string, signal?: AbortSignal): Promise<Buffer> {
    if (d.size > maxBytes) throw new ConvertError('D2C_BAD_IMAGE', `${what} is ${d.size} bytes, more than the ${maxBytes} we accept`);
    const bytes = await readAll(await this.openBlob(ref, d, signal), d.size,
      () => new ConvertError('D2C_DIGEST_MISMATCH', `${what}: more than the ${d.size} bytes its descriptor says`));
    checkDigest(bytes, d, what);
    return bytes;
  }

  /** All tags of `ref`'s repository, following `Link: <…>; rel="next"` (pages of `pageSize` if given). */
  async listTags(ref: ImageReference, opts: { readonly pageSize?: number; readonly signal?: AbortSignal } = {}): Promise<string[]> {
    const name = `${ref.registry}/${ref.repository}`;
    const tags: string[] = [];
    const seen = new Set<string>();
    let url: string | undefined = this.repoUrl(ref, `tags/list${opts.pageSize ? `?n=${opts.pageSize}` : ''}`);
    for (let page = 0; url !== undefined; page++) {
      if (page >= MAX_TAG_PAGES || seen.has(url)) throw new ConvertError('D2C_REGISTRY_ERROR', `tags of ${name}: the pagination does not end`);
      seen.add(url);
      const ex = await this.follow({ ref, method: 'GET', url, scopes: [repositoryScope(ref.repository, 'pull')], signal: opts.signal,
        headers: { Accept: 'application/json' } });
      if (ex.res.status !== 200) throw await this.failure(ex, `GET tags of ${name}`, opts.signal, `repository ${name} not found`);
      const link = ex.res.headers.get('link');
      const bytes = await readBody(ex, this.limits, opts.signal, `tags of ${name}`, MAX_MANIFEST_BYTES,
        () => new ConvertError('D2C_REGISTRY_ERROR', `a tag page of ${name} is larger than ${MAX_MANIFEST_BYTES} bytes`));
      let list: unknown;
      try { list = (JSON.parse(bytes.toString('utf8')) as { tags?: unknown }).tags; } catch (err) {
        throw new ConvertError('D2C_REGISTRY_ERROR', `tags of ${name}: the answer is not JSON`, { cause: err });
      }
      if (list !== null && list !== undefined) {
        if (!Array.isArray(list) || !list.every((t): t is string => typeof t === 'string')) {
          throw new ConvertError('D2C_REGISTRY_ERROR', `tags of ${name}: "tags" is not a list of strings`);
        }
        tags.push(...list);
      }
      const next = link ? /<([^>]*)>\s*;[^,]*rel="?next"?/.exec(link)?.[1] : undefined;
      url = next !== undefined ? new URL(next, url).toString() : undefined;
    }
    return tags;
  }

  // ---------------------------------------------------------------------------------------------
  // Push

  /** Whether `ref`'s repository has blob `d` (HEAD). */
  async blobExists(ref: ImageReference, d: Descriptor, signal?: AbortSignal): Promise<boolean> {
    return this.headBlob(ref, d, [repositoryScope(ref.repository, 'pull')], signal);
  }

  private async headBlob(ref: ImageReference, d: Descriptor, scopes: readonly string[], signal?: AbortSignal): Promise<boolean> {
    const ex = await this.api({ ref, method: 'HEAD', url: this.repoUrl(ref, `blobs/${d.digest}`), scopes, signal });
    const status = ex.res.status;
    if (status === 200 || REDIRECTS.has(status) || status === 404) { ex.close(); return status !== 404; }
    throw await this.failure(ex, `HEAD blob ${d.digest} of ${formatReference(ref)}`, signal);
  }

  /**
   * Uploads blob `d` to `ref`'s repository unless it is there: a cross-repository mount when
   * `mountFrom` is given and the registry agrees, else POST and a monolithic PUT `?digest=` (or
   * POST, PATCH, PUT with `chunked`). `body` is called once per attempt and must yield exactly the
   * blob's bytes; the registry verifies the digest (DIGEST_INVALID → D2C_DIGEST_MISMATCH).
   */
  async pushBlob(ref: ImageReference, d: Descriptor, body: () => Readable, opts: PushBlobOptions = {}): Promise<PushBlobResult> {
    const { signal } = opts;
    const name = formatReference(ref);
    const push = repositoryScope(ref.repository, 'pull,push');
    if (await this.headBlob(ref, d, [push], signal)) return 'exists';
    const scopes = opts.mountFrom ? [push, repositoryScope(opts.mountFrom, 'pull')] : [push];
    let postUrl = this.repoUrl(ref, 'blobs/uploads/');
    if (opts.mountFrom) postUrl += `?${new URLSearchParams({ mount: d.digest, from: opts.mountFrom }).toString()}`;
    const post = await this.api({ ref, method: 'POST', url: postUrl, scopes, signal, headers: { 'Content-Length': '0' } });
    if (post.res.status === 201 && opts.mountFrom) { post.close(); return 'mounted'; }
    if (post.res.status !== 202) throw await this.failure(post, `POST upload of ${d.digest} to ${name}`, signal);
    let location = this.location(post, postUrl, `upload of ${d.digest} to ${name}`);
    post.close();
    if (opts.chunked) {
      const patch = await this.api({ ref, method: 'PATCH', url: location, scopes, signal, body,
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(d.size) } });
      if (patch.res.status !== 202) throw await this.failure(patch, `PATCH upload of ${d.digest} to ${name}`, signal);
      const next = this.location(patch, location, `upload of ${d.digest} to ${name}`);
      patch.close();
      location = next;
    }
    const putUrl = new URL(location);
    putUrl.searchParams.set('digest', d.digest);
    const put = await this.api({
      ref, method: 'PUT', url: putUrl.toString(), scopes, signal,
      ...(opts.chunked ? { headers: { 'Content-Length': '0' } }
        : { body, headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(d.size) } }),
    });
    if (put.res.status !== 201 && put.res.status !== 204) throw await this.failure(put, `PUT blob ${d.digest} to ${name}`, signal);
    put.close();
    return 'uploaded';
  }

  /** The absolute upload URL from a Location header (registries send relative and absolute ones). */
  private location(ex: Exchange, base: string, what: string): string {
    const loc = ex.res.headers.get('location');
    if (!loc) throw new ConvertError('D2C_REGISTRY_ERROR', `${what}: the registry sent no Location`);
    const url = new URL(loc, base);
    this.checkRedirect(new URL(base), url, what);
    return url.toString();
  }

  /**
   * Stores a manifest or index under `ref`'s tag (or digest) and returns its digest. A reference
   * with a digest must match the bytes; the registry's Docker-Content-Digest must too.
   */
  async pushManifest(ref: ImageReference, bytes: Buffer, mediaType: string, signal?: AbortSignal): Promise<string> {
    const digest = sha256(bytes);
    const name = formatReference(ref);
    if (ref.digest !== undefined && ref.digest !== digest) {
      throw new ConvertError('D2C_DIGEST_MISMATCH', `manifest for ${name}: the bytes have digest ${digest}`);
    }
    const ex = await this.api({
      ref, method: 'PUT', url: this.repoUrl(ref, `manifests/${ref.tag ?? digest}`), signal,
      scopes: [repositoryScope(ref.repository, 'pull,push')], body: () => bytes,
      headers: { 'Content-Type': mediaType, 'Content-Length': String(bytes.length) },
    });
    if (ex.res.status !== 201 && ex.res.status !== 200) throw await this.failure(ex, `PUT manifest ${name}`, signal);
    const said = ex.res.headers.get('docker-content-digest');
    ex.close();
    if (said && said.startsWith('sha256:') && said !== digest) {
      throw new ConvertError('D2C_DIGEST_MISMATCH', `PUT manifest ${name}: the registry stored ${said}, we sent ${digest}`);
    }
    return digest;
  }
}
