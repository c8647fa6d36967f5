/**
 * Real registries for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with its
 * own storage, in three modes — `open`, `htpasswd` (basic auth) and `token` (Bearer tokens from a
 * small issuer started here) — plus builders that make images in memory and push them through
 * RegistryClient's own push code, so no dockerd is needed.
 *
 * Token mode, as distribution 2.8 verifies tokens (registry/auth/token/token.go): the JWT header
 * carries `x5c` with our self-signed certificate, which is the registry's `rootcertbundle`; `iss`
 * must be the configured issuer and `aud` the service; `exp`/`nbf` are checked with 60 s leeway;
 * the `access` claim must grant each action the request needs. The issuer's policy: anonymous
 * callers may pull repositories under `publicPrefixes`; known users may pull and push anything;
 * a wrong password is a 401 from the issuer.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes, sign, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import bcrypt from 'bcryptjs';
import { compress as zstdCompress } from 'zstd-napi';
import { selfSignedCertificate } from '../../cvmfs/format/certificate.js';
import { MEDIA, type Descriptor, type ImageConfig, type Platform } from '../../docker2cvmfs/image.js';
import type { ImageReference } from '../../docker2cvmfs/reference.js';
import type { RegistryClient } from '../../docker2cvmfs/registry/client.js';
import { tarOf, type TarSpec } from './tar-of.js';

export const REGISTRY_BINARY = '/usr/bin/docker-registry';

/** The docker-registry binary, or undefined (tests then skip loudly). */
export function registryBinary(): string | undefined {
  try { fs.accessSync(REGISTRY_BINARY, fs.constants.X_OK); return REGISTRY_BINARY; } catch { return undefined; }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export type RegistryMode = 'open' | 'htpasswd' | 'token';

export interface TokenRequestRecord {
  readonly method: string;
  readonly user: string | undefined;
  readonly scopes: readonly string[];
  readonly offlineToken: boolean;
  readonly refused: boolean;
}

export interface TokenIssuer {
  /** The realm: `http://127.0.0.1:<port>/token` */
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  readonly certPem: string;
  readonly log: TokenRequestRecord[];
  ttlSeconds: number;
  close(): Promise<void>;
}

export interface TestRegistry {
  readonly mode: RegistryMode;
  /** `127.0.0.1:<port>`, as a reference names it. */
  readonly host: string;
  readonly url: string;
  /** The registry's filesystem storage (tests corrupt blobs under docker/registry/v2/blobs). */
  readonly storageDir: string;
  readonly users: Readonly<Record<string, string>>;
  readonly issuer?: TokenIssuer;
  /** `<host>/<repository>[:tag]` parsed by the caller: here only the string. */
  name(repositoryAndTag: string): string;
  close(): Promise<void>;
}

export interface StartOptions {
  /** user → password (htpasswd and token modes). Default `{ alice: 'wonderland' }`. */
  readonly users?: Readonly<Record<string, string>>;
  /** Token mode: repository prefixes anonymous callers may pull. Default `['public/']`. */
  readonly publicPrefixes?: readonly string[];
  /** Token mode: identity (refresh) tokens the issuer accepts, token → user. */
  readonly refreshTokens?: Readonly<Record<string, string>>;
  readonly tokenTtlSeconds?: number;
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

/** Starts the token issuer (HTTP on 127.0.0.1:0) with a fresh RSA key and certificate. */
export async function startTokenIssuer(opts: {
  readonly users: Readonly<Record<string, string>>; readonly publicPrefixes: readonly string[];
  readonly refreshTokens?: Readonly<Record<string, string>>; readonly ttlSeconds?: number;
}): Promise<TokenIssuer> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  // Backdated an hour: the registry's x509 check must not see a certificate from the future.
  const certPem = selfSignedCertificate('docker2cvmfs test token issuer', privateKey, publicKey, new Date(Date.now() - 3_600_000), 2);
  const certDer = new X509Certificate(certPem).raw;
  const service = 'test-registry';
  const issuerName = 'test-issuer';
  const log: TokenRequestRecord[] = [];
  const state = { ttlSeconds: opts.ttlSeconds ?? 300 };

  const grant = (user: string | undefined, scope: string): { type: string; name: string; actions: string[] } | undefined => {
    const first = scope.indexOf(':');
    const last = scope.lastIndexOf(':');
    if (first < 0 || last === first) return undefined;
    const type = scope.slice(0, first);
    const name = scope.slice(first + 1, last);
    const asked = scope.slice(last + 1).split(',').filter(Boolean);
    if (type !== 'repository') return { type, name, actions: [] };
    const allowed = user !== undefined ? ['pull', 'push', '*'] : opts.publicPrefixes.some((p) => name.startsWith(p)) ? ['pull'] : [];
    return { type, name, actions: asked.filter((a) => allowed.includes(a)) };
  };

  const issue = (user: string | undefined, scopes: readonly string[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'RS256', x5c: [certDer.toString('base64')] };
    const claims = {
      iss: issuerName, sub: user ?? '', aud: service, exp: now + state.ttlSeconds, nbf: now - 1, iat: now,
      jti: randomBytes(8).toString('hex'),
      access: scopes.map((s) => grant(user, s)).filter((g): g is NonNullable<typeof g> => g !== undefined),
    };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    return `${signingInput}.${b64url(sign('sha256', Buffer.from(signingInput), privateKey))}`;
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname !== '/token') { res.writeHead(404).end(); return; }
      let user: string | undefined;
      let scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
      const refuse = () => {
        log.push({ method: req.method ?? '', user, scopes, offlineToken: url.searchParams.get('offline_token') === 'true', refused: true });
        res.writeHead(401, { 'Content-Type': 'application/json' }).end(JSON.stringify({ details: 'incorrect username or password' }));
      };
      if (req.method === 'POST') {
        const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        scopes = (form.get('scope') ?? '').split(' ').filter(Boolean);
        const rt = form.get('refresh_token') ?? '';
        user = opts.refreshTokens?.[rt];
        if (form.get('grant_type') !== 'refresh_token' || user === undefined) { refuse(); return; }
        log.push({ method: 'POST', user, scopes, offlineToken: false, refused: false });
        const token = issue(user, scopes);
        res.writeHead(200, { 'Content-Type': 'application/json' })
          .end(JSON.stringify({ access_token: token, expires_in: state.ttlSeconds, refresh_token: rt }));
        return;
      }
      const authz = req.headers.authorization;
      if (authz) {
        const m = /^Basic (.+)$/.exec(authz);
        const decoded = m ? Buffer.from(m[1]!, 'base64').toString('utf8') : '';
        const colon = decoded.indexOf(':');
        user = colon >= 0 ? decoded.slice(0, colon) : decoded;
        if (colon < 0 || opts.users[user] !== decoded.slice(colon + 1)) { refuse(); return; }
      }
      log.push({ method: 'GET', user, scopes, offlineToken: url.searchParams.get('offline_token') === 'true', refused: false });
      const token = issue(user, scopes);
      res.writeHead(200, { 'Content-Type': 'application/json' })
        .end(JSON.stringify({ token, access_token: token, expires_in: state.ttlSeconds, issued_at: new Date().toISOString() }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    realm: `http://127.0.0.1:${port}/token`, service, issuer: issuerName, certPem, log,
    get ttlSeconds() { return state.ttlSeconds; },
    set ttlSeconds(v: number) { state.ttlSeconds = v; },
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

function configYaml(o: { port: number; storage: string; mode: RegistryMode; htpasswd?: string; issuer?: TokenIssuer; certFile?: string }): string {
  const lines = [
    'version: 0.1',
    'log:', '  level: warn', '  accesslog:', '    disabled: true',
    'storage:', '  filesystem:', `    rootdirectory: ${o.storage}`, '  delete:', '    enabled: true',
    '  maintenance:', '    uploadpurging:', '      enabled: false',
    'http:', `  addr: 127.0.0.1:${o.port}`, `  secret: ${randomBytes(16).toString('hex')}`,
    // Foreign layers may name URLs on loopback (tests serve them there).
    'validation:', '  manifests:', '    urls:', '      allow:', "        - '^http://127\\.0\\.0\\.1:'",
  ];
  if (o.mode === 'htpasswd') lines.push('auth:', '  htpasswd:', '    realm: test-registry', `    path: ${o.htpasswd}`);
  if (o.mode === 'token') {
    lines.push('auth:', '  token:', `    realm: ${o.issuer!.realm}`, `    service: ${o.issuer!.service}`,
      `    issuer: ${o.issuer!.issuer}`, `    rootcertbundle: ${o.certFile}`);
  }
  return lines.join('\n') + '\n';
}

/** Starts a registry; call `close()` (t.teardown) to kill it and delete its storage. */
export async function startRegistry(mode: RegistryMode, opts: StartOptions = {}): Promise<TestRegistry> {
  const binary = registryBinary();
  if (!binary) throw new Error(`${REGISTRY_BINARY} is missing (apt-get install docker-registry)`);
  const users = opts.users ?? { alice: 'wonderland' };
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `d2c-registry-${mode}-`));
  const storage = path.join(dir, 'storage');
  await fsp.mkdir(storage);
  let issuer: TokenIssuer | undefined;
  let htpasswd: string | undefined;
  let certFile: string | undefined;
  if (mode === 'htpasswd') {
    htpasswd = path.join(dir, 'htpasswd');
    await fsp.writeFile(htpasswd, Object.entries(users).map(([u, p]) => `${u}:${bcrypt.hashSync(p, 4)}`).join('\n') + '\n');
  }
  if (mode === 'token') {
    issuer = await startTokenIssuer({ users, publicPrefixes: opts.publicPrefixes ?? ['public/'],
      ...(opts.refreshTokens ? { refreshTokens: opts.refreshTokens } : {}), ...(opts.tokenTtlSeconds ? { ttlSeconds: opts.tokenTtlSeconds } : {}) });
    certFile = path.join(dir, 'token-ca.pem');
    await fsp.writeFile(certFile, issuer.certPem);
  }
  let child: ChildProcess | undefined;
  let port = 0;
  const logFile = path.join(dir, 'registry.log');
  const cleanup = async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child!.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child?.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    }
    await issuer?.close();
    await fsp.rm(dir, { recursive: true, force: true });
  };
  try {
    for (let tries = 0; ; tries++) {
      port = await freePort();
      const configFile = path.join(dir, 'config.yml');
      await fsp.writeFile(configFile, configYaml({ port, storage, mode, ...(htpasswd ? { htpasswd } : {}),
        ...(issuer ? { issuer } : {}), ...(certFile ? { certFile } : {}) }));
      const out = fs.openSync(logFile, 'a');
      child = spawn(binary, ['serve', configFile], { stdio: ['ignore', out, out] });
      fs.closeSync(out);
      const up = await waitUntilUp(`http://127.0.0.1:${port}/v2/`, child, 15_000);
      if (up) break;
      if (tries >= 2) throw new Error(`docker-registry did not start:\n${await fsp.readFile(logFile, 'utf8').catch(() => '')}`);
    }
  } catch (err) {
    await cleanup();
    throw err;
  }
  const host = `127.0.0.1:${port}`;
  let closed: Promise<void> | undefined;
  return {
    mode, host, url: `http://${host}`, storageDir: storage, users, ...(issuer ? { issuer } : {}),
    name: (rest) => `${host}/${rest}`,
    close: () => (closed ??= cleanup()),
  };
}

