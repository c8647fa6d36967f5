/**
 * Registry authentication (distribution's token spec, docs/thin-images-and-layout.md §8.3, R23).
 *
 * Model: a host's first request goes out without credentials. A 401 carries a challenge
 * (`WWW-Authenticate: Bearer realm=…,service=…,scope=…` or `Basic realm=…`) which is remembered per
 * host, so later requests to that host authenticate up front. Bearer tokens come from the realm
 * (GET with service and scopes, HTTP basic auth and `offline_token=true` when there are
 * credentials; POST with `grant_type=refresh_token` for an identity token) and are cached per
 * (host, scope set) until shortly before they expire; one token serves every request whose scopes
 * it covers. Concurrent requests for the same token share one fetch. The client drops a cached
 * token and fetches a fresh one once when a request with it gets a 401; a fresh token refused is
 * D2C_AUTH_FAILED.
 */
import { ConvertError } from '../errors.js';
import { plainHttpAllowed } from '../reference.js';
import type { Credentials, CredentialStore } from './credentials.js';
import { readBody, type Exchange, type HttpLimits, type SendSpec } from './http.js';

export interface Challenge {
  /** Lower case: `bearer`, `basic`, … */
  readonly scheme: string;
  readonly params: Readonly<Record<string, string>>;
}

/** Parses `WWW-Authenticate` (RFC 7235: one or more challenges, quoted strings with `\` escapes). */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const out: { scheme: string; params: Record<string, string> }[] = [];
  let i = 0;
  const n = header.length;
  const skipWs = () => { while (i < n && /[\s,]/.test(header[i]!)) i++; };
  const token = () => { const s = i; while (i < n && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(header[i]!)) i++; return header.slice(s, i); };
  while (i < n) {
    skipWs();
    const scheme = token();
    if (!scheme) { i++; continue; }
    const ch = { scheme: scheme.toLowerCase(), params: {} as Record<string, string> };
    out.push(ch);
    for (;;) {
      while (i < n && /[\s]/.test(header[i]!)) i++;
      const save = i;
      const key = token();
      while (i < n && /\s/.test(header[i]!)) i++;
      if (!key || header[i] !== '=') { i = save; break; } // the next challenge's scheme (or token68)
      i++;
      while (i < n && /\s/.test(header[i]!)) i++;
      let value = '';
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') { if (header[i] === '\\' && i + 1 < n) i++; value += header[i]; i++; }
        i++;
      } else value = token();
      ch.params[key.toLowerCase()] = value;
      while (i < n && /\s/.test(header[i]!)) i++;
      if (header[i] === ',') { i++; continue; }
      break;
    }
  }
  return out;
}

/** `repository:<name>:<actions>` */
export const repositoryScope = (repository: string, actions: 'pull' | 'pull,push'): string => `repository:${repository}:${actions}`;

/** A scope string as atoms `type:name:action`; the name may itself hold `:` (a port in a name). */
function atomsOf(scope: string): string[] {
  return scope.split(' ').filter(Boolean).flatMap((s) => {
    const first = s.indexOf(':');
    const last = s.lastIndexOf(':');
    if (first < 0 || last === first) return [s];
    const head = s.slice(0, last);
    return s.slice(last + 1).split(',').filter(Boolean).map((a) => `${head}:${a}`);
  });
}

interface CachedToken { readonly atoms: ReadonlySet<string>; readonly token: string; readonly expiresAtMs: number }

export interface AuthOptions {
  readonly credentials?: CredentialStore | undefined;
  readonly insecure?: readonly string[] | undefined;
  readonly now: () => number;
  /** Sends one request without authentication, with the client's retries on 429/503. */
  readonly send: (spec: SendSpec) => Promise<Exchange>;
  readonly limits: HttpLimits;
  readonly clientId: string;
}

/** An Authorization header value, and whether it was fetched just now (not from the cache). */
export interface Authorization { readonly value: string; readonly fresh: boolean; readonly scheme: string }

/** Spec default for a token answer without `expires_in`. */
export const DEFAULT_TOKEN_TTL_SECONDS = 60;
const MAX_TOKEN_ANSWER_BYTES = 1024 * 1024;

