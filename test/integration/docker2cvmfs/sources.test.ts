/**
 * Real image sources made here with tar-stream from generated layers: a legacy `docker save`
 * archive (Docker 20.10), an OCI-in-tar archive (Docker ≥ 25), an OCI layout directory with a
 * multi-platform nested index; each read back through its source and verifiedLayer.
 * (`docker save` of a real dockerd is in outputs.test.ts, which owns this folder's one dockerd.)
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import t, { type Test } from 'tap';
import { compress } from 'zstd-napi';
import { MEDIA, type ResolvedImage } from '../../../docker2cvmfs/image.js';
import { verifiedLayer } from '../../../docker2cvmfs/layer-stream.js';
import { openDockerArchive } from '../../../docker2cvmfs/sources/docker-archive.js';
import { openOciLayout } from '../../../docker2cvmfs/sources/oci-layout.js';
import { readThinImage } from '../../../docker2cvmfs/thin-image.js';

const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const hex = (d: string) => d.slice('sha256:'.length);

/** A layer tar of `n` files with random content, made with tar-stream's packer. */
async function makeLayer(n: number, prefix: string): Promise<Buffer> {
  const pack = tar.pack();
  const out: Buffer[] = [];
  pack.on('data', (c: unknown) => { out.push(c as Buffer); });
  const ended = new Promise<void>((r) => { pack.on('end', () => r()); });
  pack.entry({ name: `${prefix}/`, type: 'directory', mode: 0o755 });
  for (let i = 0; i < n; i++) pack.entry({ name: `${prefix}/f${i}`, mode: 0o644 }, randomBytes(1000 + i * 37));
  pack.finalize();
  await ended;
  return Buffer.concat(out);
}

async function writeTar(file: string, entries: { name: string; body?: Buffer; type?: 'symlink' | 'directory'; linkname?: string }[]): Promise<void> {
  const pack = tar.pack();
  const done = pipeline(pack as unknown as Readable, fs.createWriteStream(file));
  for (const e of entries) {
    await new Promise<void>((res, rej) => {
      const cb = (err?: Error | null) => (err ? rej(err) : res());
      if (e.type === 'symlink') pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname! }, cb);
      else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory' }, cb);
      else pack.entry({ name: e.name, size: e.body!.length }, e.body!, cb);
    });
  }
  pack.finalize();
  await done;
}

/** Every layer, read through its source and verified; returns the uncompressed tars. */
async function readLayers(t: Test, r: ResolvedImage): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const [i, d] of r.manifest.layers.entries()) {
    const v = verifiedLayer(await r.source.openBlob(d), d, r.config.rootfs.diff_ids[i]!);
    const parts: Buffer[] = [];
    for await (const c of v.tar) parts.push(c as Buffer);
    const totals = await v.done;
    t.equal(totals.compressedBytes, d.size, `layer ${i + 1}: all ${d.size} blob bytes read`);
    out.push(Buffer.concat(parts));
  }
  return out;
}
const base = await makeLayer(40, 'usr');
const app = await makeLayer(5, 'app');
const empty = await makeLayer(0, 'tmp');

t.test('legacy docker save archive (Docker 20.10 layout, repeated layer as symlink, one gzip layer.tar)', async (t) => {
  const layers = [base, empty, app, empty];
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['A=1'], Cmd: ['sh'] }, created: '2024-01-01T00:00:00Z',
    rootfs: { type: 'layers', diff_ids: layers.map(sha) }, history: layers.map((_, i) => ({ created_by: `step ${i}` })) }));
  const ids = layers.map((l, i) => hex(sha(`${i} ${sha(l)}`)));
  const entries: Parameters<typeof writeTar>[1] = [];
  for (const [i, id] of ids.entries()) {
    entries.push({ name: `${id}/`, type: 'directory' }, { name: `${id}/VERSION`, body: Buffer.from('1.0') }, { name: `${id}/json`, body: Buffer.from('{}') });
    if (i === 3) entries.push({ name: `${id}/layer.tar`, type: 'symlink', linkname: `../${ids[1]}/layer.tar` });
    else entries.push({ name: `${id}/layer.tar`, body: i === 2 ? gzipSync(layers[i]!) : layers[i]! });
  }
  entries.push({ name: `${hex(sha(config))}.json`, body: config });
  entries.push({ name: 'manifest.json', body: Buffer.from(JSON.stringify([{ Config: `${hex(sha(config))}.json`, RepoTags: ['gen/legacy:1'], Layers: ids.map((id) => `${id}/layer.tar`) }])) });
  entries.push({ name: 'repositories', body: Buffer.from(JSON.stringify({ 'gen/legacy': { 1: ids[3] } })) });
  const file = path.join(t.testdir(), 'legacy.tar');
  await writeTar(file, entries);

  const r = await openDockerArchive(file);
  t.equal(r.name, `docker-archive:${file}:gen/legacy:1`);
  t.ok(r.configBytes.equals(config));
  t.same(r.manifest.layers.map((l) => l.mediaType), [MEDIA.dockerLayer, MEDIA.dockerLayer, MEDIA.dockerLayerGzip, MEDIA.dockerLayer]);
  t.equal(r.manifest.layers[2]!.digest, sha(gzipSync(app)), 'a gzip layer.tar is described by its compressed digest');
  const got = await readLayers(t, r);
  t.ok(got.every((g, i) => g.equals(layers[i]!)), 'every layer as written');
  t.same(await readThinImage(r), { thin: false });
});