/** Polls `/v2/` until it answers 200 or 401; false when the process died (e.g. the port was taken). */
async function waitUntilUp(url: string, child: ChildProcess, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) return false;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      if (res.status === 200 || res.status === 401) return true;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  return false;
}

// -------------------------------------------------------------------------------------------------
// Images in memory

export type TestCompression = 'gzip' | 'zstd' | 'none';

export interface LayerSpec {
  /** path → content; directories are implied. */
  readonly files: Readonly<Record<string, string | Buffer>>;
  readonly compression?: TestCompression;
}

export interface BuiltLayer {
  readonly descriptor: Descriptor;
  /** The uncompressed tar. */
  readonly tar: Buffer;
  /** The blob as pushed. */
  readonly blob: Buffer;
  readonly diffId: string;
}

export interface BuiltImage {
  readonly format: 'docker' | 'oci';
  readonly mediaType: string;
  readonly manifestBytes: Buffer;
  readonly manifestDigest: string;
  readonly config: ImageConfig;
  readonly configBytes: Buffer;
  readonly configDescriptor: Descriptor;
  readonly layers: readonly BuiltLayer[];
  readonly platform: Platform;
  /** Extra blobs (e.g. of an attestation manifest) to push along. */
  readonly extraBlobs?: readonly { readonly descriptor: Descriptor; readonly blob: Buffer }[];
}

