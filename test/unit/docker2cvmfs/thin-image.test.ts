import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import t from 'tap';
import { parseThin } from '../../../driver/thin.js';
import { isConvertError } from '../../../docker2cvmfs/errors.js';
import { MEDIA, type Descriptor, type ImageConfig, type ResolvedImage } from '../../../docker2cvmfs/image.js';
import {
  LABEL_SOURCE, LABEL_SOURCE_DIGEST, MAX_THIN_JSON_BYTES, buildThinImage, makeThinJson, parseThinDescriptor, readThinImage,
} from '../../../docker2cvmfs/thin-image.js';
import { tarOf } from '../../lib/tar-of.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const A = 'a'.repeat(64);
const B = 'b'.repeat(64);

t.test('makeThinJson: exact bytes (key order, no prefix, two spaces, trailing newline)', async (t) => {
  const out = makeThinJson([
    { digest: `sha256:${A}`, url: `cvmfs://unpacked.cern.ch/.layers/aa/${A}/layerfs` },
    { digest: B, url: `cvmfs://example.cern.ch/layers/${B}` },
  ], 'docker.io/library/ubuntu:24.04@sha256:' + 'c'.repeat(64));
  t.equal(out.toString(), `{
  "version": "1.0",
  "origin": "docker.io/library/ubuntu:24.04@sha256:${'c'.repeat(64)}",
  "layers": [
    {
      "digest": "${A}",
      "url": "cvmfs://unpacked.cern.ch/.layers/aa/${A}/layerfs"
    },
    {
      "digest": "${B}",
      "url": "cvmfs://example.cern.ch/layers/${B}"
    }
  ]
}
`);
  t.equal(makeThinJson([], '').toString(), '{\n  "version": "1.0",\n  "layers": []\n}\n', 'empty origin omitted, empty layers kept');
});

t.test('makeThinJson output is accepted by the driver reader (driver/thin.ts)', async (t) => {
  const out = makeThinJson([{ digest: A, url: `cvmfs://unpacked.cern.ch/.layers/aa/${A}/layerfs` }], 'o');
  const d = parseThin('thin.json', out);
  t.same(d.layers, [{ digest: A, fqrn: 'unpacked.cern.ch', path: `/.layers/aa/${A}/layerfs` }]);
});

t.test('makeThinJson never emits an invalid descriptor (D2C_BAD_THIN)', async (t) => {
  const cases: [string, string, string][] = [
    ['short digest', 'abc', `cvmfs://example.cern.ch/layers/x`],
    ['upper-case digest', 'A'.repeat(64), `cvmfs://example.cern.ch/layers/x`],
    ['sha512 prefix', `sha512:${A}`, `cvmfs://example.cern.ch/layers/x`],
    ['http url', A, `http://example.cern.ch/layers/x`],
    ['no path', A, `cvmfs://example.cern.ch/`],
    ['dotdot path', A, `cvmfs://example.cern.ch/layers/../../etc`],
    ['bad fqrn', A, `cvmfs://localhost/layers/x`],
    ['no url', A, ''],
  ];
  for (const [what, digest, url] of cases) {
    t.throws(() => makeThinJson([{ digest, url }], 'o'), { code: 'D2C_BAD_THIN' }, what);
  }
  try { makeThinJson([{ digest: A, url: 'cvmfs://x/' }, { digest: 'zz', url: 'cvmfs://a.b/c' }], 'o'); } catch (err) {
    t.match((err as Error).message, 'layer 1', 'names the layer');
  }
});

