/**
 * Hostile and broken image sources: docker-archive tars and OCI layout directories built here
 * entry by entry (test/lib/tar-of.ts), each fault named.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { MEDIA } from '../../../docker2cvmfs/image.js';
import { normalizeTag, openDockerArchive } from '../../../docker2cvmfs/sources/docker-archive.js';
import { openOciLayout } from '../../../docker2cvmfs/sources/oci-layout.js';
import { tarOf, type TarSpec } from '../../lib/tar-of.js';

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

async function layer(name: string): Promise<Buffer> {
  return tarOf([{ type: 'file', name, content: `content of ${name}\n` }]);
}

/** The legacy `docker save` entries of one image: `<id>/layer.tar`, `<config hex>.json`. */
async function legacyImage(tags: string[], files: string[]) {
  const layers = await Promise.all(files.map(layer));
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['sh'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${sha(l)}`) } }));
  const ids = layers.map((l, i) => sha(`${i}:${sha(l)}`));
  const entries: TarSpec[] = [
    ...layers.flatMap((l, i): TarSpec[] => [{ type: 'directory', name: `${ids[i]}/` }, { type: 'file', name: `${ids[i]}/layer.tar`, content: l }]),
    { type: 'file', name: `${sha(config)}.json`, content: config },
  ];
  const manifest = { Config: `${sha(config)}.json`, RepoTags: tags, Layers: ids.map((id) => `${id}/layer.tar`) };
  return { entries, manifest, config, layers, ids };
}

const manifestEntry = (m: unknown[]): TarSpec => ({ type: 'file', name: 'manifest.json', content: JSON.stringify(m) });

function write(t: Test, bytes: Buffer, name = 'image.tar'): string {
  const f = path.join(t.testdir(), name);
  fs.writeFileSync(f, bytes);
  return f;
}
t.test('legacy layout: synthesised manifest, layers served by range', async (t) => {
  const img = await legacyImage(['x/y:1'], ['a', 'b']);
  const f = write(t, await tarOf([...img.entries, manifestEntry([img.manifest])]));
  const r = await openDockerArchive(f);
  t.equal(r.name, `docker-archive:${f}:x/y:1`);
  t.same(r.manifest.layers.map((l) => [l.mediaType, l.digest, l.size]),
    img.layers.map((l) => [MEDIA.dockerLayer, `sha256:${sha(l)}`, l.length]), 'uncompressed: digest = diffID');
  t.equal(r.manifest.config.digest, `sha256:${sha(img.config)}`);
  t.equal(r.manifestDigest, `sha256:${sha(r.manifestBytes)}`);
  const parts: Buffer[] = [];
  for await (const c of await r.source.openBlob(r.manifest.layers[1]!)) parts.push(c as Buffer);
  t.ok(Buffer.concat(parts).equals(img.layers[1]!), 'range read of layer 2');
});

t.test('several images: pick by RepoTag, or fail listing them', async (t) => {
  const a = await legacyImage(['busybox:latest'], ['a']);
  const b = await legacyImage(['registry.example:5000/team/app:2', 'app:2'], ['b']);
  const f = write(t, await tarOf([...a.entries, ...b.entries, manifestEntry([a.manifest, b.manifest])]));
  await t.rejects(openDockerArchive(f), { code: 'D2C_USAGE', message: /2 images.*busybox:latest.*app:2/ });
  t.equal((await openDockerArchive(f, { ref: 'docker.io/library/busybox' })).manifest.config.digest, `sha256:${sha(a.config)}`);
  t.equal((await openDockerArchive(f, { ref: 'registry.example:5000/team/app:2' })).manifest.config.digest, `sha256:${sha(b.config)}`);
  await t.rejects(openDockerArchive(f, { ref: 'nope:1' }), { code: 'D2C_IMAGE_NOT_FOUND', message: /busybox:latest/ });
  t.equal(normalizeTag('registry.example:5000/team/app'), 'registry.example:5000/team/app:latest');
});

t.test('repeated layer written once, the other layer.tar a symlink to it (docker save does this)', async (t) => {
  const img = await legacyImage(['r:1'], ['a', 'a']);
  const entries = img.entries.filter((e) => e.name !== `${img.ids[1]}/layer.tar`);
  entries.push({ type: 'symlink', name: `${img.ids[1]}/layer.tar`, target: `../${img.ids[0]}/layer.tar` });
  const r = await openDockerArchive(write(t, await tarOf([...entries, manifestEntry([img.manifest])])));
  t.equal(r.manifest.layers.length, 2);
  t.equal(r.manifest.layers[1]!.size, img.layers[0]!.length);
});

t.test('long names (PAX / GNU) are honoured', async (t) => {
  const img = await legacyImage(['r:1'], ['a']);
  const deep = `${'d'.repeat(90)}/${'e'.repeat(90)}/${'f'.repeat(90)}/layer.tar`;
  const entries = img.entries.map((e) => (e.name === `${img.ids[0]}/layer.tar` ? { ...e, name: deep } : e));
  const r = await openDockerArchive(write(t, await tarOf([...entries, manifestEntry([{ ...img.manifest, Layers: [deep] }])])));
  t.equal(r.manifest.layers[0]!.size, img.layers[0]!.length);
});

t.test('hostile archives are D2C_BAD_IMAGE naming the entry', async (t) => {
  const img = await legacyImage(['r:1'], ['a']);
  const layerName = `${img.ids[0]}/layer.tar`;
  const swap = (e: TarSpec): TarSpec[] => [e, ...img.entries.filter((x) => x.name !== layerName), manifestEntry([img.manifest])];
  const cases: [string, TarSpec[], RegExp][] = [
    ['tar-path-escape (.. in a name)', [{ type: 'file', name: '../evil', content: 'x' }, ...img.entries, manifestEntry([img.manifest])], /"\.\.\/evil".*\.\./],
    ['absolute name', [{ type: 'file', name: '/etc/passwd', content: 'x' }, ...img.entries, manifestEntry([img.manifest])], /\/etc\/passwd/],
    ['symlink-escape (layer.tar → /etc/shadow)', swap({ type: 'symlink', name: layerName, target: '/etc/shadow' }), /layer\.tar.*outside/],
    ['symlink-escape (relative ../..)', swap({ type: 'symlink', name: layerName, target: '../../../etc/shadow' }), /outside/],
    ['hardlink-escape', swap({ type: 'link', name: layerName, target: '../x' }), /outside/],
    ['dangling link', swap({ type: 'link', name: layerName, target: 'nothere' }), /"nothere".*missing/],
    ['layer is a directory', swap({ type: 'directory', name: layerName }), /layer\.tar.*directory/],
    ['missing layer entry', [...img.entries.filter((x) => x.name !== layerName), manifestEntry([img.manifest])], /layer\.tar.*missing/],
    ['missing config', [...img.entries.filter((x) => !x.name.endsWith('.json')), manifestEntry([img.manifest])], /\.json.*missing/],
    ['duplicate entry', [...img.entries, ...img.entries.slice(1, 2), manifestEntry([img.manifest])], /appears twice/],
    ['manifest.json names a path with ..', [...img.entries, manifestEntry([{ ...img.manifest, Layers: ['../../x/layer.tar'] }])], /\.\./],
    ['manifest.json not a list', [...img.entries, { type: 'file', name: 'manifest.json', content: '{}' }], /not a list/],
    ['layer count differs from diff_ids', [...img.entries, manifestEntry([{ ...img.manifest, Layers: [layerName, layerName] }])], /diff_ids/],
    ['neither manifest.json nor index.json', img.entries, /neither/],
  ];
  for (const [what, entries, msg] of cases) {
    const f = write(t, await tarOf(entries), `${what.replace(/\W+/g, '_')}.tar`);
    await t.rejects(openDockerArchive(f), { code: 'D2C_BAD_IMAGE', message: msg }, what);
  }
});

t.test('lying sizes and truncated archives', async (t) => {
  const img = await legacyImage(['r:1'], ['a']);
  const good = await tarOf([...img.entries, manifestEntry([img.manifest])]);
  // Raise the first layer.tar header's size field: its data now claims to run past the end.
  const lying = Buffer.from(good);
  const at = lying.indexOf(Buffer.from(`${img.ids[0]}/layer.tar`));
  lying.write('77777777777\0', at + 124, 'ascii');
  let sum = 0; lying.write('        ', at + 148, 'ascii'); for (let i = 0; i < 512; i++) sum += lying[at + i]!;
  lying.write(sum.toString(8).padStart(6, '0') + '\0 ', at + 148, 'ascii');
  await t.rejects(openDockerArchive(write(t, lying, 'lying.tar')), { code: 'D2C_BAD_IMAGE', message: /layer\.tar.*past the end/ });
  await t.rejects(openDockerArchive(write(t, good.subarray(0, 1000), 'cut.tar')), { message: /past the end|ends inside/ });
  const badSum = Buffer.from(good); badSum[0] = badSum[0]! ^ 1;
  await t.rejects(openDockerArchive(write(t, badSum, 'sum.tar')), { code: 'D2C_BAD_IMAGE', message: /invalid tar header at offset 0/ });
  await t.rejects(openDockerArchive(path.join(t.testdir(), 'none.tar')), { code: 'D2C_IMAGE_NOT_FOUND' });
});

t.test('config digest must match its file name', async (t) => {
  const img = await legacyImage(['r:1'], ['a']);
  const entries = img.entries.map((e) => (e.name.endsWith('.json') ? { ...e, content: Buffer.from(JSON.stringify({ rootfs: { type: 'layers', diff_ids: [`sha256:${sha(img.layers[0]!)}`] } })) } : e));
  await t.rejects(openDockerArchive(write(t, await tarOf([...entries, manifestEntry([img.manifest])]))), { code: 'D2C_DIGEST_MISMATCH', message: /config/ });
});

// ---- OCI layout ----

interface Blob { readonly bytes: Buffer; readonly digest: string }
const blob = (b: Buffer | string): Blob => { const bytes = Buffer.from(b); return { bytes, digest: `sha256:${sha(bytes)}` }; };

function ociLayout(t: Test, o: { version?: string; index?: (m: Blob) => unknown } = {}) {
  const dir = t.testdir();
  const l = blob('layer bytes that are not really a tar');
  const config = blob(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${sha('x')}`] } }));
  const manifest = blob(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociManifest,
    config: { mediaType: MEDIA.ociConfig, digest: config.digest, size: config.bytes.length },
    layers: [{ mediaType: MEDIA.ociLayer, digest: l.digest, size: l.bytes.length }] }));
  fs.mkdirSync(path.join(dir, 'blobs/sha256'), { recursive: true });
  for (const b of [l, config, manifest]) fs.writeFileSync(path.join(dir, 'blobs/sha256', b.digest.slice(7)), b.bytes);
  fs.writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: o.version ?? '1.0.0' }));
  const index = o.index?.(manifest) ?? { schemaVersion: 2, manifests: [{ mediaType: MEDIA.ociManifest, digest: manifest.digest, size: manifest.bytes.length,
    annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] };
  fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify(index));
  return { dir, l, config, manifest };
}

