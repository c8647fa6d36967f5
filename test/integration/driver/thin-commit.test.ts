/**
 * Thin commits that publish (R1, R5, R6, R9, R44): the driver, s3rver as the publisher's bucket,
 * and a fake publisher's status API written here after the contract (unknown → queued →
 * publishing → done with a url; failed with a reason; never done; bad answers). No dockerd:
 * the daemon's commit is played as Diff(<m>, <m>-init) followed by Create + ApplyDiff of its tar.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import t, { type Test } from 'tap';
import tar from 'tar-stream';
import { serveRepository, type RepositoryServer } from '../../../cvmfs/index.js';
import { GraphDriver, parseThin, thinSchemaErrors, type DriverOptions, type PublishSettings } from '../../../driver/index.js';
import { createPluginApp, listenPlugin } from '../../../plugin/server.js';
import { publishSettings } from '../../../plugin/settings.js';
import { skipWithoutFuse } from '../../lib/fuse-gate.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import { S3RVER_CREDENTIALS, startS3, type S3Server } from '../../lib/s3.js';
import { notRoot, skipLoudly } from '../../lib/skip.js';
import { tarOf, type TarSpec } from '../../lib/tar-of.js';

const run = promisify(execFile);
const BUCKET = 'layers';
const TOKEN = 'sekrit-token';
const FQRN = 'pub.example.org';
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const BASE1 = sha256('base one'), BASE2 = sha256('base two');
const duccPath = (d: string) => `/.layers/${d.slice(0, 2)}/${d}/layerfs`;
const PARENT_DESCRIPTOR = {
  version: '1.0', origin: 'registry.example.org/base:1',
  layers: [{ digest: BASE1, url: `cvmfs://${FQRN}${duccPath(BASE1)}` }, { digest: `sha256:${BASE2}`, url: `cvmfs://${FQRN}${duccPath(BASE2)}` }],
};

// ---- the fake publisher --------------------------------------------------------------------

type Behaviour =
  /** unknown (404), queued, publishing, then done; `publish` runs first (the webhook's work). */
  | { readonly kind: 'ok'; readonly publish?: (key: string, digest: string) => Promise<number> }
  | { readonly kind: 'fail'; readonly reason: string }
  | { readonly kind: 'never' }
  /** done at once with this answer (for bad answers). */
  | { readonly kind: 'done'; readonly answer: (key: string, digest: string) => Record<string, unknown> };

interface FakePublisher {
  readonly url: string;
  behaviour: Behaviour;
  readonly requests: { readonly path: string; readonly auth: string; readonly format: string | null; readonly state: string }[];
  close(): Promise<void>;
}

async function startPublisher(t: Test, behaviour: Behaviour): Promise<FakePublisher> {
  const counts = new Map<string, number>();
  const work = new Map<string, Promise<void>>();
  const revisions = new Map<string, number>();
  const failures = new Map<string, string>();
  const requests: FakePublisher['requests'][number][] = [];
  const pub: FakePublisher = { url: '', behaviour, requests, close: async () => {} };
  const server = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const key = decodeURIComponent(u.pathname.replace(/^\/status\//, ''));
    const digest = key.split('/').pop() ?? '';
    const answer = (status: number, body: Record<string, unknown>) => {
      requests.push({ path: u.pathname, auth: req.headers.authorization ?? '', format: u.searchParams.get('format'), state: String(body.state ?? status) });
      res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
    };
    if (req.headers.authorization !== `Bearer ${TOKEN}`) { answer(401, { error: 'bad token' }); return; }
    if (!u.pathname.startsWith('/status/')) { answer(404, { error: 'no such endpoint' }); return; }
    const n = (counts.get(key) ?? 0) + 1;
    counts.set(key, n);
    const b = pub.behaviour;
    const base = { key, digest };
    if (b.kind === 'never') { answer(200, { ...base, state: 'publishing' }); return; }
    if (b.kind === 'fail') { answer(200, n < 2 ? { ...base, state: 'queued' } : { ...base, state: 'failed', reason: b.reason }); return; }
    if (b.kind === 'done') { answer(200, { state: 'done', ...b.answer(key, digest) }); return; }
    if (n === 1) {
      if (b.publish) work.set(key, b.publish(key, digest).then((r) => { revisions.set(key, r); }, (err: Error) => { failures.set(key, err.message); }));
      answer(404, { ...base, state: 'unknown' });
      return;
    }
    if (n === 2) { answer(200, { ...base, state: 'queued' }); return; }
    const failure = failures.get(key);
    if (failure !== undefined) { answer(200, { ...base, state: 'failed', reason: failure }); return; }
    if (work.has(key) && !revisions.has(key)) { answer(200, { ...base, state: 'publishing' }); return; }
    if (n === 3) { answer(200, { ...base, state: 'publishing' }); return; }
    answer(200, { ...base, state: 'done', revision: revisions.get(key) ?? 42, url: `cvmfs://${FQRN}${duccPath(digest)}` });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  (pub as { url: string }).url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  pub.close = () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); });
  t.teardown(() => pub.close());
  return pub;
}