export const sha256Of = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function layerMedia(format: 'docker' | 'oci', c: TestCompression): string {
  if (format === 'docker') return c === 'gzip' ? MEDIA.dockerLayerGzip : c === 'zstd' ? MEDIA.dockerLayerZstd : MEDIA.ociLayer;
  return c === 'gzip' ? MEDIA.ociLayerGzip : c === 'zstd' ? MEDIA.ociLayerZstd : MEDIA.ociLayer;
}

export async function buildLayer(spec: LayerSpec, format: 'docker' | 'oci'): Promise<BuiltLayer> {
  const entries: TarSpec[] = [];
  const dirs = new Set<string>();
  for (const [p, content] of Object.entries(spec.files)) {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!dirs.has(d)) { dirs.add(d); entries.push({ type: 'directory', name: `${d}/` }); }
    }
    entries.push({ type: 'file', name: p, content });
  }
  const tar = await tarOf(entries);
  const c = spec.compression ?? 'gzip';
  const blob = c === 'gzip' ? gzipSync(tar) : c === 'zstd' ? Buffer.from(zstdCompress(tar)) : tar;
  return { tar, blob, diffId: sha256Of(tar), descriptor: { mediaType: layerMedia(format, c), digest: sha256Of(blob), size: blob.length } };
}

