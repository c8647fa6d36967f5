/**
 * `docker2cvmfs convert / sync / gc / inspect` through the built CLI, against Debian's real
 * docker-registry on loopback and a repository made by our writer, read back with the test
 * reader (signatures, hashes and counters checked). Bad inputs must fail with their code and exit
 * class and leave the repository at its previous revision with no half-written layer.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import t, { type Test } from 'tap';
import { MEDIA, type Descriptor } from '../../../docker2cvmfs/image.js';
import { parseReference } from '../../../docker2cvmfs/reference.js';
import { RegistryClient } from '../../../docker2cvmfs/registry/index.js';
import { readThinImage } from '../../../docker2cvmfs/thin-image.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import { buildImage, pushImage, registryBinary, sha256Of, startRegistry, type BuiltImage, type BuiltLayer, type TestRegistry } from '../../lib/registry.js';
import { skipLoudly } from '../../lib/skip.js';
import { tarOf, type TarSpec } from '../../lib/tar-of.js';

const run = promisify(execFile);
const CLI = path.resolve('dist/docker2cvmfs/cli.js');

interface Ran { code: number; stdout: string; stderr: string }
async function d2c(args: string[], opts: { input?: string; env?: Record<string, string> } = {}): Promise<Ran> {
  const child = run(process.execPath, [CLI, ...args], { env: { ...process.env, ...opts.env }, maxBuffer: 64 << 20, timeout: 120_000 });
  if (opts.input !== undefined) { child.child.stdin?.end(opts.input); }
  return child.then((r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }));
}

async function layerOf(entries: TarSpec[], compression: 'gzip' | 'none' = 'gzip'): Promise<BuiltLayer> {
  const tar = await tarOf(entries);
  const blob = compression === 'gzip' ? gzipSync(tar) : tar;
  const descriptor: Descriptor = { mediaType: compression === 'gzip' ? MEDIA.dockerLayerGzip : MEDIA.ociLayer, digest: sha256Of(blob), size: blob.length };
  return { tar, blob, diffId: sha256Of(tar), descriptor };
}

/** A built image with other layers (and their diff_ids) put in. */
function withLayers(base: BuiltImage, layers: BuiltLayer[], extraConfig: Record<string, unknown> = {}): BuiltImage {
  const config = { ...base.config, ...extraConfig, rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({ created: '2024-01-01T00:00:00Z', created_by: `layer ${i}` })) };
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDescriptor = { ...base.configDescriptor, digest: sha256Of(configBytes), size: configBytes.length };
  const manifestBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: base.mediaType, config: configDescriptor, layers: layers.map((l) => l.descriptor) }, null, 3));
  return { ...base, config, configBytes, configDescriptor, layers, manifestBytes, manifestDigest: sha256Of(manifestBytes) };
}

const hex = (d: string) => d.replace(/^sha256:/, '');
const layerRoot = (d: string) => `/.layers/${hex(d).slice(0, 2)}/${hex(d)}`;