// ---- helpers --------------------------------------------------------------------------------

const settings = (pub: FakePublisher, s3: S3Server, extra: Partial<PublishSettings> = {}): PublishSettings => ({
  publisherUrl: pub.url, token: TOKEN, pollIntervalMs: 50,
  s3: { bucket: BUCKET, endpoint: s3.endpoint, prefix: 'commits', region: 'us-east-1', credentials: S3RVER_CREDENTIALS }, ...extra,
});

async function bytesOf(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(chunks);
}

async function entries(tarBytes: Buffer): Promise<{ name: string; type: string; body: Buffer }[]> {
  const out: { name: string; type: string; body: Buffer }[] = [];
  const ex = tar.extract();
  Readable.from([tarBytes]).pipe(ex as unknown as NodeJS.WritableStream);
  for await (const e of ex) {
    const parts: Buffer[] = [];
    for await (const c of e) parts.push(c as Buffer);
    out.push({ name: e.header.name, type: e.header.type ?? '', body: Buffer.concat(parts) });
  }
  return out;
}

async function s3Object(s3: S3Server, key: string): Promise<{ body: Buffer; type: string }> {
  const r = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return { body: Buffer.from(await r.Body!.transformToByteArray()), type: r.ContentType ?? '' };
}
const s3Keys = async (s3: S3Server) => ((await s3.client.send(new ListObjectsV2Command({ Bucket: BUCKET }))).Contents ?? []).map((o) => o.Key ?? '');

/** A loopback port nobody listens on. */
async function closedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const statusOf = (d: GraphDriver, key: string) => d.status().find(([k]) => k === key)?.[1];

interface Container { readonly d: GraphDriver; readonly home: string; readonly logs: string[] }

/**
 * A driver with a thin image T (PARENT_DESCRIPTOR), optionally a local layer R committed on it,
 * and a container m on top (`<m>-init`, then `<m>` holding `changes`).
 */
async function container(t: Test, o: Omit<DriverOptions, 'log'>, changes: TarSpec[], localLayer?: TarSpec[]): Promise<Container> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-commit-'));
  const logs: string[] = [];
  const d = new GraphDriver({ ...o, log: (_l, m) => logs.push(m) });
  t.teardown(async () => { await d.cleanup().catch(() => {}); fs.rmSync(home, { recursive: true, force: true }); });
  await d.init({ home, opts: [] });
  await d.create('T', '', false);
  await d.applyDiff('T', '', Readable.from([await tarOf([{ type: 'file', name: 'thin.json', content: JSON.stringify(PARENT_DESCRIPTOR, null, 2), mode: 0o600 }])]));
  let top = 'T';
  if (localLayer) {
    await d.create('R', 'T', false);
    await d.applyDiff('R', 'T', Readable.from([await tarOf(localLayer)]));
    top = 'R';
  }
  await d.create('m-init', top, true);
  await d.applyDiff('m-init', top, Readable.from([await tarOf([{ type: 'file', name: 'etc/hosts', content: '127.0.0.1 localhost\n' }])]));
  await d.create('m', 'm-init', true);
  await d.applyDiff('m', 'm-init', Readable.from([await tarOf(changes)]));
  return { d, home, logs };
}

