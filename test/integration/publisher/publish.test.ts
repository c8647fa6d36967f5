/**
 * The publisher in-process against s3rver (a real S3 server on loopback) and a repository made by
 * our writer: uploads through the SDK, events POSTed as MinIO posts them (same JSON, headers and
 * token), status polled as the plugin polls it, layers read back through our client from the
 * publisher's own --serve.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import t, { type Test } from 'tap';
import { compress } from 'zstd-napi';
import type { Repository } from '../../../cvmfs/index.js';
import { S3ObjectStore, startPublisher, type Publisher } from '../../../publisher/index.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import { S3RVER_CREDENTIALS, startS3, type S3Server } from '../../lib/s3.js';
import { tarOf, type TarSpec } from '../../lib/tar-of.js';
import { client, minioEvent, postEvent, sha256, statusJson, statusText, upload, waitFor } from '../../lib/publisher.js';

const TOKEN = 'webhook-token-0123456789';
const FQRN = 'pub.example.org';
const BUCKET = 'layers';

interface Env { repo: Fixture; s3: S3Server; pub: Publisher; base: string; logs: string[] }

async function setUp(t: Test, opts: { allowUnnamed?: boolean; token?: string | null; maxBatch?: number } = {}): Promise<Env> {
  const base = t.testdir();
  const repo = await makeRepo(base, FQRN);
  const s3 = await startS3([BUCKET]);
  t.teardown(() => s3.close());
  const logs: string[] = [];
  const pub = await startPublisher({
    repoDir: repo.dir, keysDir: repo.keys, fqrn: FQRN, stateDir: path.join(base, 'state'), buckets: [BUCKET],
    objects: new S3ObjectStore({ endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS }),
    token: opts.token === null ? undefined : opts.token ?? TOKEN, port: 0, bind: '127.0.0.1', serve: true, allowUnnamed: opts.allowUnnamed,
    retryDelayMs: 100, threads: 1, ...(opts.maxBatch ? { maxBatch: opts.maxBatch } : {}), log: (level, line) => logs.push(`${new Date().toISOString()} ${level}: ${line}`),
  });
  t.teardown(() => pub.close());
  return { repo, s3, pub, base, logs };
}

const revisionOf = (repo: Fixture): number => Number(/(?:^|\n)S(\d+)/.exec(repo.manifest().toString('latin1'))![1]);

async function layer(entries: TarSpec[], compression: 'gzip' | 'zstd' | 'none' = 'gzip'): Promise<{ tar: Buffer; blob: Buffer; digest: string; diffId: string }> {
  const tar = await tarOf(entries);
  const blob = compression === 'gzip' ? gzipSync(tar) : compression === 'zstd' ? Buffer.from(compress(tar)) : tar;
  return { tar, blob, digest: sha256(blob), diffId: sha256(tar) };
}

async function readBack(t: Test, e: Env, cacheName: string): Promise<Repository> {
  const r = await client(`${e.pub.url}/cvmfs/${FQRN}`, FQRN, e.repo.keys, path.join(e.base, cacheName));
  t.teardown(() => r.close());
  return r;
}

const layerDir = (hex: string) => `/.layers/${hex.slice(0, 2)}/${hex}`;

t.test('upload → event → done → the layer reads back through our client, byte for byte', async (t) => {
  const e = await setUp(t);
  const big = randomBytes(6 * 1024 * 1024 + 123);
  const l = await layer([
    { type: 'directory', name: 'etc/' }, { type: 'file', name: 'etc/motd', content: 'committed\n', mode: 0o640, uid: 5, gid: 6 },
    { type: 'file', name: 'opt/big.bin', content: big }, { type: 'symlink', name: 'link', target: 'etc/motd' },
    { type: 'file', name: 'etc/.wh.gone', content: '' },
  ]);
  const up = await upload(e.s3.client, BUCKET, l.digest, l.blob);
  const before = revisionOf(e.repo);
  const posted = await postEvent(e.pub.url, minioEvent(BUCKET, [up]), TOKEN);
  t.equal(posted.status, 200, 'the webhook answers 200');
  t.match(posted.json, { accepted: 1, jobs: [{ key: l.digest, duplicate: false }] });
  const s = await waitFor(e.pub.url, l.digest, TOKEN);
  t.equal(s.state, 'done', `done (${s.reason ?? ''})`);
  t.equal(s.revision, before + 1, 'one new revision');
  t.equal(s.digest, `sha256:${l.digest}`);
  t.equal(s.diffId, `sha256:${l.diffId}`, 'the diffID is computed while streaming (R47)');
  t.equal(s.url, `cvmfs://${FQRN}${layerDir(l.digest)}/layerfs`);
  t.ok(s.queuedAt && s.startedAt && s.finishedAt && typeof s.seconds === 'number', 'timings');
  t.same(await statusText(e.pub.url, l.digest, TOKEN), { status: 200, text: 'done' }, 'the plain-text answer of the original');
  t.equal(revisionOf(e.repo), before + 1);

  const r = await readBack(t, e, 'cache');
  t.equal(r.revision, before + 1);
  const fs0 = `${layerDir(l.digest)}/layerfs`;
  t.ok((await r.readFile(`${fs0}/opt/big.bin`)).equals(big), 'a chunked file, byte for byte');
  t.equal((await r.readFile(`${fs0}/etc/motd`)).toString(), 'committed\n');
  const motd = await r.stat(`${fs0}/etc/motd`);
  t.equal(motd.mode, 0o100640);
  t.equal(motd.uid, 5);
  t.equal(await r.readlink(`${fs0}/link`), 'etc/motd');
  t.ok((await r.readdir(`${fs0}/etc`)).some((d) => d.name === '.wh.gone'), 'whiteouts stored as the files they are (as DUCC)');
  const info = JSON.parse((await r.readFile(`${layerDir(l.digest)}/.metadata/layers.json`)).toString()) as Record<string, unknown>[];
  t.match(info, [{ id: l.diffId, 'compressed-diff-digest': `sha256:${l.digest}`, 'diff-digest': `sha256:${l.diffId}`, 'diff-size': l.tar.length }]);
  t.same(JSON.parse((await r.readFile(`${layerDir(l.digest)}/.metadata/origin.json`)).toString()), { origin: [`s3://${BUCKET}/${l.digest}`] });
  t.ok((await r.readFile(`${fs0}/.cvmfscatalog`)).length === 0, 'layerfs is its own nested catalog');
});

t.test('a batch holds at most --max-batch jobs, oldest first: the event→done latency stays bounded', async (t) => {
  const e = await setUp(t, { maxBatch: 2 });
  const ls = await Promise.all([0, 1, 2].map((i) => layer([{ type: 'file', name: `b${i}`, content: `batch ${i}\n` }])));
  const ups = [];
  for (const l of ls) ups.push(await upload(e.s3.client, BUCKET, l.digest, l.blob));
  const before = revisionOf(e.repo);
  t.equal((await postEvent(e.pub.url, minioEvent(BUCKET, ups), TOKEN)).status, 200);
  const states = await Promise.all(ups.map((u) => waitFor(e.pub.url, u.key, TOKEN)));
  t.same(states.map((s) => [s.state, s.revision]), [['done', before + 1], ['done', before + 1], ['done', before + 2]], 'two jobs, then one');
});

t.test('jobs queued together (gzip, zstd, plain tar; both payload generations) are one revision', async (t) => {
  const e = await setUp(t);
  const ls = await Promise.all((['gzip', 'zstd', 'none'] as const).map((c, i) => layer([{ type: 'file', name: `f${i}`, content: `${c} layer ${i}\n` }], c)));
  const ups = [];
  for (const [i, l] of ls.entries()) ups.push(await upload(e.s3.client, BUCKET, i === 1 ? `sha256:${l.digest}.tar.zst` : `dir/${l.digest}`, l.blob));
  const before = revisionOf(e.repo);
  t.equal((await postEvent(e.pub.url, minioEvent(BUCKET, ups, { generation: 2017 }), TOKEN)).status, 200);
  const states = await Promise.all(ups.map((u) => waitFor(e.pub.url, u.key, TOKEN)));
  t.same(states.map((s) => [s.state, s.revision]), ls.map(() => ['done', before + 1]), 'all three in revision ' + (before + 1));
  t.equal(revisionOf(e.repo), before + 1);
  const r = await readBack(t, e, 'cache');
  for (const [i, l] of ls.entries()) t.equal((await r.readFile(`${layerDir(l.digest)}/layerfs/f${i}`)).toString(), `${['gzip', 'zstd', 'none'][i]} layer ${i}\n`);
});

t.test('a missing or wrong token: 401 and no job; the status API takes the same token', async (t) => {
  const e = await setUp(t);
  const l = await layer([{ type: 'file', name: 'x', content: 'x' }]);
  const up = await upload(e.s3.client, BUCKET, l.digest, l.blob);
  const before = revisionOf(e.repo);
  const none = await postEvent(e.pub.url, minioEvent(BUCKET, [up]));
  t.equal(none.status, 401);
  t.equal(none.json['code'], 'PUB_BAD_TOKEN');
  t.equal((await postEvent(e.pub.url, minioEvent(BUCKET, [up]), 'wrong')).status, 401, 'wrong token');
  t.equal((await postEvent(e.pub.url, minioEvent(BUCKET, [up]), `${TOKEN}x`)).status, 401, 'token with a suffix');
  t.equal((await postEvent(e.pub.url, minioEvent(BUCKET, [up]), undefined, '/')).status, 401, 'POST / too');
  t.equal((await statusText(e.pub.url, l.digest)).status, 401, 'status without the token');
  t.equal((await statusText(e.pub.url, l.digest, 'nope')).status, 401, 'status with a wrong token');
  t.same(await statusText(e.pub.url, l.digest, TOKEN), { status: 200, text: 'unknown' }, 'no job was made');
  const health = await (await fetch(`${e.pub.url}/healthz`)).json() as { jobs: Record<string, number> };
  t.same(health.jobs, { queued: 0, publishing: 0, done: 0, failed: 0 });
  t.equal(revisionOf(e.repo), before);
  // MinIO before 2023 sent the bare token as the header.
  const bare = await fetch(`${e.pub.url}/events`, { method: 'POST', body: minioEvent(BUCKET, [up]), headers: { 'Content-Type': 'application/json', Authorization: TOKEN } });
  t.equal(bare.status, 200, 'a bare token (older MinIO) is accepted');
  t.equal((await waitFor(e.pub.url, l.digest, TOKEN)).state, 'done');
});

t.test('duplicate events are one job and one revision; a key already published answers done at once', async (t) => {
  const e = await setUp(t);
  const l = await layer([{ type: 'file', name: 'dup', content: randomBytes(200_000) }]);
  const up = await upload(e.s3.client, BUCKET, l.digest, l.blob);
  const before = revisionOf(e.repo);
  const body = minioEvent(BUCKET, [up]);
  const [a, b] = await Promise.all([postEvent(e.pub.url, body, TOKEN), postEvent(e.pub.url, body, TOKEN)]);
  t.same([a.status, b.status], [200, 200]);
  const dupFlags = [a, b].map((x) => (x.json['jobs'] as { duplicate: boolean }[])[0]!.duplicate).sort();
  t.same(dupFlags, [false, true], 'the second is the same job');
  t.equal((await waitFor(e.pub.url, l.digest, TOKEN)).revision, before + 1);
  const again = await postEvent(e.pub.url, body, TOKEN);
  t.match(again.json, { jobs: [{ state: 'done', duplicate: true }] }, 'after done: done at once');
  // The same object under another name for its digest (a new upload, a new ETag).
  const other = await upload(e.s3.client, BUCKET, `sha256:${l.digest}`, l.blob);
  const third = await postEvent(e.pub.url, minioEvent(BUCKET, [{ ...other, etag: 'another-etag' }]), TOKEN);
  t.match(third.json, { jobs: [{ state: 'done', duplicate: false }] }, 'a digest already published is done at once');
  t.same(await statusText(e.pub.url, `sha256:${l.digest}`, TOKEN), { status: 200, text: 'done' });
  await new Promise((r) => setTimeout(r, 300));
  t.equal(revisionOf(e.repo), before + 1, 'still one revision');
  const m = await (await fetch(`${e.pub.url}/metrics`)).text();
  t.match(m, /cvmfs_publisher_jobs\{state="done"\} 2/, "two jobs: the two keys");
  t.match(m, /cvmfs_publisher_event_records_total\{result="duplicate"\} 2/);
});

t.test('failures: corrupt tarball, digest mismatch, missing object, unnamed key → failed with the reason; the repository unchanged', async (t) => {
  const e = await setUp(t);
  const good = await layer([{ type: 'file', name: 'g', content: 'good' }]);
  const corruptGz = gzipSync(Buffer.concat([Buffer.from('this is not a tar archive at all '), randomBytes(2000)]));
  const truncatedGz = good.blob.subarray(0, good.blob.length - 10);
  const mismatch = Buffer.from(good.blob); mismatch[mismatch.length - 12] = mismatch[mismatch.length - 12]! ^ 0xff;
  const escape = await tarOf([{ type: 'file', name: '../../etc/passwd', content: 'x' }]);
  const cases = [
    { key: sha256(corruptGz), body: corruptGz, code: 'PUB_BAD_LAYER' },
    { key: sha256(truncatedGz), body: truncatedGz, code: 'PUB_(TRUNCATED|BAD_LAYER)' },
    { key: good.digest, body: mismatch, code: 'PUB_DIGEST_MISMATCH' },
    { key: sha256(escape), body: escape, code: 'PUB_BAD_LAYER' },
    { key: 'layer.tar.gz', body: good.blob, code: 'PUB_CANNOT_VERIFY' },
  ];
  const ups = [];
  for (const c of cases) ups.push(await upload(e.s3.client, BUCKET, c.key, c.body));
  ups.push({ key: 'f'.repeat(64), etag: 'missing', size: 10 });
  const before = e.repo.manifest();
  const r0 = await readBack(t, e, 'c0');
  t.equal((await postEvent(e.pub.url, minioEvent(BUCKET, ups), TOKEN)).status, 200);
  for (const [i, c] of [...cases, { key: 'f'.repeat(64), code: 'PUB_OBJECT_NOT_FOUND' }].entries()) {
    const s = await waitFor(e.pub.url, c.key, TOKEN);
    t.equal(s.state, 'failed', `${c.key}: failed`);
    t.match(s.code, new RegExp(`^${c.code}$`), `${c.key}: ${s.reason}`);
    const text = await statusText(e.pub.url, c.key, TOKEN);
    t.match(text.text, new RegExp(`^failed: ${c.code}: `), `plain text ${i}: ${text.text.slice(0, 100)}`);
  }
  t.match((await statusJson(e.pub.url, good.digest, TOKEN)).reason, /sha256/, 'the mismatch names the digests');
  t.ok(e.repo.manifest().equals(before), 'the manifest is unchanged: no revision');
  t.notOk(await r0.refresh(), 'our client sees no new revision');
  await t.rejects(r0.stat('/.layers'), { code: 'CVMFS_PATH_NOT_FOUND' }, 'not even the /.layers catalog was published');
  t.match(await (await fetch(`${e.pub.url}/metrics`)).text(), /cvmfs_publisher_jobs_finished_total\{state="failed"\} 6/);
});

t.test('a failed job does not hold back the rest of its batch', async (t) => {
  const e = await setUp(t);
  const good = await layer([{ type: 'file', name: 'ok', content: 'fine' }]);
  let bad = gzipSync(Buffer.from('garbage, not a tar'));
  // Another shard than the good layer, so that its catalog would be new too.
  for (let i = 0; sha256(bad).slice(0, 2) === good.digest.slice(0, 2); i++) bad = gzipSync(Buffer.from(`garbage ${i}`));
  const upBad = await upload(e.s3.client, BUCKET, sha256(bad), bad);
  const upGood = await upload(e.s3.client, BUCKET, good.digest, good.blob);
  const before = revisionOf(e.repo);
  await postEvent(e.pub.url, minioEvent(BUCKET, [upBad, upGood]), TOKEN);
  const [sb, sg] = [await waitFor(e.pub.url, upBad.key, TOKEN), await waitFor(e.pub.url, upGood.key, TOKEN)];
  t.equal(sb.state, 'failed');
  t.equal(sg.state, 'done');
  t.equal(sg.revision, before + 1);
  const r = await readBack(t, e, 'cache');
  t.equal((await r.readFile(`${layerDir(good.digest)}/layerfs/ok`)).toString(), 'fine');
  await t.rejects(r.stat(`/.layers/${sha256(bad).slice(0, 2)}`), { code: 'CVMFS_PATH_NOT_FOUND' }, 'no empty shard catalog left by the failed job');
});

t.test('the webhook: other events ignored, other buckets ignored, malformed bodies 400 with a code, POST / as the original', async (t) => {
  const e = await setUp(t);
  const l = await layer([{ type: 'file', name: 'r', content: 'root url' }]);
  const up = await upload(e.s3.client, BUCKET, l.digest, l.blob);
  const del = await postEvent(e.pub.url, minioEvent(BUCKET, [up], { eventName: 's3:ObjectRemoved:Delete' }), TOKEN);
  t.match(del, { status: 200, json: { accepted: 0, ignored: 1 } }, 'a delete event is ignored');
  const acc = await postEvent(e.pub.url, minioEvent(BUCKET, [up], { eventName: 's3:ObjectAccessed:Get' }), TOKEN);
  t.match(acc.json, { accepted: 0, ignored: 1 });
  t.match((await postEvent(e.pub.url, minioEvent('elsewhere', [up]), TOKEN)).json, { accepted: 0, ignored: 1 }, 'another bucket');
  t.same(await statusText(e.pub.url, l.digest, TOKEN), { status: 200, text: 'unknown' });
  for (const body of ['{', '[]', '{"Records": 5}', JSON.stringify({ Records: [{ eventName: 's3:ObjectCreated:Put', s3: {} }] })]) {
    const r = await postEvent(e.pub.url, body, TOKEN);
    t.equal(r.status, 400, `400 for ${body.slice(0, 40)}`);
    t.equal(r.json['code'], 'PUB_BAD_EVENT');
  }
  t.equal((await postEvent(e.pub.url, 'x'.repeat(2 * 1024 * 1024), TOKEN)).status, 400, 'too large');
  const root = await postEvent(e.pub.url, minioEvent(BUCKET, [up]), TOKEN, '/');
  t.equal(root.status, 200, 'POST / (the original URL)');
  t.equal((await waitFor(e.pub.url, l.digest, TOKEN)).state, 'done');
  const nope = await fetch(`${e.pub.url}/nope`);
  t.equal(nope.status, 404);
  t.equal(((await nope.json()) as { code: string }).code, 'PUB_NO_SUCH_ENDPOINT');
});

t.test('healthz, metrics, and --serve with the cache headers of cvmfs-repo serve', async (t) => {
  const e = await setUp(t);
  const l = await layer([{ type: 'file', name: 'm', content: randomBytes(10_000) }]);
  const up = await upload(e.s3.client, BUCKET, l.digest, l.blob);
  await postEvent(e.pub.url, minioEvent(BUCKET, [up]), TOKEN);
  const s = await waitFor(e.pub.url, l.digest, TOKEN);
  const h = await fetch(`${e.pub.url}/healthz`);
  t.equal(h.status, 200);
  t.match(await h.json(), { ok: true, fqrn: FQRN, jobs: { done: 1 } });
  const m = await fetch(`${e.pub.url}/metrics`);
  t.match(m.headers.get('content-type'), /text\/plain/);
  const text = await m.text();
  t.match(text, /# TYPE cvmfs_publisher_publish_latency_seconds histogram/);
  t.match(text, /cvmfs_publisher_publish_latency_seconds_count 1/);
  t.match(text, new RegExp(`cvmfs_publisher_revision ${s.revision}`));
  t.match(text, new RegExp(`cvmfs_publisher_ingested_bytes_total ${l.tar.length}`));
  t.match(text, new RegExp(`cvmfs_publisher_fetched_bytes_total ${l.blob.length}`));
  t.match(text, /cvmfs_publisher_jobs\{state="queued"\} 0/);
  const letter = await fetch(`${e.pub.url}/cvmfs/${FQRN}/.cvmfspublished`);
  t.equal(letter.status, 200);
  t.equal(letter.headers.get('cache-control'), 'public, max-age=61');
  t.equal(letter.headers.get('etag'), null);
  t.equal(letter.headers.get('last-modified'), null);
  t.ok(Buffer.from(await letter.arrayBuffer()).equals(e.repo.manifest()));
  const root = /(?:^|\n)C([0-9a-f]+)/.exec(e.repo.manifest().toString('latin1'))![1]!;
  const obj = await fetch(`${e.pub.url}/cvmfs/${FQRN}/data/${root.slice(0, 2)}/${root.slice(2)}C`);
  t.equal(obj.status, 200);
  t.equal(obj.headers.get('cache-control'), 'public, max-age=259200');
  t.equal((await fetch(`${e.pub.url}/cvmfs/${FQRN}/data/txn/writer.lock`)).status, 404, 'the staging area is never served');
  t.equal((await fetch(`${e.pub.url}/cvmfs/${FQRN}/%zz`)).status, 404, 'a malformed path is a 404');
});

t.test('--allow-unnamed: a key naming no sha256 is published under the digest computed from its bytes', async (t) => {
  const e = await setUp(t, { allowUnnamed: true });
  const l = await layer([{ type: 'file', name: 'u', content: 'unnamed' }]);
  const up = await upload(e.s3.client, BUCKET, 'commits/my layer.tar.gz', l.blob);
  await postEvent(e.pub.url, minioEvent(BUCKET, [up]), TOKEN);
  const s = await waitFor(e.pub.url, up.key, TOKEN);
  t.equal(s.state, 'done', s.reason ?? '');
  t.equal(s.digest, `sha256:${l.digest}`);
  t.equal(s.diffId, `sha256:${l.diffId}`);
  const r = await readBack(t, e, 'cache');
  t.equal((await r.readFile(`${layerDir(l.digest)}/layerfs/u`)).toString(), 'unnamed');
});

t.test('the state directory must be private', async (t) => {
  const base = t.testdir();
  const repo = await makeRepo(base, FQRN);
  const state = path.join(base, 'open-state');
  fs.mkdirSync(state, { mode: 0o755 });
  fs.chmodSync(state, 0o755);
  await t.rejects(startPublisher({ repoDir: repo.dir, keysDir: repo.keys, fqrn: FQRN, stateDir: state, port: 0,
    objects: new S3ObjectStore({ endpoint: 'http://127.0.0.1:9' }) }), { code: 'PUB_STATE_UNSAFE' });
  await t.rejects(startPublisher({ repoDir: repo.dir, keysDir: repo.keys, fqrn: 'other.example.org', stateDir: path.join(base, 's2'), port: 0,
    objects: new S3ObjectStore({ endpoint: 'http://127.0.0.1:9' }) }), { code: 'PUB_USAGE' }, 'the name must be the repository\'s');
});