t.test('parseThinDescriptor: what DUCC and the 2017 tools wrote', async (t) => {
  const ducc = parseThinDescriptor('thin.json', Buffer.from(JSON.stringify({
    version: '1.0', origin: 'https://registry.hub.docker.com/library/ubuntu:latest', extra: { x: 1 },
    layers: [{ digest: A, url: `cvmfs://unpacked.cern.ch/.layers/aa/${A}/layerfs`, size: 5 }, { digest: `sha256:${B}`, url: `cvmfs://unpacked.cern.ch/.layers/bb/${B}/layerfs` }],
  })));
  t.equal(ducc.version, '1.0');
  t.same(ducc.layers.map((l) => l.digest), [A, B], 'base first, prefix stripped');
  t.same(ducc.layers[0]!.location, { fqrn: 'unpacked.cern.ch', path: `/.layers/aa/${A}/layerfs` });
  t.same(parseThinDescriptor('thin.json', Buffer.from('{"version":"1.0","layers":null}')).layers, [], 'null layers (Go)');
  t.same(parseThinDescriptor('thin.json', Buffer.from('{"version": "0.1", "layers": []}')).version, '0.1', 'old fixture');
  const noUrl = parseThinDescriptor('thin.json', Buffer.from(JSON.stringify({ version: '1.0', layers: [{ digest: A }] })));
  t.same(noUrl.layers, [{ digest: A }], 'missing url: located by digest only');
  const withDefault = parseThinDescriptor('thin.json', Buffer.from(JSON.stringify({ version: '1.0', layers: [{ digest: A, url: '' }] })), 'example.cern.ch');
  t.same(withDefault.layers[0]!.location, { fqrn: 'example.cern.ch', path: `/layers/${A}` });
  const old = parseThinDescriptor('.thin.json', Buffer.from(JSON.stringify({ layers: [{ digest: A, repo: 'images.cern.ch', location: 'x' }] })));
  t.same(old.layers[0]!.location, { fqrn: 'images.cern.ch', path: `/layers/${A}` }, '.thin.json {digest, repo}');
  const oldest = parseThinDescriptor('.thin', Buffer.from(`${A}\n${B}\n\n`), 'images.cern.ch');
  t.same(oldest.layers.map((l) => l.location?.path), [`/layers/${A}`, `/layers/${B}`], '.thin: one digest per line');
  t.same(parseThinDescriptor('.thin', Buffer.from(`${A}\n`)).layers, [{ digest: A }], '.thin without a default repository');
});

t.test('parseThinDescriptor refuses what fails the schema (D2C_BAD_THIN)', async (t) => {
  const cases: [string, string][] = [
    ['not JSON', '{"version": "1.0", '],
    ['not an object', '[1]'],
    ['no version', '{"layers": []}'],
    ['version 2.0', '{"version": "2.0", "layers": []}'],
    ['min_version from the future', '{"version": "1.0", "min_version": "3.0", "layers": []}'],
    ['no layers', '{"version": "1.0"}'],
    ['layers not a list', '{"version": "1.0", "layers": {}}'],
    ['layer not an object', '{"version": "1.0", "layers": [3]}'],
    ['bad digest', `{"version": "1.0", "layers": [{"digest": "xyz"}]}`],
    ['bad url scheme', `{"version": "1.0", "layers": [{"digest": "${A}", "url": "https://a.b/c"}]}`],
    ['url escapes', `{"version": "1.0", "layers": [{"digest": "${A}", "url": "cvmfs://a.b/../x"}]}`],
    ['origin not a string', '{"version": "1.0", "origin": 3, "layers": []}'],
  ];
  for (const [what, text] of cases) t.throws(() => parseThinDescriptor('thin.json', Buffer.from(text)), { code: 'D2C_BAD_THIN' }, what);
  t.throws(() => parseThinDescriptor('.thin', Buffer.from('nothex\n')), { code: 'D2C_BAD_THIN' }, '.thin bad line');
  t.throws(() => parseThinDescriptor('thin.json', Buffer.alloc(MAX_THIN_JSON_BYTES + 1, 0x20)), { code: 'D2C_BAD_THIN' }, 'above 1 MiB');
});

const sourceConfig: ImageConfig = {
  architecture: 'amd64', os: 'linux', variant: undefined as unknown as string, created: '2024-05-01T10:00:00.123456789Z', author: 'someone',
  'x-unknown': { keep: [1, 2, 3] },
  config: {
    Env: ['PATH=/usr/bin', 'A=b'], Entrypoint: ['/entry'], Cmd: ['a', 'b', 'c'], WorkingDir: '/w', User: '1000:1000',
    ExposedPorts: { '80/tcp': {} }, Volumes: { '/data': {} }, Labels: { maintainer: 'me' }, StopSignal: 'SIGINT',
    Healthcheck: { Test: ['CMD', 'true'], Interval: 1000 },
  },
  rootfs: { type: 'layers', diff_ids: [`sha256:${A}`, `sha256:${B}`] },
  history: [{ created: '2024-05-01T09:00:00Z', created_by: 'ADD file' }, { created: '2024-05-01T09:30:00Z', created_by: 'ENV A=b', empty_layer: true }, { created_by: 'RUN x' }],
};
delete (sourceConfig as Record<string, unknown>).variant;
const thinJson = makeThinJson([{ digest: A, url: `cvmfs://example.cern.ch/layers/${A}` }, { digest: B, url: `cvmfs://example.cern.ch/layers/${B}` }], 'src');
const source = { config: sourceConfig, name: 'docker.io/library/x:1', manifestDigest: `sha256:${'d'.repeat(64)}` };