const CHANGES: TarSpec[] = [
  { type: 'file', name: 'etc/new', content: 'new file\n' },
  { type: 'file', name: 'etc/.wh.gone' },
  { type: 'file', name: 'opt/dir/.wh..wh..opq' }, { type: 'file', name: 'opt/dir/fresh', content: 'fresh\n' },
];

function skipUnlessRoot(t: Test): boolean {
  if (!notRoot()) return false;
  skipLoudly(t, 'THIN COMMIT TESTS SKIPPED: need root (whiteout devices, overlay xattrs and mounts in layers)');
  return true;
}

// ---- tests ----------------------------------------------------------------------------------

t.test('thin commit: uploaded under the sha256 of its gzip bytes; the answer is one thin.json with the new layer appended last', async (t) => {
  if (skipUnlessRoot(t)) return;
  const s3 = await startS3([BUCKET]);
  t.teardown(() => s3.close());
  const pub = await startPublisher(t, { kind: 'ok' });
  const { d, home, logs } = await container(t, { publish: settings(pub, s3) }, CHANGES);

  const answer = await bytesOf(await d.exportDiff('m', 'm-init'));
  const files = await entries(answer);
  t.same(files.map((f) => [f.name, f.type]), [['thin.json', 'file']], 'the tar holds exactly thin.json');
  const doc = JSON.parse(files[0]!.body.toString()) as { version: string; origin: string; layers: { digest: string; url: string }[] };
  t.same(thinSchemaErrors(doc), [], 'the descriptor passes the schema');
  t.equal(doc.version, '1.0');
  t.equal(doc.origin, PARENT_DESCRIPTOR.origin, 'origin kept');
  t.equal(doc.layers.length, 3);
  t.same(doc.layers.slice(0, 2), [{ digest: BASE1, url: PARENT_DESCRIPTOR.layers[0]!.url }, { digest: BASE2, url: PARENT_DESCRIPTOR.layers[1]!.url }],
    'the parent layers first, in order (digests written without sha256:)');
  const added = doc.layers[2]!;
  t.match(added.digest, /^[0-9a-f]{64}$/);
  t.equal(added.url, `cvmfs://${FQRN}${duccPath(added.digest)}`, 'the new layer is the top-most (last), at the url the publisher gave');
  t.equal(parseThin('thin.json', files[0]!.body).layers.length, 3, 'our own reader takes it');

  t.same(await s3Keys(s3), [`commits/${added.digest}`], 'one object, under the prefix and the digest');
  const obj = await s3Object(s3, `commits/${added.digest}`);
  t.equal(sha256(obj.body), added.digest, 'the key is the sha256 of the uploaded bytes');
  t.equal(obj.type, 'application/x-gzip');
  t.same([...obj.body.subarray(0, 10)].slice(0, 4), [0x1f, 0x8b, 8, 0], 'gzip with no name or other header fields');
  t.equal(obj.body.readUInt32LE(4), 0, 'and mtime 0');
  const plain = await bytesOf(d.diff('m', 'm-init'));
  t.ok(gunzipSync(obj.body).equals(plain), 'the object is the ordinary diff tar, gzipped');
  const names = (await entries(plain)).map((e) => e.name);
  t.ok(names.includes('etc/.wh.gone') && names.includes('opt/dir/.wh..wh..opq'), 'with its deletion and opaque marker');
  t.notOk(names.includes('etc/hosts'), 'and without the -init layer');

  t.same(pub.requests.map((r) => r.state), ['unknown', 'queued', 'publishing', 'done'], 'polled through unknown (no webhook yet), queued, publishing');
  t.ok(pub.requests.every((r) => r.auth === `Bearer ${TOKEN}` && r.format === 'json' && r.path === `/status/commits/${added.digest}`),
    'each poll is GET /status/<key>?format=json with the bearer token');
  t.same(fs.readdirSync(path.join(home, 'spool')), [], 'the spool file is gone');
  t.match(logs.join('\n'), new RegExp(`thin commit of m: layer sha256:${added.digest} is at cvmfs://`), 'logged');

  // The daemon's side of the commit: Create(new, top) + ApplyDiff of that tar makes a thin layer.
  await d.create('N', 'T', false);
  await d.applyDiff('N', 'T', Readable.from([answer]));
  t.same([statusOf(d, 'Layers'), statusOf(d, 'Thin layers')], ['4', '2'], 'the committed layer is itself thin');
  const dir = await d.get('N');
  t.same(fs.readdirSync(dir), ['thin.json'], 'Get of the committed thin layer is its plain directory (R15), no repository mounted');
  t.ok(fs.readFileSync(path.join(dir, 'thin.json')).equals(files[0]!.body), 'with the byte-exact descriptor');
  await d.put('N');

  const again = await entries(await bytesOf(await d.exportDiff('m', 'm-init')));
  t.equal((JSON.parse(again[0]!.body.toString()) as typeof doc).layers[2]!.digest, added.digest, 'the same diff gives the same key (reproducible gzip)');
});