export class Authenticator {
  private readonly challenges = new Map<string, Challenge>();
  private readonly tokens = new Map<string, CachedToken[]>();
  private readonly inflight = new Map<string, Promise<CachedToken>>();
  private readonly creds = new Map<string, Promise<Credentials | undefined>>();

  constructor(private readonly o: AuthOptions) {}

  /** Credentials for a registry name, asked once per client. */
  credentialsFor(registry: string): Promise<Credentials | undefined> {
    let c = this.creds.get(registry);
    if (!c) { c = this.o.credentials?.get(registry) ?? Promise.resolve(undefined); this.creds.set(registry, c); }
    return c;
  }

  /** Remembers what `host` asked for; returns the challenge we can answer (Bearer before Basic). */
  learn(host: string, header: string | null): Challenge | undefined {
    const all = header ? parseWwwAuthenticate(header) : [];
    const ch = all.find((c) => c.scheme === 'bearer' && c.params['realm']) ?? all.find((c) => c.scheme === 'basic');
    if (ch) this.challenges.set(host, ch);
    return ch;
  }

  /** Forgets every cached token of `host` that covers `scopes` (it was refused). */
  invalidate(host: string, scopes: readonly string[]): void {
    const want = scopes.flatMap(atomsOf);
    const list = this.tokens.get(host);
    if (list) this.tokens.set(host, list.filter((t) => !want.every((a) => t.atoms.has(a))));
  }