export interface ImageSpec {
  readonly layers: readonly LayerSpec[];
  readonly format?: 'docker' | 'oci';
  readonly platform?: Platform;
  readonly env?: readonly string[];
}

/** An image (manifest, config, layer blobs) in memory; nothing is pushed. */
export async function buildImage(spec: ImageSpec): Promise<BuiltImage> {
  const format = spec.format ?? 'docker';
  const platform = spec.platform ?? { os: 'linux', architecture: 'amd64' };
  const layers = [];
  for (const l of spec.layers) layers.push(await buildLayer(l, format));
  const config: ImageConfig = {
    architecture: platform.architecture, os: platform.os, ...(platform.variant ? { variant: platform.variant } : {}),
    created: '2024-01-01T00:00:00Z',
    config: { Env: [...(spec.env ?? ['PATH=/usr/bin:/bin'])], Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({ created: '2024-01-01T00:00:00Z', created_by: `layer ${i}` })),
  };
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDescriptor: Descriptor = { mediaType: format === 'docker' ? MEDIA.dockerConfig : MEDIA.ociConfig, digest: sha256Of(configBytes), size: configBytes.length };
  const mediaType = format === 'docker' ? MEDIA.dockerManifest : MEDIA.ociManifest;
  const manifestBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, config: configDescriptor, layers: layers.map((l) => l.descriptor) }, null, 3));
  return { format, mediaType, manifestBytes, manifestDigest: sha256Of(manifestBytes), config, configBytes, configDescriptor, layers, platform };
}