t.test('thin commit: a local layer between the container and the thin layer is published with it', async (t) => {
  if (skipUnlessRoot(t)) return;
  const s3 = await startS3([BUCKET]);
  t.teardown(() => s3.close());
  const pub = await startPublisher(t, { kind: 'ok' });
  const { d } = await container(t, { publish: settings(pub, s3, { s3: { bucket: BUCKET, endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS } }) },
    [{ type: 'file', name: 'top', content: 'container\n' }], [{ type: 'file', name: 'local/r', content: 'local commit\n' }, { type: 'file', name: 'etc/.wh.x' }]);
  const files = await entries(await bytesOf(await d.exportDiff('m', 'm-init')));
  const doc = JSON.parse(files[0]!.body.toString()) as { layers: { digest: string }[] };
  const digest = doc.layers[2]!.digest;
  t.same(await s3Keys(s3), [digest], 'no prefix: the key is the digest');
  const names = (await entries(gunzipSync((await s3Object(s3, digest)).body))).map((e) => e.name);
  t.same(names.filter((n) => !n.endsWith('/')).sort(), ['etc/.wh.x', 'local/r', 'top'], 'the container layer and the local layer R, squashed; never the -init layer');
});

t.test('thin commit: a failed publish fails Diff with the reason; nothing is left in the spool', async (t) => {
  if (skipUnlessRoot(t)) return;
  const s3 = await startS3([BUCKET]);
  t.teardown(() => s3.close());
  const pub = await startPublisher(t, { kind: 'fail', reason: 'bsdtar: Error opening archive: Unrecognized archive format' });
  const { d, home } = await container(t, { publish: settings(pub, s3) }, CHANGES);
  await t.rejects(d.exportDiff('m', 'm-init'), {
    code: 'DRIVER_PUBLISH_FAILED', message: /DRIVER_PUBLISH_FAILED: publisher http:\/\/127\.0\.0\.1:\d+ failed to publish commits\/[0-9a-f]{64}: bsdtar: Error opening archive/,
  }, 'failed ends the wait at once, with the reason');
  t.same(pub.requests.map((r) => r.state), ['queued', 'failed']);
  t.same(fs.readdirSync(path.join(home, 'spool')), []);
});

t.test('thin commit: the overall deadline fires while the publisher never finishes', async (t) => {
  if (skipUnlessRoot(t)) return;
  const s3 = await startS3([BUCKET]);
  t.teardown(() => s3.close());
  const pub = await startPublisher(t, { kind: 'never' });
  const { d } = await container(t, { publish: settings(pub, s3, { deadlineMs: 1200 }) }, CHANGES);
  const t0 = Date.now();
  await t.rejects(d.exportDiff('m', 'm-init'), { code: 'DRIVER_PUBLISH_TIMEOUT', message: /did not report commits\/[0-9a-f]{64} done within 1\.2 s .*; last answer: publishing$/ });
  const took = Date.now() - t0;
  t.ok(took >= 1100 && took < 6000, `gave up after ${took} ms`);
  t.ok(pub.requests.length >= 3, `polled ${pub.requests.length} times meanwhile`);
});