t.test('OCI layout: faults', async (t) => {
  await t.rejects(openOciLayout(ociLayout(t, { version: '2.0.0' }).dir), { code: 'D2C_BAD_IMAGE', message: /imageLayoutVersion "2.0.0"/ }, 'unsupported layout version');
  await t.rejects(openOciLayout(ociLayout(t).dir, { ref: 'v2' }), { code: 'D2C_IMAGE_NOT_FOUND', message: /v2.*v1/ }, 'unknown ref lists the names');
  const tampered = ociLayout(t);
  fs.appendFileSync(path.join(tampered.dir, 'blobs/sha256', tampered.config.digest.slice(7)), ' ');
  await t.rejects(openOciLayout(tampered.dir), { code: 'D2C_DIGEST_MISMATCH', message: /config/ }, 'config tampered (longer)');
  const flipped = ociLayout(t);
  const mf = path.join(flipped.dir, 'blobs/sha256', flipped.manifest.digest.slice(7));
  fs.writeFileSync(mf, fs.readFileSync(mf).toString().replace('"schemaVersion":2', '"schemaVersion":3'));
  await t.rejects(openOciLayout(flipped.dir), { code: 'D2C_DIGEST_MISMATCH', message: /manifest/ }, 'manifest tampered');
  const linked = ociLayout(t);
  const lf = path.join(linked.dir, 'blobs/sha256', linked.l.digest.slice(7));
  fs.rmSync(lf); fs.symlinkSync('/etc/passwd', lf);
  const img = await openOciLayout(linked.dir);
  await t.rejects(img.source.openBlob(img.manifest.layers[0]!), { code: 'D2C_BAD_IMAGE', message: /symlink/ }, 'blob-symlink refused (O_NOFOLLOW)');
  const dirLinked = ociLayout(t);
  fs.renameSync(path.join(dirLinked.dir, 'blobs/sha256'), path.join(dirLinked.dir, 'real'));
  fs.symlinkSync(path.join(dirLinked.dir, 'real'), path.join(dirLinked.dir, 'blobs/sha256'));
  await t.rejects(openOciLayout(dirLinked.dir), { code: 'D2C_BAD_IMAGE', message: /symlink/ }, 'blobs/sha256 itself a symlink');
  const missing = ociLayout(t);
  fs.rmSync(path.join(missing.dir, 'blobs/sha256', missing.l.digest.slice(7)));
  const mi = await openOciLayout(missing.dir);
  await t.rejects(mi.source.openBlob(mi.manifest.layers[0]!), { code: 'D2C_BAD_IMAGE', message: /missing/ });
  await t.rejects(mi.source.openBlob({ ...mi.manifest.layers[0]!, digest: 'sha256:../../../etc/passwd' }), { code: 'D2C_BAD_IMAGE' }, 'digest as path');
  const two = ociLayout(t, { index: (m) => ({ schemaVersion: 2, manifests: [
    { mediaType: MEDIA.ociManifest, digest: m.digest, size: m.bytes.length, annotations: { 'org.opencontainers.image.ref.name': 'a' } },
    { mediaType: MEDIA.ociManifest, digest: m.digest, size: m.bytes.length, annotations: { 'org.opencontainers.image.ref.name': 'b' } }] }) });
  await t.rejects(openOciLayout(two.dir), { code: 'D2C_USAGE', message: /a, b/ }, 'two images, no ref');
  t.ok(await openOciLayout(two.dir, { ref: 'b' }));
  const wrongSize = ociLayout(t, { index: (m) => ({ schemaVersion: 2, manifests: [{ mediaType: MEDIA.ociManifest, digest: m.digest, size: m.bytes.length - 1 }] }) });
  await t.rejects(openOciLayout(wrongSize.dir), { code: 'D2C_DIGEST_MISMATCH' }, 'manifest longer than its descriptor says');
  const schema1 = ociLayout(t, { index: () => ({ schemaVersion: 1, manifests: [] }) });
  await t.rejects(openOciLayout(schema1.dir), { code: 'D2C_BAD_IMAGE' });
});