async function entriesOf(tarBytes: Buffer) {
  const out: { header: tar.Header; body: Buffer }[] = [];
  const ex = tar.extract();
  Readable.from([tarBytes]).pipe(ex);
  for await (const e of ex) { const parts: Buffer[] = []; for await (const c of e) parts.push(c as Buffer); out.push({ header: e.header, body: Buffer.concat(parts) }); }
  return out;
}

t.test('buildThinImage: one thin.json entry, 0644, 0:0, fixed mtime; digests consistent', async (t) => {
  const img = buildThinImage(source, thinJson);
  const entries = await entriesOf(img.layer.tar);
  t.equal(entries.length, 1);
  const e = entries[0]!;
  t.equal(e.header.name, 'thin.json');
  t.equal(e.header.type, 'file');
  t.equal(e.header.mode, 0o644);
  t.equal(e.header.uid, 0); t.equal(e.header.gid, 0);
  t.equal(e.header.mtime?.toISOString(), '2024-05-01T10:00:00.000Z', 'mtime from the source created, whole seconds');
  t.ok(e.body.equals(thinJson));
  t.equal(img.layer.diffId, sha(img.layer.tar));
  t.ok(gunzipSync(img.layer.gzip).equals(img.layer.tar));
  t.same(img.layer.descriptor, { mediaType: MEDIA.dockerLayerGzip, digest: sha(img.layer.gzip), size: img.layer.gzip.length });
  t.same(img.config.descriptor, { mediaType: MEDIA.dockerConfig, digest: sha(img.config.bytes), size: img.config.bytes.length });
  t.equal(img.manifest.digest, sha(img.manifest.bytes));
  const m = JSON.parse(img.manifest.bytes.toString()) as Record<string, unknown>;
  t.same(m, { schemaVersion: 2, mediaType: MEDIA.dockerManifest, config: img.config.descriptor, layers: [img.layer.descriptor] });
});

t.test('buildThinImage keeps the whole source config but rootfs (R24)', async (t) => {
  const img = buildThinImage(source, thinJson, { created: new Date('2025-01-02T03:04:05.678Z') });
  const c = JSON.parse(img.config.bytes.toString()) as Record<string, unknown> & { config: Record<string, unknown>; history: Record<string, unknown>[] };
  for (const k of ['architecture', 'os', 'created', 'author', 'x-unknown']) t.same(c[k], (sourceConfig as Record<string, unknown>)[k], k);
  for (const k of ['Env', 'Entrypoint', 'Cmd', 'WorkingDir', 'User', 'ExposedPorts', 'Volumes', 'StopSignal', 'Healthcheck']) {
    t.same(c.config[k], sourceConfig.config![k], `config.${k}`);
  }
  t.same(c.config.Labels, { maintainer: 'me', [LABEL_SOURCE]: source.name, [LABEL_SOURCE_DIGEST]: source.manifestDigest });
  t.same(c.rootfs, { type: 'layers', diff_ids: [img.layer.diffId] });
  t.equal(c.history.length, 4);
  t.ok(c.history.slice(0, 3).every((h) => h.empty_layer === true), 'source history kept, all empty layers');
  t.same(c.history.slice(0, 3).map((h) => h.created_by), ['ADD file', 'ENV A=b', 'RUN x']);
  t.equal(c.history[3]!.empty_layer, undefined, 'the thin layer entry is a real layer');
  t.equal(c.history[3]!.created, '2025-01-02T03:04:05.000Z');
  t.same(Object.keys(c), Object.keys(sourceConfig), 'key order of the source kept');
  t.same(sourceConfig.rootfs.diff_ids.length, 2, 'the source config object is not modified');
  const bare = buildThinImage({ ...source, config: { rootfs: { type: 'layers', diff_ids: [] } } }, thinJson);
  const bc = JSON.parse(bare.config.bytes.toString()) as { config: { Labels: Record<string, string> }; history: unknown[] };
  t.same(Object.keys(bc.config.Labels), [LABEL_SOURCE, LABEL_SOURCE_DIGEST], 'labels added to a config without one');
  t.equal(bc.history.length, 1);
  t.equal(bare.layer.tar.subarray(136, 147).toString(), '00000000000', 'no created anywhere: epoch mtime');
});