const why = registryBinary() ? undefined : 'docker-registry (Debian package docker-registry) is not installed';
if (why) skipLoudly(t, `DOCKER2CVMFS CONVERT TESTS SKIPPED: ${why}`);
else if (!fs.existsSync(CLI)) t.fail('dist/docker2cvmfs/cli.js missing: run "make build" first');
else {
  let reg: TestRegistry;
  let client: RegistryClient;
  let repo: Fixture;
  let app: BuiltImage;
  const base = t.testdir();
  t.before(async () => {
    reg = await startRegistry('open');
    client = new RegistryClient();
    repo = await makeRepo(base, 'unpacked.example.org');
    const l1 = await layerOf([
      { type: 'directory', name: 'etc/', mode: 0o755 },
      { type: 'file', name: 'etc/os-release', content: 'ID=test\n', mode: 0o644 },
      { type: 'file', name: 'etc/gone', content: 'deleted above\n' },
      { type: 'directory', name: 'opt/', mode: 0o755 },
      { type: 'directory', name: 'opt/app/', mode: 0o750, uid: 1000, gid: 1000 },
      { type: 'file', name: 'opt/app/old', content: 'hidden by the opaque dir above\n' },
      { type: 'file', name: 'usr/bin/tool', content: 'tool v1\n', mode: 0o755 },
      { type: 'character-device', name: 'dev-null', major: 1, minor: 3 },
    ]);
    const l2 = await layerOf([{ type: 'directory', name: 'var/empty/', mode: 0o700 }]); // directory-only (R26)
    const l3 = await layerOf([
      { type: 'file', name: 'etc/.wh.gone', content: '' },
      { type: 'directory', name: 'opt/app/', mode: 0o755 },
      { type: 'file', name: 'opt/app/.wh..wh..opq', content: '' },
      { type: 'file', name: 'opt/app/new', content: 'new\n', uid: 1000, gid: 1000 },
      { type: 'link', name: 'usr/bin/tool-alias', target: 'usr/bin/tool' }, // into the lower layer (R27)
    ], 'none');
    const l4 = await layerOf([]); // empty layer (R26)
    app = withLayers(await buildImage({ layers: [{ files: {} }] }), [l1, l2, l3, l4], {
      config: { Env: ['PATH=/usr/bin:/bin', 'A=1'], Entrypoint: ['/usr/bin/tool'], Cmd: ['--help'], WorkingDir: '/opt/app', User: '1000:1000',
        Labels: { 'org.example': 'yes' }, ExposedPorts: { '8080/tcp': {} }, Volumes: { '/data': {} } },
    });
    await pushImage(client, parseReference(reg.name('app:1')), app);
  });
  t.teardown(async () => { await reg?.close(); });

  const revision = async () => (await repo.read()).revision;

  t.test('convert: every layer in the DUCC layout in one revision, metadata last, thin image pushed', async (t) => {
    const before = await revision();
    const r = await d2c(['convert', reg.name('app:1'), '--repo', repo.dir, '--keys', repo.keys, '--push', reg.name('app_thin:1'), '--json']);
    t.equal(r.code, 0, `exit 0\n${r.stderr}`);
    const out = JSON.parse(r.stdout) as { revision: number; published: boolean; newLayers: number; reusedLayers: number; thinImages: { name: string; digest: string }[] };
    t.equal(out.revision, before + 1, 'exactly one new revision');
    t.equal(out.newLayers, 4);
    const read = await repo.read();
    t.same(read.problems, [], 'the repository reads back clean (signatures, hashes, counters)');
    t.equal(read.revision, before + 1);
    for (const l of app.layers) {
      const root = layerRoot(l.descriptor.digest);
      t.ok(read.entries.has(`${root}/layerfs`), `${root}/layerfs exists`);
      t.ok(read.catalogs.has(`${root}/layerfs`), 'and is its own nested catalog');
      const info = JSON.parse(read.entries.get(`${root}/.metadata/layers.json`)!.content!.toString()) as Record<string, unknown>[];
      t.equal(info[0]!['diff-digest'], l.diffId, 'layers.json records the diffID');
      t.equal(info[0]!['compressed-diff-digest'], l.descriptor.digest);
      t.equal(info[0]!['diff-size'], l.tar.length, 'and the uncompressed size');
      const origin = JSON.parse(read.entries.get(`${root}/.metadata/origin.json`)!.content!.toString()) as { origin: string[] };
      t.same(origin.origin, [app.configDescriptor.digest], 'origin.json names the image config');
    }
    for (const c of ['/.layers', `/.layers/${hex(app.layers[0]!.descriptor.digest).slice(0, 2)}`]) t.ok(read.catalogs.has(c), `${c} is a nested catalog`);
    const l1 = `${layerRoot(app.layers[0]!.descriptor.digest)}/layerfs`;
    const l3 = `${layerRoot(app.layers[2]!.descriptor.digest)}/layerfs`;
    t.equal(read.entries.get(`${l1}/opt/app`)!.uid, 1000, 'owners kept (R28)');
    t.equal(read.entries.get(`${l1}/opt/app`)!.mode & 0o7777, 0o750, 'directory modes kept');
    t.equal(read.entries.get(`${l1}/dev-null`)!.mode & 0o170000, 0o020000, 'devices stored (R29)');
    t.ok(read.entries.has(`${l3}/etc/.wh.gone`), 'whiteouts stored the AUFS way, as DUCC does');
    t.equal(read.entries.get(`${l3}/usr/bin/tool-alias`)!.content!.toString(), 'tool v1\n', 'a hardlink into the lower layer became a copy (R27)');
    t.ok(r.stderr === '' || !/error/i.test(r.stderr), 'no error printed');
    const marker = read.entries.get(`/.metadata/${reg.host}/app:1/manifest.json`);
    t.ok(marker?.content?.equals(app.manifestBytes), 'the image marker is the manifest, byte for byte');

    const thin = await client.resolve(parseReference(reg.name('app_thin:1')), { os: 'linux', architecture: 'amd64' });
    t.equal(thin.manifestDigest, out.thinImages[0]!.digest, 'pushed digest printed');
    const inner = thin.config.config as Record<string, unknown>;
    const src = app.config.config as Record<string, unknown>;
    for (const k of ['Env', 'Entrypoint', 'Cmd', 'WorkingDir', 'User', 'ExposedPorts', 'Volumes']) t.same(inner[k], src[k], `${k} kept (R24)`);
    t.same((inner['Labels'] as Record<string, string>)['org.example'], 'yes', 'source labels kept');
    t.equal((inner['Labels'] as Record<string, string>)['org.cernvm.thin.source-digest'], app.manifestDigest, 'labelled with its source digest');
    const desc = await readThinImage(thin);
    t.ok(desc.thin, 'the pushed image is thin');
    if (desc.thin) {
      t.same(desc.descriptor.layers.map((l) => l.url), app.layers.map((l) => `cvmfs://${repo.fqrn}${layerRoot(l.descriptor.digest)}/layerfs`), 'base first, DUCC URLs');
    }
  });

  t.test('convert again: nothing changes, and it says so', async (t) => {
    const before = await revision();
    const r = await d2c(['convert', reg.name('app:1'), '--repo', repo.dir, '--keys', repo.keys, '--no-thin']);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /unchanged at revision/, r.stdout);
    t.match(r.stdout, /0 layers new, 4 reused/);
    t.equal(await revision(), before, 'no new revision');
  });

  t.test('inspect: thin or not, where the layers are, present or not', async (t) => {
    const thin = await d2c(['inspect', reg.name('app_thin:1'), '--repo', repo.dir, '--keys', repo.keys, '--json']);
    t.equal(thin.code, 0, thin.stderr);
    const v = JSON.parse(thin.stdout) as { thin: boolean; layers: { present?: boolean }[] };
    t.equal(v.thin, true);
    t.same(v.layers.map((l) => l.present), [true, true, true, true], 'each layer present, through our client');
    const plain = await d2c(['inspect', reg.name('app:1')]);
    t.equal(plain.code, 0, plain.stderr);
    t.match(plain.stdout, /not a thin image/);
  });

  const failsCleanly = async (t: Test, args: string[], code: number, pattern: RegExp, opts: { input?: string } = {}) => {
    const before = await revision();
    const r = await d2c(args, opts);
    t.equal(r.code, code, `exit ${code}: ${r.stderr.trim()}`);
    t.match(r.stderr, pattern);
    t.equal(await revision(), before, 'the repository stays at its revision');
    return r;
  };

  t.test('bad input: coded errors, exit classes, the previous revision kept', async (t) => {
    const args = (img: string) => ['convert', img, '--repo', repo.dir, '--keys', repo.keys, '--no-thin'];
    await failsCleanly(t, args(reg.name('nothing:1')), 3, /D2C_IMAGE_NOT_FOUND/);
    await failsCleanly(t, args(reg.name('app:2')), 3, /D2C_IMAGE_NOT_FOUND/);
    await failsCleanly(t, ['convert', 'Bad//Ref', '--repo', repo.dir, '--keys', repo.keys], 2, /D2C_USAGE/);

    // diffID lies: the config names another uncompressed digest.
    const fresh = await layerOf([{ type: 'file', name: 'f', content: 'diffid test\n' }]);
    const lying = withLayers(app, [{ ...fresh, diffId: sha256Of(Buffer.from('other')) }]);
    await pushImage(client, parseReference(reg.name('lying:1')), lying);
    await failsCleanly(t, args(reg.name('lying:1')), 4, /D2C_DIFFID_MISMATCH/);
    t.notOk((await repo.read()).entries.has(layerRoot(fresh.descriptor.digest)), 'no half-written layer');

    // Unsupported media type.
    const odd = withLayers(app, [{ ...fresh, descriptor: { ...fresh.descriptor, mediaType: 'application/vnd.example.layer+lz4' } }]);
    await pushImage(client, parseReference(reg.name('odd:1')), odd);
    await failsCleanly(t, args(reg.name('odd:1')), 4, /D2C_UNSUPPORTED_MEDIA_TYPE/);
  });

  t.test('foreign layers: refused with a clear message, converted with --allow-foreign', async (t) => {
    const layer = await layerOf([{ type: 'file', name: 'foreign', content: 'from elsewhere\n' }]);
    const served: string[] = [];
    const elsewhere = http.createServer((req, res) => { served.push(req.url ?? ''); res.end(layer.blob); });
    await new Promise<void>((r) => elsewhere.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise<void>((r) => elsewhere.close(() => r())));
    const url = `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/blobs/foreign.tar.gz`;
    const foreign = { ...layer, descriptor: { ...layer.descriptor, mediaType: MEDIA.dockerLayerForeign, urls: [url] } };
    await pushImage(client, parseReference(reg.name('foreign:1')), withLayers(app, [foreign]));
    const args = ['convert', reg.name('foreign:1'), '--repo', repo.dir, '--keys', repo.keys, '--no-thin'];
    await failsCleanly(t, args, 4, /D2C_FOREIGN_LAYER: .*--allow-foreign/);
    const r = await d2c([...args, '--allow-foreign']);
    t.equal(r.code, 0, r.stderr);
    t.equal((await repo.read()).entries.get(`${layerRoot(layer.descriptor.digest)}/layerfs/foreign`)?.content?.toString(), 'from elsewhere\n');
    t.same(served, ['/blobs/foreign.tar.gz'], 'fetched from its URL');
  });

  t.test('bad blobs served by the registry: digest mismatch, truncation', async (t) => {
    const args = (img: string) => ['convert', img, '--repo', repo.dir, '--keys', repo.keys, '--no-thin'];
    const blobFile = (d: string) => path.join(reg.storageDir, 'docker/registry/v2/blobs/sha256', hex(d).slice(0, 2), hex(d), 'data');
    const corrupt = await layerOf([{ type: 'file', name: 'c', content: 'x'.repeat(10_000) }]);
    await pushImage(client, parseReference(reg.name('corrupt:1')), withLayers(app, [corrupt]));
    const f = blobFile(corrupt.descriptor.digest);
    const bytes = fs.readFileSync(f);
    bytes.writeUInt8(bytes.readUInt8(bytes.length >> 1) ^ 0xff, bytes.length >> 1);
    fs.writeFileSync(f, bytes);
    await failsCleanly(t, args(reg.name('corrupt:1')), 4, /D2C_DIGEST_MISMATCH|D2C_BAD_IMAGE/);
    t.notOk((await repo.read()).entries.has(layerRoot(corrupt.descriptor.digest)), 'no half-written layer');

    const cut = await layerOf([{ type: 'file', name: 't', content: createHash('sha256').update('t').digest('hex').repeat(500) }]);
    await pushImage(client, parseReference(reg.name('cut:1')), withLayers(app, [cut]));
    const g = blobFile(cut.descriptor.digest);
    fs.writeFileSync(g, fs.readFileSync(g).subarray(0, cut.blob.length >> 1));
    await failsCleanly(t, args(reg.name('cut:1')), 4, /D2C_TRUNCATED|D2C_DIGEST_MISMATCH|D2C_BAD_IMAGE/);
    t.notOk((await repo.read()).entries.has(layerRoot(cut.descriptor.digest)), 'no half-written layer');
  });

  t.test('auth refused by a registry with basic auth', async (t) => {
    const locked = await startRegistry('htpasswd');
    t.teardown(() => locked.close());
    const ok = new RegistryClient({ credentials: { get: async () => ({ username: 'alice', password: 'wonderland' }) } });
    await pushImage(ok, parseReference(locked.name('app:1')), app);
    await failsCleanly(t, ['convert', locked.name('app:1'), '--repo', repo.dir, '--keys', repo.keys, '--no-thin', '--username', 'alice', '--password-stdin'],
      3, /D2C_AUTH_FAILED/, { input: 'not the password\n' });
    const good = await d2c(['convert', locked.name('app:1'), '--repo', repo.dir, '--keys', repo.keys, '--no-thin', '--username', 'alice', '--password-stdin'],
      { input: 'wonderland\n' });
    t.equal(good.code, 0, `with the right password it converts (layers reused): ${good.stderr}`);
    t.match(good.stdout, /0 layers new, 4 reused/);
  });

  t.test('sync: wildcards, thin images, a second run changes nothing, --gc with a dry run', async (t) => {
    const dir = t.testdir();
    const v2 = withLayers(app, [...app.layers.slice(0, 2), await layerOf([{ type: 'file', name: 'etc/v2', content: 'two\n' }])]);
    await pushImage(client, parseReference(reg.name('app:1.1')), v2);
    const recipe = path.join(dir, 'recipe.yaml');
    fs.writeFileSync(recipe, [
      'version: 1', `cvmfs_repo: ${repo.fqrn}`, `output_format: '$(scheme)://${reg.host}/thin/$(repository):$(tag)'`,
      'input:', `  - 'http://${reg.host}/app:1*'`, '',
    ].join('\n'));
    const first = await d2c(['sync', recipe, '--repo', repo.dir, '--keys', repo.keys]);
    t.equal(first.code, 0, first.stderr);
    t.match(first.stdout, /converted .*app:1\.1/);
    t.match(first.stdout, /app:1 → .*thin\/app:1 \(pushed\)/);
    const again = await d2c(['sync', recipe, '--repo', repo.dir, '--keys', repo.keys]);
    t.equal(again.code, 0, again.stderr);
    t.match(again.stdout, /nothing to do/, 'the second run says nothing changed');
    t.notMatch(again.stdout, /pushed\)/);

    // The tag moves: app:1.1 now has another top layer.
    const v3 = withLayers(app, [...app.layers.slice(0, 2), await layerOf([{ type: 'file', name: 'etc/v3', content: 'three\n' }])]);
    await pushImage(client, parseReference(reg.name('app:1.1')), v3);
    const moved = await d2c(['sync', recipe, '--repo', repo.dir, '--keys', repo.keys]);
    t.equal(moved.code, 0, moved.stderr);
    t.match(moved.stdout, /converted +\S*app:1\.1 → \S*thin\/app:1\.1 \(pushed\)/, 'a moved tag is converted again and its thin image pushed');
    t.match(moved.stdout, /unchanged +\S*app:1 → \S*thin\/app:1 \(present\)/, 'the other is left alone');
    t.match(moved.stdout, /1 layers new, 4 reused/);

    const before = await revision();
    fs.writeFileSync(recipe, ['version: 1', `cvmfs_repo: ${repo.fqrn}`, 'input:', `  - 'http://${reg.host}/app:1'`, ''].join('\n'));
    const dry = await d2c(['sync', recipe, '--repo', repo.dir, '--keys', repo.keys, '--gc', '--grace-period', '0', '--dry-run', '--no-thin']);
    t.equal(dry.code, 0, dry.stderr);
    t.match(dry.stdout, new RegExp(`would remove layer ${hex(v2.layers[2]!.descriptor.digest)}`), 'the layer of the tag before it moved');
    t.match(dry.stdout, new RegExp(`would remove layer ${hex(v3.layers[2]!.descriptor.digest)}`), 'the layer of the image no longer listed');
    t.match(dry.stdout, /would remove image marker .*app:1\.1/);
    t.equal(await revision(), before, 'a dry run changes nothing');
    const gc = await d2c(['sync', recipe, '--repo', repo.dir, '--keys', repo.keys, '--gc', '--grace-period', '0', '--no-thin']);
    t.equal(gc.code, 0, gc.stderr);
    const read = await repo.read();
    t.equal(read.revision, before + 1, 'one revision for the collection');
    t.same(read.problems, []);
    for (const l of [v2.layers[2]!, v3.layers[2]!]) t.notOk(read.entries.has(layerRoot(l.descriptor.digest)), 'a layer only app:1.1 used is gone');
    t.notOk(read.entries.has(`/.metadata/${reg.host}/app:1.1`), 'and its marker');
    for (const l of app.layers) t.ok(read.entries.has(`${layerRoot(l.descriptor.digest)}/layerfs`), 'layers of the kept image stay');
  });

  t.test('a recipe with a syntax error names line and column', async (t) => {
    const dir = t.testdir();
    const recipe = path.join(dir, 'bad.yaml');
    fs.writeFileSync(recipe, `version: 1\ncvmfs_repo: ${repo.fqrn}\ninput:\n  - 'unclosed\n`);
    await failsCleanly(t, ['sync', recipe, '--repo', repo.dir, '--keys', repo.keys], 2, /D2C_RECIPE_INVALID: .*bad\.yaml:\d+:\d+/);
  });
}