t.test('OCI-in-tar docker save archive (Docker ≥ 25 layout, with manifest.json)', async (t) => {
  const blobs = [gzipSync(base), Buffer.from(compress(app))];
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha(base), sha(app)] } }));
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociManifest,
    config: { mediaType: MEDIA.ociConfig, digest: sha(config), size: config.length },
    layers: [{ mediaType: MEDIA.ociLayerGzip, digest: sha(blobs[0]!), size: blobs[0]!.length }, { mediaType: MEDIA.ociLayerZstd, digest: sha(blobs[1]!), size: blobs[1]!.length }] }));
  const index = { schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [{ mediaType: MEDIA.ociManifest, digest: sha(manifest), size: manifest.length,
    annotations: { 'io.containerd.image.name': 'docker.io/gen/oci:2', 'org.opencontainers.image.ref.name': '2' } }] };
  const file = path.join(t.testdir(), 'oci-in-tar.tar');
  await writeTar(file, [
    { name: 'blobs/', type: 'directory' }, { name: 'blobs/sha256/', type: 'directory' },
    ...[...blobs, config, manifest].map((b) => ({ name: `blobs/sha256/${hex(sha(b))}`, body: b })),
    { name: 'index.json', body: Buffer.from(JSON.stringify(index)) },
    { name: 'manifest.json', body: Buffer.from(JSON.stringify([{ Config: `blobs/sha256/${hex(sha(config))}`, RepoTags: ['gen/oci:2'], Layers: blobs.map((b) => `blobs/sha256/${hex(sha(b))}`) }])) },
    { name: 'oci-layout', body: Buffer.from('{"imageLayoutVersion":"1.0.0"}') },
  ]);
  const r = await openDockerArchive(file, { ref: 'gen/oci:2' });
  t.equal(r.manifestDigest, sha(manifest), 'the real manifest, found through index.json');
  t.ok(r.manifestBytes.equals(manifest));
  const got = await readLayers(t, r);
  t.ok(got[0]!.equals(base) && got[1]!.equals(app));
});

t.test('OCI layout directory: nested multi-platform index, ref and platform selection', async (t) => {
  const dir = t.testdir();
  fs.mkdirSync(path.join(dir, 'blobs/sha256'), { recursive: true });
  const put = (b: Buffer) => { fs.writeFileSync(path.join(dir, 'blobs/sha256', hex(sha(b))), b); return { digest: sha(b), size: b.length }; };
  const imageFor = (arch: string, layer: Buffer, mediaType: string, blob: Buffer) => {
    const config = Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', config: { Cmd: [arch] }, rootfs: { type: 'layers', diff_ids: [sha(layer)] } }));
    const m = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociManifest, config: { mediaType: MEDIA.ociConfig, ...put(config) },
      layers: [{ mediaType, ...put(blob) }] }));
    return { mediaType: MEDIA.ociManifest, ...put(m), platform: { architecture: arch, os: 'linux', ...(arch === 'arm64' ? { variant: 'v8' } : {}) } };
  };
  const amd = imageFor('amd64', base, MEDIA.ociLayerGzip, gzipSync(base));
  const arm = imageFor('arm64', app, MEDIA.ociLayerZstd, Buffer.from(compress(app)));
  const attestation = { mediaType: MEDIA.ociManifest, ...put(Buffer.from('{}')), platform: { architecture: 'unknown', os: 'unknown' },
    annotations: { 'vnd.docker.reference.type': 'attestation-manifest' } };
  const nested = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [amd, arm, attestation] }));
  const plain = imageFor('amd64', empty, MEDIA.ociLayer, empty);
  fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [
    { mediaType: MEDIA.ociIndex, ...put(nested), annotations: { 'org.opencontainers.image.ref.name': 'multi' } },
    { ...plain, annotations: { 'org.opencontainers.image.ref.name': 'plain' } }] }));
  fs.writeFileSync(path.join(dir, 'oci-layout'), '{"imageLayoutVersion": "1.0.0"}');

  const onAmd = await openOciLayout(dir, { ref: 'multi', platform: { os: 'linux', architecture: 'amd64' } });
  t.equal(onAmd.config.architecture, 'amd64');
  t.ok((await readLayers(t, onAmd))[0]!.equals(base));
  const onArm = await openOciLayout(dir, { ref: 'multi', platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } });
  t.equal(onArm.manifestDigest, arm.digest);
  t.ok((await readLayers(t, onArm))[0]!.equals(app), 'zstd layer verified');
  await t.rejects(openOciLayout(dir, { ref: 'multi', platform: { os: 'linux', architecture: 's390x' } }),
    { code: 'D2C_PLATFORM_NOT_FOUND', message: /linux\/amd64, linux\/arm64\/v8/ });
  const p = await openOciLayout(dir, { ref: 'plain' });
  t.ok((await readLayers(t, p))[0]!.equals(empty), 'uncompressed OCI layer');
  t.equal(p.name, `oci:${dir}:plain`);
  await t.rejects(openOciLayout(dir), { code: 'D2C_USAGE', message: /multi, plain/ });
});