t.test('thin commit: bad answers and bad tokens never give a descriptor', async (t) => {
  if (skipUnlessRoot(t)) return;
  const s3 = await startS3([BUCKET]);
  t.teardown(() => s3.close());
  const pub = await startPublisher(t, { kind: 'never' });
  const { d } = await container(t, { publish: settings(pub, s3) }, CHANGES);
  const cases: [string, Behaviour, RegExp, string][] = [
    ['done without a url', { kind: 'done', answer: (key, digest) => ({ key, digest }) }, /done without a cvmfs:\/\/<repository>\/<path> URL/, 'DRIVER_PUBLISH_FAILED'],
    ['done with a url naming no valid repository (R6)', { kind: 'done', answer: (key, digest) => ({ key, digest, url: 'cvmfs://Not_A_Repo/x' }) },
      /committed descriptor|names no valid repository/, 'DRIVER_THIN_INVALID'],
    ['done with a url leaving the repository (R6)', { kind: 'done', answer: (key, digest) => ({ key, digest, url: `cvmfs://${FQRN}/../etc` }) },
      /leaves its repository/, 'DRIVER_THIN_INVALID'],
    ['done with another digest', { kind: 'done', answer: (key) => ({ key, digest: sha256('other'), url: `cvmfs://${FQRN}/x` }) },
      /done with digest [0-9a-f]{64}, but the uploaded layer is sha256:/, 'DRIVER_PUBLISH_FAILED'],
  ];
  for (const [what, b, message, code] of cases) {
    pub.behaviour = b;
    await t.rejects(d.exportDiff('m', 'm-init'), { code, message }, what);
  }
  const wrong = await container(t, { publish: { ...settings(pub, s3), token: 'wrong' } }, CHANGES);
  await t.rejects(wrong.d.exportDiff('m', 'm-init'), { code: 'DRIVER_PUBLISH_UNAUTHORIZED', message: /HTTP 401/ }, 'a refused token ends at once');
  const badS3 = await container(t, { publish: settings(pub, s3, { s3: { bucket: 'no-such-bucket', endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS } }) }, CHANGES);
  await t.rejects(badS3.d.exportDiff('m', 'm-init'), { code: 'DRIVER_PUBLISH_FAILED', message: /upload of \d+ bytes to s3:\/\/no-such-bucket\/[0-9a-f]{64} at http:.* failed: NoSuchBucket/ },
    'an upload failure names the object and the S3 error');
  const closed = await closedPort();
  const dead = await container(t, { publish: settings(pub, s3, { publisherUrl: `http://127.0.0.1:${closed}`, deadlineMs: 600 }) }, CHANGES);
  await t.rejects(dead.d.exportDiff('m', 'm-init'), { code: 'DRIVER_PUBLISH_TIMEOUT', message: /within 0\.6 s .*no answer: request failed: .*ECONNREFUSED/ },
    'an unreachable publisher is waited for until the deadline, and the error says why');
});

t.test('without publish settings, and for other Diffs, the ordinary diff tar', async (t) => {
  if (skipUnlessRoot(t)) return;
  const s3 = await startS3([BUCKET]);
  t.teardown(() => s3.close());
  const pub = await startPublisher(t, { kind: 'ok' });
  const local = await container(t, {}, CHANGES);
  const plain = await bytesOf(local.d.diff('m', 'm-init'));
  t.ok((await bytesOf(await local.d.exportDiff('m', 'm-init'))).equals(plain), 'no publisher: exportDiff is diff, byte for byte');
  t.equal(statusOf(local.d, 'Commits on thin images'), 'local layers', 'docker info says so');

  const { d } = await container(t, { publish: settings(pub, s3) }, CHANGES);
  t.match(statusOf(d, 'Commits on thin images'), /^published to http:\/\/127\.0\.0\.1:\d+\/ \(s3:\/\/layers\/commits at http/);
  await d.create('snap', 'T', true);
  await d.applyDiff('snap', 'T', Readable.from([await tarOf([{ type: 'file', name: 'built', content: 'b' }])]));
  t.same((await entries(await bytesOf(await d.exportDiff('snap', 'T')))).map((e) => e.name), ['built'], 'BuildKit-style Diff(snapshot, thin parent) stays ordinary');
  await d.create('reg', '', false);
  await d.applyDiff('reg', '', Readable.from([await tarOf([{ type: 'file', name: 'r', content: 'r' }])]));
  await d.create('c-init', 'reg', true);
  await d.create('c', 'c-init', true);
  await d.applyDiff('c', 'c-init', Readable.from([await tarOf([{ type: 'file', name: 'changed', content: 'c' }])]));
  t.same((await entries(await bytesOf(await d.exportDiff('c', 'c-init')))).map((e) => e.name), ['changed'], 'the commit of a container on a regular image stays ordinary');
  t.same(await s3Keys(s3), [], 'nothing was uploaded');
  t.same(pub.requests, [], 'nor asked');
});

t.test('plugin: Diff publishes before the first byte; a failure is a 500 with the code, not a cut tar', async (t) => {
  if (skipUnlessRoot(t)) return;
  const s3 = await startS3([BUCKET]);
  t.teardown(() => s3.close());
  const pub = await startPublisher(t, { kind: 'fail', reason: 'repository is locked' });
  const { d, home } = await container(t, { publish: settings(pub, s3) }, CHANGES);
  const socket = path.join(home, 'p.sock');
  const server = await listenPlugin(createPluginApp({ driver: d, stateDir: path.join(home, 'state'), log: () => {} }), socket);
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  const call = (body: string) => new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
    const req = http.request({ socketPath: socket, method: 'POST', path: '/GraphDriver.Diff' }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c)).on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) })).on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
  const failed = await call('{"ID":"m","Parent":"m-init"}\n');
  t.equal(failed.status, 500);
  t.match(JSON.parse(failed.body.toString()) as unknown, { Err: /^DRIVER_PUBLISH_FAILED: .*repository is locked/ }, 'the reason reaches the daemon');
  pub.behaviour = { kind: 'ok' };
  const ok = await call('{"ID":"m","Parent":"m-init"}\n');
  t.equal(ok.status, 200);
  t.same((await entries(ok.body)).map((e) => e.name), ['thin.json'], 'then the thin layer tar');
});

