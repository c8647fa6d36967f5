/**
 * RegistryClient against real registries (distribution 2.8: open, htpasswd, token) started by
 * test/lib/registry.ts, plus small fake servers and proxies for faults a real registry will not
 * produce on demand (429, revoked tokens, tampered manifests, redirects, stalls).
 */
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import t, { type Test } from 'tap';
import { isConvertError, type ConvertErrorCode } from '../../../docker2cvmfs/errors.js';
import { MEDIA, type Descriptor } from '../../../docker2cvmfs/image.js';
import { parseReference, type ImageReference } from '../../../docker2cvmfs/reference.js';
import { RegistryClient, chainCredentials, dockerConfigCredentials, explicitCredentials, hostPlatform, parsePlatform,
  parseWwwAuthenticate, staticCredentials, type FetchFn, type RegistryClientOptions } from '../../../docker2cvmfs/registry/index.js';
import { buildAttestation, buildImage, pushImage, pushIndex, registryBinary, sha256Of, startRegistry,
  type TestRegistry } from '../../lib/registry.js';
import { skipLoudly } from '../../lib/skip.js';

const linux = (architecture: string, variant?: string) => ({ os: 'linux', architecture, ...(variant ? { variant } : {}) });

async function rejectsWith(t: Test, p: Promise<unknown>, code: ConvertErrorCode, re?: RegExp, msg?: string): Promise<void> {
  try {
    await p;
    t.fail(`${msg ?? code}: resolved`);
  } catch (err) {
    const ok = isConvertError(err, code) && (!re || re.test(err.message));
    t.ok(ok, `${msg ?? code}: ${isConvertError(err) ? `${err.code}: ${err.message}` : String(err)}`);
  }
}

async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** A fetch that records `METHOD url` of every request. */
function loggingFetch(log: string[]): FetchFn {
  return (input, init) => { log.push(`${init?.method ?? 'GET'} ${String(input)}`); return fetch(input, init); };
}

interface Server { readonly url: string; readonly host: string; close(): Promise<void> }

async function serve(handler: http.RequestListener): Promise<Server> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url: `http://${host}`, host, close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }) };
}

/**
 * A proxy in front of `target`: `hook` may answer a request itself; otherwise it is forwarded with
 * the proxy's Host (so the registry's Location headers point back at the proxy), and `transform`
 * may rewrite the body.
 */
async function proxy(target: string, hook: (req: http.IncomingMessage) => { status: number; headers?: Record<string, string>; body?: string } | undefined,
  transform?: (req: http.IncomingMessage, res: http.IncomingMessage, body: Buffer) => Buffer | undefined): Promise<Server> {
  const t = new URL(target);
  return serve((req, res) => {
    const answer = hook(req);
    if (answer) { req.resume(); res.writeHead(answer.status, answer.headers).end(answer.body ?? ''); return; }
    const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      if (!transform) { res.writeHead(ur.statusCode ?? 502, ur.headers); ur.pipe(res); return; }
      const chunks: Buffer[] = [];
      ur.on('data', (c: Buffer) => chunks.push(c));
      ur.on('end', () => {
        const body = transform(req, ur, Buffer.concat(chunks)) ?? Buffer.concat(chunks);
        res.writeHead(ur.statusCode ?? 502, { ...ur.headers, 'content-length': String(body.length) }).end(req.method === 'HEAD' ? undefined : body);
      });
    });
    req.pipe(up);
  });
}

const quick: RegistryClientOptions = { backoffInitMs: 1, timeoutMs: 10_000, idleTimeoutMs: 10_000 };