t.test('buildThinImage is deterministic', async (t) => {
  const a = buildThinImage(source, thinJson);
  const b = buildThinImage(structuredClone(source), Buffer.from(thinJson));
  t.ok(a.layer.tar.equals(b.layer.tar)); t.ok(a.layer.gzip.equals(b.layer.gzip));
  t.ok(a.config.bytes.equals(b.config.bytes)); t.ok(a.manifest.bytes.equals(b.manifest.bytes));
  t.equal(a.manifest.digest, b.manifest.digest);
  t.not(buildThinImage(source, thinJson, { created: new Date(5000) }).manifest.digest, a.manifest.digest, 'created changes it');
  t.throws(() => buildThinImage(source, Buffer.from('{}')), { code: 'D2C_BAD_THIN' }, 'refuses an invalid thin.json');
});

/** A one-image ResolvedImage served from memory. */
function memoryImage(layers: Buffer[], mediaType: string = MEDIA.dockerLayerGzip, diffIds?: string[]): ResolvedImage {
  const blobs = layers.map((b) => (mediaType === MEDIA.dockerLayerGzip ? gzipSync(b) : b));
  const ds: Descriptor[] = blobs.map((b) => ({ mediaType, digest: sha(b), size: b.length }));
  const config: ImageConfig = { rootfs: { type: 'layers', diff_ids: diffIds ?? layers.map(sha) } };
  const configBytes = Buffer.from(JSON.stringify(config));
  const manifest = { schemaVersion: 2 as const, config: { mediaType: MEDIA.ociConfig, digest: sha(configBytes), size: configBytes.length }, layers: ds };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  return {
    name: 'mem', manifest, manifestBytes, manifestDigest: sha(manifestBytes), config, configBytes,
    source: { openBlob: async (d) => Readable.from([blobs[ds.findIndex((x) => x.digest === d.digest)]!]) },
  };
}

t.test('readThinImage: a thin image, and the images that are not', async (t) => {
  const thin = buildThinImage(source, thinJson);
  const r = await readThinImage(memoryImage([thin.layer.tar]));
  t.ok(r.thin);
  if (r.thin) { t.equal(r.file, 'thin.json'); t.same(r.descriptor.layers.map((l) => l.digest), [A, B]); }
  const dotted = await tarOf([{ type: 'file', name: './.thin', content: `${A}\n` }]);
  const rd = await readThinImage(memoryImage([dotted]));
  t.ok(rd.thin && rd.file === '.thin', './.thin at the root counts');
  const both = await tarOf([{ type: 'file', name: '.thin', content: `${A}\n` }, { type: 'file', name: 'thin.json', content: thinJson }]);
  const rb = await readThinImage(memoryImage([both]));
  t.ok(rb.thin && rb.file === 'thin.json', 'thin.json wins over .thin');
  const regular = await tarOf([{ type: 'file', name: 'etc/thin.json', content: thinJson }]);
  t.same(await readThinImage(memoryImage([regular])), { thin: false }, 'not at the root');
  t.same(await readThinImage(memoryImage([thin.layer.tar, regular])), { thin: false }, 'two layers');
  const dir = await tarOf([{ type: 'directory', name: 'thin.json' }]);
  t.same(await readThinImage(memoryImage([dir])), { thin: false }, 'a directory named thin.json');
});

t.test('readThinImage refuses a bad or oversized thin.json, and reads verified bytes only', async (t) => {
  const badJson = await tarOf([{ type: 'file', name: 'thin.json', content: '{"version": "9"}' }]);
  await t.rejects(readThinImage(memoryImage([badJson])), { code: 'D2C_BAD_THIN' });
  const huge = await tarOf([{ type: 'file', name: 'thin.json', content: Buffer.alloc(MAX_THIN_JSON_BYTES + 10, 0x20) }]);
  await t.rejects(readThinImage(memoryImage([huge])), { code: 'D2C_BAD_THIN' }, 'above 1 MiB');
  const thin = buildThinImage(source, thinJson);
  await t.rejects(readThinImage(memoryImage([thin.layer.tar], MEDIA.dockerLayerGzip, [`sha256:${A}`])), { code: 'D2C_DIFFID_MISMATCH' });
  const err = await readThinImage(memoryImage([Buffer.from('not a tar at all, just bytes, and more bytes'.repeat(20))], MEDIA.ociLayer)).catch((e: unknown) => e);
  t.ok(isConvertError(err, 'D2C_BAD_IMAGE'), `not a tar: ${String((err as Error).message)}`);
});