t.test('plugin settings: all unset is local; half set is refused; empty values count as unset', async (t) => {
  t.equal(publishSettings({}), undefined);
  t.equal(publishSettings({ CVMFSGD_PUBLISHER_URL: '', CVMFSGD_PUBLISH_S3_BUCKET: '', AWS_REGION: '', CVMFSGD_PUBLISH_DEADLINE_SECONDS: '' }), undefined,
    'docker plugin set leaves empty values');
  t.throws(() => publishSettings({ CVMFSGD_PUBLISHER_URL: 'http://p:3000' }), /half configured .*also set CVMFSGD_PUBLISH_S3_BUCKET, CVMFSGD_PUBLISHER_TOKEN/);
  t.throws(() => publishSettings({ CVMFSGD_PUBLISHER_URL: 'http://p', CVMFSGD_PUBLISH_S3_BUCKET: 'b', CVMFSGD_PUBLISHER_TOKEN: 'x', AWS_ACCESS_KEY_ID: 'k' }),
    /both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/);
  t.same(publishSettings({
    CVMFSGD_PUBLISHER_URL: 'http://p:3000', CVMFSGD_PUBLISHER_TOKEN_FILE: '/etc/cvmfs-graphdriver/token', CVMFSGD_PUBLISH_S3_ENDPOINT: 'http://p:9000',
    CVMFSGD_PUBLISH_S3_BUCKET: 'layers', CVMFSGD_PUBLISH_S3_PREFIX: 'commits', CVMFSGD_PUBLISH_DEADLINE_SECONDS: '30',
    AWS_ACCESS_KEY_ID: 'k', AWS_SECRET_ACCESS_KEY: 's',
  }), {
    publisherUrl: 'http://p:3000', tokenFile: '/etc/cvmfs-graphdriver/token', deadlineMs: 30_000,
    s3: { bucket: 'layers', endpoint: 'http://p:9000', prefix: 'commits', region: 'us-east-1', credentials: { accessKeyId: 'k', secretAccessKey: 's' } },
  });
  t.throws(() => publishSettings({ CVMFSGD_PUBLISHER_URL: 'http://p', CVMFSGD_PUBLISH_S3_BUCKET: 'b', CVMFSGD_PUBLISHER_TOKEN: 'x', CVMFSGD_PUBLISH_DEADLINE_SECONDS: '0' }),
    /CVMFSGD_PUBLISH_DEADLINE_SECONDS="0": expected a number > 0/);
  t.throws(() => new GraphDriver({ publish: { publisherUrl: 'not a url', token: 'x', s3: { bucket: 'b' } } }), { code: 'DRIVER_PUBLISH_CONFIG' });
});