/** A buildx-style attestation manifest (config + one in-toto blob), to sit in an index as `unknown/unknown`. */
export function buildAttestation(subject: string): BuiltImage {
  const statement = Buffer.from(JSON.stringify({ _type: 'https://in-toto.io/Statement/v0.1', subject: [{ digest: { sha256: subject.slice(7) } }] }));
  const configBytes = Buffer.from('{}');
  const configDescriptor: Descriptor = { mediaType: MEDIA.ociConfig, digest: sha256Of(configBytes), size: configBytes.length };
  const layer: Descriptor = { mediaType: 'application/vnd.in-toto+json', digest: sha256Of(statement), size: statement.length };
  const manifestBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociManifest, config: configDescriptor, layers: [layer] }));
  return {
    format: 'oci', mediaType: MEDIA.ociManifest, manifestBytes, manifestDigest: sha256Of(manifestBytes),
    config: { rootfs: { type: 'layers', diff_ids: [] } }, configBytes, configDescriptor, layers: [],
    platform: { os: 'unknown', architecture: 'unknown' }, extraBlobs: [{ descriptor: layer, blob: statement }],
  };
}

/** Pushes blobs and manifest of `image` to `ref` (by its tag, or by digest when the ref has none). */
export async function pushImage(client: RegistryClient, ref: ImageReference, image: BuiltImage,
  opts: { readonly chunked?: boolean } = {}): Promise<string> {
  const blobs = [
    { descriptor: image.configDescriptor, blob: image.configBytes },
    ...image.layers.map((l) => ({ descriptor: l.descriptor, blob: l.blob })),
    ...(image.extraBlobs ?? []),
  ];
  for (const b of blobs) await client.pushBlob(ref, b.descriptor, () => Readable.from([b.blob]), { ...(opts.chunked ? { chunked: true } : {}) });
  const target: ImageReference = ref.tag !== undefined ? ref : { ...ref, digest: image.manifestDigest };
  return client.pushManifest(target, image.manifestBytes, image.mediaType);
}

export interface BuiltIndex { readonly bytes: Buffer; readonly digest: string; readonly mediaType: string }

/** A manifest list (docker) or OCI index over `images`; attestation entries carry buildx's annotations. */
export function buildIndex(images: readonly BuiltImage[], format: 'docker' | 'oci'): BuiltIndex {
  const mediaType = format === 'docker' ? MEDIA.dockerManifestList : MEDIA.ociIndex;
  const manifests = images.map((im) => ({
    mediaType: im.mediaType, digest: im.manifestDigest, size: im.manifestBytes.length, platform: im.platform,
    ...(im.platform.os === 'unknown'
      ? { annotations: { 'vnd.docker.reference.type': 'attestation-manifest', 'vnd.docker.reference.digest': images[0]!.manifestDigest } }
      : {}),
  }));
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, manifests }));
  return { bytes, digest: sha256Of(bytes), mediaType };
}

/** Pushes every image by digest, then the index under `ref`'s tag. */
export async function pushIndex(client: RegistryClient, ref: ImageReference, images: readonly BuiltImage[],
  format: 'docker' | 'oci'): Promise<BuiltIndex> {
  const untagged: ImageReference = { registry: ref.registry, repository: ref.repository, ...(ref.scheme ? { scheme: ref.scheme } : {}) };
  for (const im of images) await pushImage(client, untagged, im);
  const index = buildIndex(images, format);
  await client.pushManifest(ref, index.bytes, index.mediaType);
  return index;
}

/** Kept for diagnostics: the registry's version line. */
export function registryVersion(): string | undefined {
  const b = registryBinary();
  if (!b) return undefined;
  try { return execFileSync(b, ['--version'], { encoding: 'utf8' }).trim(); } catch { return undefined; }
}