if (!registryBinary()) {
  skipLoudly(t, 'SKIPPED: /usr/bin/docker-registry is missing (apt-get install docker-registry): no registry tests ran');
} else {
  const open = await startRegistry('open');
  t.teardown(() => open.close());
  const basic = await startRegistry('htpasswd');
  t.teardown(() => basic.close());
  const token = await startRegistry('token', { refreshTokens: { 'refresh-123': 'alice' } });
  t.teardown(() => token.close());
  const alice = staticCredentials({ [token.host]: { username: 'alice', password: 'wonderland' }, [basic.host]: { username: 'alice', password: 'wonderland' } });
  const ref = (r: TestRegistry, rest: string): ImageReference => parseReference(r.name(rest));

  const amd64 = await buildImage({ layers: [{ files: { 'etc/hello': 'amd64\n' } }, { files: { 'usr/bin/tool': Buffer.alloc(70_000, 7) } }], platform: linux('amd64') });

  t.test('open registry: push and resolve a Docker v2 image', async (t) => {
    const client = new RegistryClient(quick);
    const r = ref(open, 'test/docker:v1');
    const digest = await pushImage(client, r, amd64);
    t.equal(digest, amd64.manifestDigest);
    const img = await client.resolve(r, linux('amd64'));
    t.equal(img.name, `${open.host}/test/docker:v1`);
    t.equal(img.manifestDigest, amd64.manifestDigest);
    t.same(img.manifestBytes, amd64.manifestBytes, 'the manifest bytes as pushed');
    t.equal(img.manifest.mediaType, MEDIA.dockerManifest);
    t.same(img.configBytes, amd64.configBytes);
    t.same(img.config.rootfs.diff_ids, amd64.layers.map((l) => l.diffId));
    t.equal(img.manifest.layers.length, 2);
    t.equal(img.indexDigest, undefined);
    const blob = await readAll(await img.source.openBlob(img.manifest.layers[1]!));
    t.same(blob, amd64.layers[1]!.blob, 'layer streamed through ResolvedImage.source');
    const byDigest = await client.resolve(parseReference(`${open.host}/test/docker@${digest}`), linux('amd64'));
    t.equal(byDigest.manifestDigest, digest, 'by digest');
    const m = await client.getManifest(r);
    t.equal(m.contentDigest, digest, 'Docker-Content-Digest recorded');
    t.equal(m.kind, 'manifest');
  });

  t.test('open registry: OCI image with zstd and uncompressed layers, chunked upload', async (t) => {
    const client = new RegistryClient(quick);
    const oci = await buildImage({ format: 'oci', layers: [{ files: { a: 'zstd' }, compression: 'zstd' }, { files: { b: 'plain' }, compression: 'none' }] });
    const r = ref(open, 'test/oci:v1');
    await pushImage(client, r, oci, { chunked: true });
    const img = await client.resolve(r, linux('amd64'));
    t.equal(img.manifest.mediaType, MEDIA.ociManifest);
    t.same(img.manifest.layers.map((l) => l.mediaType), [MEDIA.ociLayerZstd, MEDIA.ociLayer]);
    t.same(await readAll(await img.source.openBlob(img.manifest.layers[0]!)), oci.layers[0]!.blob);
    t.same(await readAll(await img.source.openBlob(img.manifest.layers[1]!)), oci.layers[1]!.tar);
  });

  t.test('open registry: manifest list with two platforms, platform selection', async (t) => {
    const client = new RegistryClient(quick);
    const arm64 = await buildImage({ layers: [{ files: { 'etc/hello': 'arm64\n' } }], platform: linux('arm64', 'v8') });
    const r = ref(open, 'test/multi:v1');
    const list = await pushIndex(client, r, [amd64, arm64], 'docker');
    const a = await client.resolve(r, linux('arm64'));
    t.equal(a.manifestDigest, arm64.manifestDigest, 'linux/arm64 picks the arm64/v8 entry');
    t.equal(a.indexDigest, list.digest);
    t.same(a.platform, linux('arm64', 'v8'));
    t.equal((await client.resolve(r, parsePlatform('linux/amd64'))).manifestDigest, amd64.manifestDigest);
    t.equal((await client.resolve(r, parsePlatform('linux/aarch64'))).manifestDigest, arm64.manifestDigest, 'alias aarch64');
    await rejectsWith(t, client.resolve(r, linux('s390x')), 'D2C_PLATFORM_NOT_FOUND', /linux\/amd64, linux\/arm64\/v8/);
    const m = await client.getManifest(r);
    t.equal(m.kind, 'index');
    t.equal(m.mediaType, MEDIA.dockerManifestList);
  });

  t.test('open registry: OCI index with an attestation entry; index by digest', async (t) => {
    const client = new RegistryClient(quick);
    const armv7 = await buildImage({ format: 'oci', layers: [{ files: { x: 'v7' } }], platform: linux('arm', 'v7') });
    const amdOci = await buildImage({ format: 'oci', layers: [{ files: { x: 'amd64' } }], platform: linux('amd64') });
    const r = ref(open, 'test/oci-index:v1');
    const index = await pushIndex(client, r, [amdOci, armv7, buildAttestation(amdOci.manifestDigest)], 'oci');
    t.equal((await client.resolve(r, linux('arm'))).manifestDigest, armv7.manifestDigest, 'arm defaults to v7');
    const byIndexDigest = parseReference(`${open.host}/test/oci-index@${index.digest}`);
    t.equal((await client.resolve(byIndexDigest, linux('amd64'))).manifestDigest, amdOci.manifestDigest);
    await rejectsWith(t, client.resolve(r, linux('arm', 'v6')), 'D2C_PLATFORM_NOT_FOUND', /^(?!.*unknown).*linux\/amd64, linux\/arm\/v7/,
      'arm/v6 not served by v7; unknown/unknown not listed');
    await rejectsWith(t, client.resolve(r, { os: 'unknown', architecture: 'unknown' }), 'D2C_PLATFORM_NOT_FOUND', undefined, 'attestations are never chosen');
  });

  t.test('open registry: blob streaming, blobExists, cross-repository mount', async (t) => {
    const client = new RegistryClient(quick);
    const big = Buffer.alloc(3 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
    const d: Descriptor = { mediaType: MEDIA.ociLayer, digest: sha256Of(big), size: big.length };
    const r = ref(open, 'test/blobs:x');
    t.equal(await client.blobExists(r, d), false);
    t.equal(await client.pushBlob(r, d, () => Readable.from([big.subarray(0, 1000), big.subarray(1000)])), 'uploaded');
    t.equal(await client.blobExists(r, d), true);
    t.equal(await client.pushBlob(r, d, () => Readable.from([big])), 'exists');
    const got = await readAll(await client.openBlob(r, d));
    t.equal(got.length, big.length);
    t.equal(sha256Of(got), d.digest, 'streamed bytes hash to the digest');
    t.equal(await client.pushBlob(ref(open, 'test/blobs-copy:x'), d, () => Readable.from([big]), { mountFrom: 'test/blobs' }), 'mounted');
    t.equal(await client.blobExists(ref(open, 'test/blobs-copy:x'), d), true);
    const ac = new AbortController();
    const s = await client.openBlob(r, d, ac.signal);
    ac.abort();
    await rejectsWith(t, readAll(s), 'D2C_ABORTED', undefined, 'an aborted blob stream errors');
    await rejectsWith(t, client.pushBlob(r, { ...d, digest: sha256Of(Buffer.from('other')) }, () => Readable.from([big])), 'D2C_DIGEST_MISMATCH',
      /DIGEST_INVALID/, 'the registry refuses bytes that do not match the digest');
  });

  t.test('open registry: relative upload Locations are resolved against the request URL', async (t) => {
    const relative: string[] = [];
    const p = await proxy(open.url, () => undefined, (_req, res) => {
      const loc = res.headers.location;
      if (loc?.startsWith('http://')) { res.headers.location = new URL(loc).pathname + new URL(loc).search; relative.push(res.headers.location); }
      return undefined;
    });
    t.teardown(() => p.close());
    const client = new RegistryClient(quick);
    const r = parseReference(`${p.host}/test/relative:v1`);
    await pushImage(client, r, amd64);
    await pushImage(client, parseReference(`${p.host}/test/relative-chunked:v1`), amd64, { chunked: true });
    t.ok(relative.length >= 3 && relative.every((l) => l.startsWith('/v2/')), `relative Locations seen: ${relative.length}`);
    t.equal((await client.resolve(r, linux('amd64'))).manifestDigest, amd64.manifestDigest);
  });

  t.test('open registry: tags list, and Link pagination with ?n=', async (t) => {
    const client = new RegistryClient(quick);
    const tags = ['a1', 'a2', 'b1', 'b2', 'c1', 'c2', 'd1'];
    for (const tag of tags) await pushImage(client, ref(open, `test/tags:${tag}`), amd64);
    t.same((await client.listTags(ref(open, 'test/tags'))).sort(), tags, 'from the registry');
    await rejectsWith(t, client.listTags(ref(open, 'test/no-such-repo')), 'D2C_IMAGE_NOT_FOUND');
    // distribution 2.8 ignores ?n= on tags/list (pagination came with v3), so a paginating proxy
    // answers as v3 and Docker Hub do: `n` per page, `last`, a relative or absolute Link.
    let absolute = false;
    const p = await proxy(open.url, (req) => {
      const u = new URL(req.url ?? '/', 'http://x');
      if (!u.pathname.endsWith('/tags/list') || !u.searchParams.has('n')) return undefined;
      const n = Number(u.searchParams.get('n'));
      const last = u.searchParams.get('last');
      const page = tags.filter((x) => last === null || x > last).slice(0, n);
      const more = page.length > 0 && tags.indexOf(page[page.length - 1]!) < tags.length - 1;
      const next = `${u.pathname}?${new URLSearchParams({ last: page[page.length - 1] ?? '', n: String(n) }).toString()}`;
      return { status: 200, headers: { 'Content-Type': 'application/json',
        ...(more ? { Link: `<${absolute ? `http://${req.headers.host}${next}` : next}>; rel="next"` } : {}) },
      body: JSON.stringify({ name: 'test/tags', tags: page }) };
    });
    t.teardown(() => p.close());
    for (const abs of [false, true]) {
      absolute = abs;
      const log: string[] = [];
      const paged = new RegistryClient({ ...quick, fetch: loggingFetch(log) });
      t.same(await paged.listTags(parseReference(`${p.host}/test/tags`), { pageSize: 2 }), tags, `${abs ? 'absolute' : 'relative'} Link`);
      t.equal(log.filter((l) => l.includes('/tags/list')).length, 4, `four pages of two: ${log.join(', ')}`);
    }
  });

  t.test('open registry: unknown repository, tag, digest → D2C_IMAGE_NOT_FOUND', async (t) => {
    const client = new RegistryClient(quick);
    await rejectsWith(t, client.resolve(ref(open, 'test/nothing-here:v1')), 'D2C_IMAGE_NOT_FOUND', /test\/nothing-here:v1/);
    await rejectsWith(t, client.resolve(ref(open, 'test/docker:no-such-tag')), 'D2C_IMAGE_NOT_FOUND', /no-such-tag/);
    await rejectsWith(t, client.getManifest(parseReference(`${open.host}/test/docker@sha256:${'0'.repeat(64)}`)), 'D2C_IMAGE_NOT_FOUND');
    await rejectsWith(t, client.openBlob(ref(open, 'test/docker'), { mediaType: MEDIA.ociLayer, digest: `sha256:${'1'.repeat(64)}`, size: 1 }),
      'D2C_IMAGE_NOT_FOUND');
  });

  t.test('digest-mismatch: a tampered manifest fails the reference digest and Docker-Content-Digest', async (t) => {
    const client = new RegistryClient(quick);
    await pushImage(client, ref(open, 'test/tamper:v1'), amd64);
    const p = await proxy(open.url, () => undefined, (req, _res, body) => (req.url?.includes('/manifests/') ? Buffer.concat([body, Buffer.from(' ')]) : undefined));
    t.teardown(() => p.close());
    await rejectsWith(t, client.getManifest(parseReference(`${p.host}/test/tamper@${amd64.manifestDigest}`)), 'D2C_DIGEST_MISMATCH',
      new RegExp(`not ${amd64.manifestDigest}`));
    await rejectsWith(t, client.getManifest(parseReference(`${p.host}/test/tamper:v1`)), 'D2C_DIGEST_MISMATCH', /Docker-Content-Digest/);
  });

  t.test('rate-limited: 429 and 503 are retried after Retry-After, then D2C_REGISTRY_ERROR', async (t) => {
    let refuse = 2;
    let status = 429;
    const p = await proxy(open.url, (req) => {
      if (!req.url?.includes('/manifests/') || refuse <= 0) return undefined;
      refuse--;
      return status === 429 ? { status, headers: { 'Retry-After': '2' }, body: '{"errors":[{"code":"TOOMANYREQUESTS"}]}' } : { status };
    });
    t.teardown(() => p.close());
    const waits: number[] = [];
    const client = new RegistryClient({ ...quick, backoffInitMs: 100, random: () => 1, sleep: async (ms) => { waits.push(ms); } });
    await pushImage(client, parseReference(`${p.host}/test/ratelimit:v1`), amd64);
    waits.length = 0;
    refuse = 2;
    const img = await client.resolve(parseReference(`${p.host}/test/ratelimit:v1`), linux('amd64'));
    t.equal(img.manifestDigest, amd64.manifestDigest);
    t.same(waits, [2000, 2000], 'Retry-After honoured');
    waits.length = 0;
    refuse = 2;
    status = 503;
    await client.getManifest(parseReference(`${p.host}/test/ratelimit:v1`));
    t.same(waits, [100, 200], '503 without Retry-After: exponential back-off');
    refuse = 100;
    status = 429;
    waits.length = 0;
    const few = new RegistryClient({ ...quick, maxAttempts: 3, sleep: async (ms) => { waits.push(ms); } });
    await rejectsWith(t, few.getManifest(parseReference(`${p.host}/test/ratelimit:v1`)), 'D2C_REGISTRY_ERROR', /429.*after 3 attempts/);
    t.equal(waits.length, 2, 'bounded: three attempts, two waits');
    const impatient = new RegistryClient({ ...quick, maxRetryAfterMs: 1000, sleep: async () => { t.fail('must not wait'); } });
    await rejectsWith(t, impatient.getManifest(parseReference(`${p.host}/test/ratelimit:v1`)), 'D2C_REGISTRY_ERROR', /retry after 2 s/);
  });

  t.test('basic auth (htpasswd): credentials, no credentials, refused credentials', async (t) => {
    const client = new RegistryClient({ ...quick, credentials: alice });
    const r = ref(basic, 'team/app:v1');
    await pushImage(client, r, amd64);
    t.equal((await client.resolve(r, linux('amd64'))).manifestDigest, amd64.manifestDigest);
    t.same(await client.listTags(ref(basic, 'team/app')), ['v1']);
    await rejectsWith(t, new RegistryClient(quick).resolve(r), 'D2C_AUTH_FAILED', new RegExp(`${basic.host} requires credentials`));
    const wrong = new RegistryClient({ ...quick, credentials: explicitCredentials({ username: 'alice', password: 'nope' }) });
    await rejectsWith(t, wrong.resolve(r), 'D2C_AUTH_FAILED', new RegExp(`${basic.host.replace(/\./g, '\\.')} refused the credentials of user "alice"`));
  });

  t.test('credentials from config.json (auths.auth base64, missing helper skipped with a warning) feed basic auth', async (t) => {
    const dir = t.testdir({});
    const config = path.join(dir, 'config.json');
    await fs.writeFile(config, JSON.stringify({
      auths: { [`http://${basic.host}`]: { auth: Buffer.from('alice:wonderland').toString('base64') },
        'https://index.docker.io/v1/': { username: 'hub', password: 'secret' } },
      credHelpers: { [basic.host]: 'does-not-exist' },
    }));
    const warnings: string[] = [];
    const store = dockerConfigCredentials({ configPath: config, searchPath: dir, onWarning: (m) => warnings.push(m) });
    t.same(await store.get('docker.io'), { username: 'hub', password: 'secret' }, 'Docker Hub key');
    const client = new RegistryClient({ ...quick, credentials: store });
    t.equal((await client.resolve(ref(basic, 'team/app:v1'), linux('amd64'))).manifestDigest, amd64.manifestDigest);
    t.match(warnings.join('\n'), /docker-credential-does-not-exist is not on the PATH/);
    // A helper that exists wins over auths; explicit credentials win over both.
    await fs.writeFile(path.join(dir, 'docker-credential-fake'), '#!/bin/sh\nread url\nprintf \'{"ServerURL":"%s","Username":"helper-user","Secret":"helper-pass"}\' "$url"\n', { mode: 0o755 });
    await fs.writeFile(config, JSON.stringify({ credsStore: 'fake', auths: { [basic.host]: {} } }));
    const viaHelper = dockerConfigCredentials({ configPath: config, searchPath: dir });
    t.same(await viaHelper.get(basic.host), { username: 'helper-user', password: 'helper-pass' });
    const explicit = chainCredentials(explicitCredentials({ username: 'alice', password: 'wonderland', registry: basic.host }), viaHelper);
    t.same(await explicit.get(basic.host), { username: 'alice', password: 'wonderland' });
    t.same(await explicit.get('docker.io'), { username: 'helper-user', password: 'helper-pass' });
    t.equal(await dockerConfigCredentials({ configPath: path.join(dir, 'absent.json') }).get('docker.io'), undefined);
  });

  t.test('token auth: anonymous token flow for a public repository', async (t) => {
    const pusher = new RegistryClient({ ...quick, credentials: alice });
    await pushImage(pusher, ref(token, 'public/app:v1'), amd64);
    token.issuer!.log.length = 0;
    const anon = new RegistryClient(quick);
    const img = await anon.resolve(ref(token, 'public/app:v1'), linux('amd64'));
    t.equal(img.manifestDigest, amd64.manifestDigest);
    t.same(await readAll(await img.source.openBlob(img.manifest.layers[0]!)), amd64.layers[0]!.blob);
    const log = token.issuer!.log;
    t.equal(log.length, 1, 'one token serves manifest, config and blob requests');
    t.same(log[0], { method: 'GET', user: undefined, scopes: ['repository:public/app:pull'], offlineToken: false, refused: false });
    await rejectsWith(t, anon.resolve(ref(token, 'private/app:v1')), 'D2C_AUTH_FAILED', /denied anonymous access.*needs credentials/);
    await rejectsWith(t, anon.pushManifest(ref(token, 'public/app:v2'), amd64.manifestBytes, amd64.mediaType), 'D2C_AUTH_FAILED',
      /anonymous/, 'anonymous push is refused');
  });

  t.test('token auth: credentialed token flow (push and pull of a private repository)', async (t) => {
    token.issuer!.log.length = 0;
    const client = new RegistryClient({ ...quick, credentials: alice });
    const r = ref(token, 'private/app:v1');
    await pushImage(client, r, amd64);
    const img = await client.resolve(r, linux('amd64'));
    t.equal(img.manifestDigest, amd64.manifestDigest);
    const log = token.issuer!.log;
    t.ok(log.length >= 1 && log.every((l) => l.user === 'alice' && l.offlineToken && !l.refused), 'basic auth and offline_token at the realm');
    t.ok(log.some((l) => l.scopes.includes('repository:private/app:pull,push')), 'push scope requested');
    t.ok(log.length <= 2, `tokens are cached per scope (${log.length} token requests)`);
    const wrong = new RegistryClient({ ...quick, credentials: explicitCredentials({ username: 'alice', password: 'bad' }) });
    await rejectsWith(t, wrong.resolve(r), 'D2C_AUTH_FAILED', new RegExp(`token service .* of registry ${token.host.replace(/\./g, '\\.')} refused user "alice"`));
    const idt = new RegistryClient({ ...quick, credentials: staticCredentials({ [token.host]: { identityToken: 'refresh-123' } }) });
    t.equal((await idt.resolve(r, linux('amd64'))).manifestDigest, amd64.manifestDigest, 'identity token (refresh_token grant)');
    t.equal(token.issuer!.log.at(-1)?.method, 'POST');
  });

  t.test('token refresh: a cached token that expired or is refused is renewed once', async (t) => {
    let revoke = false;
    const p = await proxy(token.url, (req) => {
      if (revoke && req.headers.authorization && req.url?.includes('/manifests/')) {
        revoke = false;
        return { status: 401, headers: { 'WWW-Authenticate': `Bearer realm="${token.issuer!.realm}",service="${token.issuer!.service}",`
          + 'scope="repository:public/app:pull",error="invalid_token"' } };
      }
      return undefined;
    });
    t.teardown(() => p.close());
    let now = Date.now();
    const client = new RegistryClient({ ...quick, now: () => now });
    const r = parseReference(`${p.host}/public/app:v1`);
    await client.getManifest(r);
    token.issuer!.log.length = 0;
    await client.getManifest(r);
    t.equal(token.issuer!.log.length, 0, 'cached');
    revoke = true;
    await client.getManifest(r);
    t.equal(token.issuer!.log.length, 1, 'refused token renewed once, request repeated');
    now += 3600_000;
    await client.getManifest(r);
    t.equal(token.issuer!.log.length, 2, 'expired token renewed before use');
  });

  t.test('plain-http-refused: a plain-HTTP token realm on a non-loopback host is not used', async (t) => {
    const fake = await serve((_req, res) => {
      res.writeHead(401, { 'WWW-Authenticate': 'Bearer realm="http://auth.example.com/token",service="x"' }).end();
    });
    t.teardown(() => fake.close());
    const client = new RegistryClient({ ...quick, fetch: async (input, init) => {
      if (String(input).includes('example.com')) t.fail('must not contact the realm');
      return fetch(input, init);
    } });
    await rejectsWith(t, client.getManifest(parseReference(`${fake.host}/a/b:c`)), 'D2C_AUTH_FAILED', /plain-HTTP token realm/);
    t.same(parseWwwAuthenticate('Bearer realm="https://a/t",service="reg",scope="repository:a:pull,push" , Basic realm="x\\"y"'), [
      { scheme: 'bearer', params: { realm: 'https://a/t', service: 'reg', scope: 'repository:a:pull,push' } },
      { scheme: 'basic', params: { realm: 'x"y' } },
    ], 'WWW-Authenticate with two challenges and an escape');
  });

  t.test('blob redirects drop Authorization; truncated, stalled, foreign and unreachable', async (t) => {
    const blob = Buffer.from('x'.repeat(100));
    const digest = sha256Of(blob);
    const evil = sha256Of(Buffer.from('evil')).slice(7);
    const seen: (string | undefined)[] = [];
    let mode: 'ok' | 'truncate' | 'stall' = 'ok';
    const storage = await serve((req, res) => {
      seen.push(req.headers.authorization);
      if (mode === 'ok') { res.writeHead(200, { 'Content-Length': '100' }).end(blob); return; }
      res.writeHead(200, { 'Content-Length': '100' });
      res.write(blob.subarray(0, 50));
      if (mode === 'truncate') setTimeout(() => res.destroy(), 20);
    });
    t.teardown(() => storage.close());
    const fake = await serve((req, res) => {
      if (req.headers.authorization !== 'Basic ' + Buffer.from('u:p').toString('base64')) {
        res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="fake"' }).end();
        return;
      }
      if (req.url?.includes('/blobs/') && req.url.includes(evil)) { res.writeHead(307, { Location: 'http://storage.example.com/blob' }).end(); return; }
      if (req.url?.includes('/blobs/')) { res.writeHead(307, { Location: `${storage.url}/bucket/blob?sig=1` }).end(); return; }
      if (req.url?.includes('/manifests/')) {
        res.writeHead(200, { 'Content-Type': 'application/vnd.docker.distribution.manifest.v1+prettyjws' })
          .end(JSON.stringify({ schemaVersion: 1, name: 'a/b', tag: 'c', fsLayers: [] }));
        return;
      }
      res.writeHead(404).end();
    });
    t.teardown(() => fake.close());
    const client = new RegistryClient({ ...quick, idleTimeoutMs: 300, credentials: staticCredentials({ [fake.host]: { username: 'u', password: 'p' } }) });
    const r = parseReference(`${fake.host}/a/b:c`);
    const d: Descriptor = { mediaType: MEDIA.dockerLayerGzip, digest, size: 100 };
    t.same(await readAll(await client.openBlob(r, d)), blob);
    t.same(seen, [undefined], 'the storage host never sees the registry credentials');
    await rejectsWith(t, client.openBlob(r, { ...d, digest: `sha256:${evil}` }), 'D2C_REGISTRY_ERROR', /redirected to plain HTTP http:\/\/storage\.example\.com/,
      'plain-http-refused: a redirect to plain HTTP on a non-loopback host');
    mode = 'truncate';
    await rejectsWith(t, readAll(await client.openBlob(r, d)), 'D2C_TRUNCATED', /50 of 100/);
    mode = 'stall';
    await rejectsWith(t, readAll(await client.openBlob(r, d)), 'D2C_REGISTRY_UNREACHABLE', /no data for 300 ms/);
    mode = 'ok';
    seen.length = 0;
    const foreign: Descriptor = { ...d, mediaType: MEDIA.dockerLayerForeign, urls: [`${storage.url}/foreign/layer`] };
    t.same(await readAll(await client.openBlob(parseReference(`${open.host}/x/y`), foreign, undefined, { foreignUrls: true })), blob, 'foreign layer from its URL');
    t.same(seen, [undefined]);
    await rejectsWith(t, client.getManifest(r), 'D2C_UNSUPPORTED_MEDIA_TYPE', /schema 1/);
    const gone = await serve((_q, s) => { s.end(); });
    const goneHost = gone.host;
    await gone.close();
    await rejectsWith(t, new RegistryClient({ ...quick, maxConnectAttempts: 2 }).getManifest(parseReference(`${goneHost}/a/b:c`)),
      'D2C_REGISTRY_UNREACHABLE', /cannot reach http:\/\/127\.0\.0\.1/);
  });

  t.test('hostPlatform maps process.arch to OCI names', async (t) => {
    const p = hostPlatform();
    t.ok(['amd64', 'arm64', 'arm', '386', 'ppc64le', 's390x', 'riscv64'].includes(p.architecture) || p.architecture === process.arch, p.architecture);
    if (process.arch === 'x64') t.same(p, { os: 'linux', architecture: 'amd64' });
  });
}