// ---- the whole loop, with a real repository and FUSE ------------------------------------------

t.test('published and mounted: the appended layer is on top; changes and deletions show over the base layers (R1, R5)', async (t) => {
  if (skipWithoutFuse(t)) return;
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-commit-repo-'));
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const repo: Fixture = await makeRepo(path.join(base, 'src'), FQRN);
  await repo.ingest(duccPath(BASE1), await tarOf([
    { type: 'file', name: 'etc/gone', content: 'base\n' }, { type: 'file', name: 'etc/keep', content: 'base\n' }, { type: 'file', name: 'etc/edit', content: 'base\n' },
    { type: 'file', name: 'opt/dir/old', content: 'old\n' },
  ]));
  const revisionBefore = (await repo.ingest(duccPath(BASE2), await tarOf([{ type: 'file', name: 'etc/keep', content: 'layer two\n' }]))).revision;
  let revisionPublished = 0;
  const srv: RepositoryServer = await serveRepository({ dir: repo.dir, fqrn: FQRN });
  t.teardown(() => srv.close());
  fs.mkdirSync(path.join(base, 'keys'));
  fs.copyFileSync(path.join(repo.keys, `${FQRN}.pub`), path.join(base, 'keys', `${FQRN}.pub`));

  const s3 = await startS3([BUCKET]);
  t.teardown(() => s3.close());
  // The publisher's work: fetch the object, check it, ingest it at .layers/<xx>/<d>/layerfs.
  const pub = await startPublisher(t, {
    kind: 'ok', publish: async (key, digest) => {
      const obj = await s3Object(s3, key);
      if (sha256(obj.body) !== digest) throw new Error('digest mismatch');
      revisionPublished = (await repo.ingest(duccPath(digest), gunzipSync(obj.body))).revision;
      return revisionPublished;
    },
  });
  const { d, logs, home } = await container(t, {
    publish: settings(pub, s3),
    repositories: { servers: [srv.url], keysDir: path.join(base, 'keys'), cacheDir: path.join(base, 'cache'), idleUnmountMs: 60_000 },
  }, []);
  // From a child process: this process serves the FUSE mount below the overlay.
  const sh = (dir: string, script: string) => run('sh', ['-c', script], { cwd: dir }).then((r) => r.stdout);

  // The container runs (its Get mounts the repository at the revision before the publish).
  const m = await d.get('m');
  t.equal(await sh(m, 'cat etc/gone etc/keep etc/edit; ls opt/dir'), 'base\nlayer two\nbase\nold\n', 'the thin image as it was');
  await sh(m, 'rm etc/gone && echo edited > etc/edit && echo new > etc/new && rm -r opt/dir && mkdir opt/dir && echo fresh > opt/dir/fresh');
  await d.put('m');
  const copiedUp = (await run('getfattr', ['-R', '-d', '-m', '-', path.join(home, 'layers', 'm', 'diff')])).stdout;
  t.notMatch(copiedUp, /user\.(counters|revision|fqrn|root_hash|hash)=/, 'files copied up from the repository carry none of the client\'s magic xattrs');

  // docker commit: Diff, then Create + ApplyDiff of its tar.
  const answer = await bytesOf(await d.exportDiff('m', 'm-init'));
  t.ok(revisionPublished > revisionBefore, `the publisher made revision ${revisionPublished}`);
  t.match(logs.join('\n'), /pub\.example\.org: switched to revision/, 'the mounted repository was refreshed in-process after the publish (R5)');
  await d.create('N', 'T', false);
  await d.applyDiff('N', 'T', Readable.from([answer]));

  // A container of the committed image.
  await d.create('m2-init', 'N', true);
  await d.create('m2', 'm2-init', true);
  const m2 = await d.get('m2');
  t.equal(await sh(m2, 'cat etc/edit etc/keep etc/new; ls etc; echo --; ls opt/dir; echo --; ls -a . | grep -c "thin.json" || true'),
    'edited\nlayer two\nnew\nedit\nkeep\nnew\n--\nfresh\n--\n0\n',
    'the new layer is top-most: the edit wins, the deletion hides the base file, the replaced directory is opaque, no thin.json');
  await d.put('m2');
});