  /**
   * The Authorization header for a request to `host` (the API host of `registry`) needing
   * `scopes`, or undefined while the host has not challenged us. `challengeScope` is the scope the
   * last 401 asked for, added to the token request.
   */
  async authorize(host: string, registry: string, scopes: readonly string[], scheme: 'http' | 'https',
    signal: AbortSignal | undefined, challengeScope?: string): Promise<Authorization | undefined> {
    const ch = this.challenges.get(host);
    if (!ch) return undefined;
    const creds = await this.credentialsFor(registry);
    if (ch.scheme === 'basic') {
      if (!creds?.username || creds.password === undefined) {
        throw new ConvertError('D2C_AUTH_FAILED', `registry ${host} requires credentials (HTTP basic auth); give --username and --password-stdin, or docker login`);
      }
      return { value: basicHeader(creds.username, creds.password), fresh: false, scheme: 'basic' };
    }
    const want = [...scopes];
    if (challengeScope) for (const s of challengeScope.split(' ')) if (s && !want.includes(s)) want.push(s);
    const atoms = want.flatMap(atomsOf);
    const now = this.o.now();
    const cached = (this.tokens.get(host) ?? []).find((t) => t.expiresAtMs > now && atoms.every((a) => t.atoms.has(a)));
    if (cached) return { value: `Bearer ${cached.token}`, fresh: false, scheme: 'bearer' };
    const key = `${host} ${[...atoms].sort().join(' ')}`;
    let p = this.inflight.get(key);
    if (!p) {
      p = this.fetchToken(host, scheme, ch, want, creds, signal).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    const t = await p;
    const list = (this.tokens.get(host) ?? []).filter((x) => x.expiresAtMs > now);
    list.push(t);
    this.tokens.set(host, list);
    return { value: `Bearer ${t.token}`, fresh: true, scheme: 'bearer' };
  }

  /** The error for a request that was refused with a credential we just obtained. */
  async refused(host: string, registry: string, scopes: readonly string[], detail: string): Promise<ConvertError> {
    const creds = await this.credentialsFor(registry);
    const what = scopes.join(' ');
    if (creds?.username) {
      return new ConvertError('D2C_AUTH_FAILED', `registry ${host} refused the credentials of user "${creds.username}" for ${what}${detail ? ` (${detail})` : ''}`);
    }
    if (creds?.identityToken) return new ConvertError('D2C_AUTH_FAILED', `registry ${host} refused the identity token for ${what}${detail ? ` (${detail})` : ''}`);
    return new ConvertError('D2C_AUTH_FAILED', `registry ${host} denied anonymous access for ${what}${detail ? ` (${detail})` : ''}: `
      + 'the repository does not exist or needs credentials (--username and --password-stdin, or docker login)');
  }

  private async fetchToken(host: string, registryScheme: 'http' | 'https', ch: Challenge, scopes: readonly string[],
    creds: Credentials | undefined, signal: AbortSignal | undefined): Promise<CachedToken> {
    const realm = ch.params['realm']!;
    let url: URL;
    try { url = new URL(realm); } catch {
      throw new ConvertError('D2C_AUTH_FAILED', `registry ${host} names a token realm that is not a URL: ${JSON.stringify(realm)}`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new ConvertError('D2C_AUTH_FAILED', `registry ${host} names a token realm with an unsupported scheme: ${realm}`);
    }
    // Credentials and tokens must not cross the network in clear text unless the user allowed it.
    if (url.protocol === 'http:' && !plainHttpAllowed(url.host, this.o.insecure) && !(registryScheme === 'http' && url.host === host)) {
      throw new ConvertError('D2C_AUTH_FAILED', `registry ${host} names a plain-HTTP token realm ${realm}; refused (list ${url.host} as an insecure registry to allow it)`);
    }
    const service = ch.params['service'];
    const who = creds?.username ? `user "${creds.username}"` : creds?.identityToken ? 'an identity token' : 'anonymous';
    let ex: Exchange;
    if (creds?.identityToken) {
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: this.o.clientId,
        ...(service !== undefined ? { service } : {}), scope: scopes.join(' ') });
      ex = await this.o.send({ method: 'POST', url: url.toString(), body: form, signal,
        headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' } });
    } else {
      if (service !== undefined) url.searchParams.set('service', service);
      for (const s of scopes) url.searchParams.append('scope', s);
      const headers: Record<string, string> = { Accept: 'application/json' };
      if (creds?.username && creds.password !== undefined) {
        url.searchParams.set('offline_token', 'true');
        url.searchParams.set('client_id', this.o.clientId);
        headers['Authorization'] = basicHeader(creds.username, creds.password);
      }
      ex = await this.o.send({ method: 'GET', url: url.toString(), headers, signal });
    }
    const status = ex.res.status;
    if (status === 401 || status === 403) {
      ex.close();
      throw new ConvertError('D2C_AUTH_FAILED', `the token service ${url.origin}${url.pathname} of registry ${host} refused ${who}`
        + `${creds?.username ? '' : ' (credentials may be needed: --username and --password-stdin, or docker login)'}: HTTP ${status}`);
    }
    if (status !== 200) {
      ex.close();
      throw new ConvertError('D2C_REGISTRY_ERROR', `the token service ${url.origin}${url.pathname} of registry ${host} answered HTTP ${status}`);
    }
    const bytes = await readBody(ex, this.o.limits, signal, `token from ${url.origin}`, MAX_TOKEN_ANSWER_BYTES,
      () => new ConvertError('D2C_REGISTRY_ERROR', `the token answer of ${url.origin} is larger than ${MAX_TOKEN_ANSWER_BYTES} bytes`));
    let body: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(bytes.toString('utf8'));
      if (typeof parsed !== 'object' || parsed === null) throw new Error('not an object');
      body = parsed as Record<string, unknown>;
    } catch (err) {
      throw new ConvertError('D2C_REGISTRY_ERROR', `the token service ${url.origin} answered with something that is not a JSON object`, { cause: err });
    }
    const token = typeof body['token'] === 'string' && body['token'] ? body['token']
      : typeof body['access_token'] === 'string' && body['access_token'] ? body['access_token'] : undefined;
    if (!token) throw new ConvertError('D2C_REGISTRY_ERROR', `the token service ${url.origin} answered without "token" or "access_token"`);
    const ttlSeconds = typeof body['expires_in'] === 'number' && body['expires_in'] > 0 ? body['expires_in'] : DEFAULT_TOKEN_TTL_SECONDS;
    // Renew a little early, so a token does not expire between the check and the request.
    const ttlMs = ttlSeconds * 1000;
    return { atoms: new Set(scopes.flatMap(atomsOf)), token, expiresAtMs: this.o.now() + ttlMs - Math.min(30_000, ttlMs / 4) };
  }
}

export function basicHeader(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`;
}
