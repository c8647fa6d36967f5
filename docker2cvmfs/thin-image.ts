/**
 * Thin images (thin-images-and-layout.md §1, §2): the `thin.json` descriptor we write, a tolerant
 * reader for what DUCC and the 2017 tools wrote, the thin image itself (one layer holding
 * `thin.json`, a config that keeps everything of the source but `rootfs`), and detection of thin
 * images among resolved ones. Everything but `readThinImage` is pure and deterministic: the same
 * inputs give the same bytes, so a re-run produces the same manifest digest.
 *
 * driver/thin.ts is the driver's own reader of the same format; the two must agree on what is
 * valid (test/unit/docker2cvmfs/thin-image.test.ts checks our output against it).
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { ConvertError } from './errors.js';
import { MEDIA, type Descriptor, type ImageConfig, type ImageManifest, type ResolvedImage } from './image.js';
import { verifiedLayer } from './layer-stream.js';

export const THIN_FILES = ['thin.json', '.thin.json', '.thin'] as const;
export type ThinFile = (typeof THIN_FILES)[number];
/** Largest thin descriptor we read (real ones are a few kB). */
export const MAX_THIN_JSON_BYTES = 1024 * 1024;
/** A layer whose blob is larger than this is not a thin layer; we do not read it to find out. */
export const MAX_THIN_LAYER_BYTES = 4 * MAX_THIN_JSON_BYTES;
export const THIN_VERSION = '1.0';
const READABLE_VERSIONS = new Set(['1.0', '0.1']);
export const LABEL_SOURCE = 'org.cernvm.thin.source';
export const LABEL_SOURCE_DIGEST = 'org.cernvm.thin.source-digest';
/** The thin layer's only entry, as DUCC writes it (0644; docker2cvmfs 2018 wrote 0600). */
const THIN_ENTRY_MODE = 0o644;

const HEX64 = /^[0-9a-f]{64}$/;
const DIGEST = /^(sha256:)?([0-9a-f]{64})$/;
const FQRN = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/;

const badThin = (file: string, why: string): ConvertError => new ConvertError('D2C_BAD_THIN', `${file}: ${why}`);

/** `cvmfs://<fqrn>/<path>` → its parts, or why not. The path stays inside its repository. */
function splitUrl(url: string): { fqrn: string; path: string } | string {
  const m = /^([a-z][a-z0-9+.-]*):\/\/([^/]*)\/(.*)$/.exec(url);
  if (!m) return `URL ${JSON.stringify(url)} is not cvmfs://<repository>/<path>`;
  if (m[1] !== 'cvmfs') return `URL ${JSON.stringify(url)} has scheme "${m[1]}", not cvmfs`;
  if (!FQRN.test(m[2]!)) return `URL ${JSON.stringify(url)} names no valid repository`;
  const parts = m[3]!.split('/').filter((c) => c !== '');
  if (parts.length === 0 || parts.some((c) => c === '.' || c === '..' || c.includes('\0'))) {
    return `URL ${JSON.stringify(url)} has a path that is empty or leaves its repository`;
  }
  return { fqrn: m[2]!, path: '/' + parts.join('/') };
}

// ---- writing thin.json ---------------------------------------------------------------------

/**
 * The `thin.json` we write: `{"version": "1.0", "origin", "layers": [{digest, url}], "prefetch"}`, base layer
 * first, digests without `sha256:`, two-space indentation and a trailing newline (the Go
 * producers' `MarshalIndent` shape). `origin` is omitted when empty, as Go's omitempty does.
 */
export function makeThinJson(layers: readonly { readonly digest: string; readonly url: string }[], origin: string,
  prefetch?: readonly (readonly [number, string])[]): Buffer {
  const out = layers.map((l, i) => {
    const m = typeof l.digest === 'string' ? DIGEST.exec(l.digest) : null;
    if (!m) throw badThin('thin.json', `layer ${i + 1} digest ${JSON.stringify(l.digest)} is not sha256 hex`);
    const u = typeof l.url === 'string' ? splitUrl(l.url) : 'has no url';
    if (typeof u === 'string') throw badThin('thin.json', `layer ${i + 1}: ${u}`);
    return { digest: m[2]!, url: l.url };
  });
  if (typeof origin !== 'string') throw badThin('thin.json', 'origin is not a string');
  // The recorded access list (`docker2cvmfs convert --record`): [layer index, path in layer]; readers that do not know it ignore it.
  if (prefetch?.some(([i, p]) => !Number.isInteger(i) || i < 0 || i >= out.length || typeof p !== 'string' || p === '')) {
    throw badThin('thin.json', 'a prefetch entry names no layer or no path');
  }
  const doc = { version: THIN_VERSION, ...(origin ? { origin } : {}), layers: out, ...(prefetch?.length ? { prefetch: { version: 1, files: prefetch } } : {}) };
  const bytes = Buffer.from(JSON.stringify(doc, null, 2) + '\n');
  // Never emit what a reader refuses: read our own output back.
  parseThinDescriptor('thin.json', bytes);
  return bytes;
}

// ---- reading thin descriptors --------------------------------------------------------------

export interface ThinLayerRef {
  /** Compressed-blob sha256, hex, no prefix. */
  readonly digest: string;
  /** As written, when written. */
  readonly url?: string;
  /** Where the layer directory is; absent when neither a url nor a default repository says. */
  readonly location?: { readonly fqrn: string; readonly path: string };
}

export interface ThinDescriptor {
  readonly file: ThinFile;
  /** `"1.0"`, `"0.1"`; `"0"` for the old `.thin`/`.thin.json` variants without one. */
  readonly version: string;
  readonly origin: string;
  /** Base layer first. */
  readonly layers: readonly ThinLayerRef[];
  /** Entries of the recorded access list (`prefetch.files`), if the descriptor carries one. */
  readonly prefetchFiles: number;
}

function digestOf(v: unknown, file: string, i: number): string {
  const m = typeof v === 'string' ? DIGEST.exec(v.trim()) : null;
  if (!m) throw badThin(file, `layer ${i + 1} has no valid "digest" (sha256 hex): ${JSON.stringify(v)}`);
  return m[2]!;
}

const legacyLocation = (fqrn: string, digest: string) => ({ fqrn, path: `/layers/${digest}` });

/**
 * Reads any thin descriptor variant (§2.2–§2.5): `layers: null` is `[]`, digests with or without
 * `sha256:`, a missing `url` (located by `defaultRepository` under `/layers/`, if given), unknown
 * keys ignored, versions 1.0 and 0.1. Anything else is D2C_BAD_THIN naming the field.
 */
export function parseThinDescriptor(file: ThinFile, bytes: Buffer, defaultRepository?: string): ThinDescriptor {
  if (bytes.length > MAX_THIN_JSON_BYTES) throw badThin(file, `is ${bytes.length} bytes, more than the ${MAX_THIN_JSON_BYTES} we read`);
  if (defaultRepository !== undefined && !FQRN.test(defaultRepository)) {
    throw new ConvertError('D2C_USAGE', `default repository ${JSON.stringify(defaultRepository)} is not a repository name`);
  }
  const text = bytes.toString('utf8');
  if (file === '.thin') {
    const layers = text.split('\n').map((l) => l.trim()).filter(Boolean).map((d, i): ThinLayerRef => {
      const digest = digestOf(d, file, i);
      return { digest, ...(defaultRepository ? { location: legacyLocation(defaultRepository, digest) } : {}) };
    });
    return { file, version: '0', origin: '', layers, prefetchFiles: 0 };
  }
  let doc: unknown;
  try { doc = JSON.parse(text); } catch (err) { throw badThin(file, `is not JSON (${(err as Error).message})`); }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw badThin(file, 'is not a JSON object');
  const o = doc as Record<string, unknown>;
  let version: string;
  if (file === 'thin.json') {
    if (typeof o.version !== 'string') throw badThin(file, 'has no "version"');
    if (!READABLE_VERSIONS.has(o.version)) throw badThin(file, `version "${o.version}" is not supported (supported: ${[...READABLE_VERSIONS].join(', ')})`);
    version = o.version;
  } else {
    version = typeof o.version === 'string' ? o.version : '0';
  }
  if (o.min_version !== undefined) {
    if (typeof o.min_version !== 'string') throw badThin(file, '"min_version" is not a string');
    if (Number.parseFloat(o.min_version) > Number.parseFloat(THIN_VERSION) || Number.isNaN(Number.parseFloat(o.min_version))) {
      throw badThin(file, `needs reader version ${o.min_version}; we read ${THIN_VERSION}`);
    }
  }
  if (o.origin !== undefined && typeof o.origin !== 'string') throw badThin(file, '"origin" is not a string');
  const raw = o.layers === null || o.layers === undefined ? [] : o.layers;
  if (file === 'thin.json' && o.layers === undefined) throw badThin(file, 'has no "layers"');
  if (!Array.isArray(raw)) throw badThin(file, '"layers" is not a list');
  const layers = raw.map((l: unknown, i): ThinLayerRef => {
    if (l === null || typeof l !== 'object' || Array.isArray(l)) throw badThin(file, `layer ${i + 1} is not an object`);
    const e = l as Record<string, unknown>;
    const digest = digestOf(e.digest, file, i);
    if (e.url !== undefined && e.url !== '') {
      if (typeof e.url !== 'string') throw badThin(file, `layer ${i + 1} "url" is not a string`);
      const u = splitUrl(e.url);
      if (typeof u === 'string') throw badThin(file, `layer ${i + 1}: ${u}`);
      return { digest, url: e.url, location: u };
    }
    // 2017-03 … 2017-10: {"digest", "repo", "location"}, path fixed to layers/<digest> in repo.
    if (typeof e.repo === 'string' && e.repo !== '') {
      if (!FQRN.test(e.repo)) throw badThin(file, `layer ${i + 1} "repo" ${JSON.stringify(e.repo)} is not a repository name`);
      return { digest, location: legacyLocation(e.repo, digest) };
    }
    return { digest, ...(defaultRepository ? { location: legacyLocation(defaultRepository, digest) } : {}) };
  });
  const files = (o.prefetch as { files?: unknown } | null | undefined)?.files;
  return { file, version, origin: typeof o.origin === 'string' ? o.origin : '', layers, prefetchFiles: Array.isArray(files) ? files.length : 0 };
}

// ---- the thin image -------------------------------------------------------------------------

interface TarHeaderCodec {
  encode(h: { name: string; mode: number; uid: number; gid: number; uname: string; gname: string; size: number; mtime: Date; type: 'file' }): Buffer | null;
}
const require = createRequire(import.meta.url);
// tar-stream's pure header encoder: the thin layer is built synchronously, byte for byte.
const headerCodec = require(path.join(path.dirname(require.resolve('tar-stream')), 'headers.js')) as TarHeaderCodec;

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const BLOCK = 512;

/** A tar of one regular file, ustar, ending with the two zero blocks tar-stream's packer writes. */
function singleFileTar(name: string, body: Buffer, mtime: Date): Buffer {
  const header = headerCodec.encode({ name, mode: THIN_ENTRY_MODE, uid: 0, gid: 0, uname: '', gname: '', size: body.length, mtime, type: 'file' });
  if (!header) throw new ConvertError('D2C_INTERNAL', `tar header for ${name} cannot be encoded`);
  const pad = Buffer.alloc((BLOCK - (body.length % BLOCK)) % BLOCK);
  return Buffer.concat([header, body, pad, Buffer.alloc(2 * BLOCK)]);
}

export interface ThinImage {
  readonly layer: {
    /** Uncompressed: one entry `thin.json`, 0644, 0:0. */
    readonly tar: Buffer;
    readonly gzip: Buffer;
    /** sha256 of `tar`. */
    readonly diffId: string;
    /** The gzip blob, media type Docker gzip layer. */
    readonly descriptor: Descriptor;
  };
  readonly config: { readonly value: ImageConfig; readonly bytes: Buffer; readonly descriptor: Descriptor };
  readonly manifest: { readonly value: ImageManifest; readonly bytes: Buffer; readonly digest: string };
}

function createdOf(source: ImageConfig, opts: { created?: Date }): Date {
  if (opts.created) return opts.created;
  const t = typeof source.created === 'string' ? Date.parse(source.created) : Number.NaN;
  return Number.isNaN(t) ? new Date(0) : new Date(t);
}

/**
 * The thin image for `source`: its config keeps every key of the source config (unknown ones
 * too) except `rootfs`, which names the thin layer only; each source history entry is marked
 * `empty_layer` (its layer lives in CernVM-FS now) and one entry for the thin layer is appended;
 * two labels record the source. `opts.created` dates the thin layer's entry and tar mtime
 * (default: the source config's `created`, else the epoch), so the output is reproducible.
 */
export function buildThinImage(source: { readonly config: ImageConfig; readonly name: string; readonly manifestDigest: string },
  thinJson: Buffer, opts: { readonly created?: Date } = {}): ThinImage {
  parseThinDescriptor('thin.json', thinJson);
  const created = createdOf(source.config, opts);
  // Whole seconds: the tar header holds seconds, and the history entry must agree with it.
  const mtime = new Date(Math.floor(created.getTime() / 1000) * 1000);
  const layerTar = singleFileTar('thin.json', thinJson, mtime);
  const gzip = gzipSync(layerTar, { level: 9 });
  const diffId = sha256(layerTar);
  const layerDescriptor: Descriptor = { mediaType: MEDIA.dockerLayerGzip, digest: sha256(gzip), size: gzip.length };

  const src = structuredClone(source.config) as Record<string, unknown>;
  const inner = (src.config && typeof src.config === 'object' && !Array.isArray(src.config) ? src.config : {}) as Record<string, unknown>;
  const labels = (inner.Labels && typeof inner.Labels === 'object' && !Array.isArray(inner.Labels) ? inner.Labels : {}) as Record<string, unknown>;
  const history = Array.isArray(src.history) ? (src.history as Record<string, unknown>[]) : [];
  const value: Record<string, unknown> = {};
  // Key order of the source is kept (deterministic bytes); rootfs and history are replaced in place.
  for (const [k, v] of Object.entries(src)) value[k] = v;
  value.config = { ...inner, Labels: { ...labels, [LABEL_SOURCE]: source.name, [LABEL_SOURCE_DIGEST]: source.manifestDigest } };
  value.rootfs = { type: 'layers', diff_ids: [diffId] };
  value.history = [
    ...history.map((h) => ({ ...h, empty_layer: true })),
    { created: mtime.toISOString(), created_by: 'docker2cvmfs: thin layer (thin.json)', comment: `layers of ${source.name} in CernVM-FS` },
  ];
  const config = value as ImageConfig;
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDescriptor: Descriptor = { mediaType: MEDIA.dockerConfig, digest: sha256(configBytes), size: configBytes.length };
  const manifest: ImageManifest = { schemaVersion: 2, mediaType: MEDIA.dockerManifest, config: configDescriptor, layers: [layerDescriptor] };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 3));
  return {
    layer: { tar: layerTar, gzip, diffId, descriptor: layerDescriptor },
    config: { value: config, bytes: configBytes, descriptor: configDescriptor },
    manifest: { value: manifest, bytes: manifestBytes, digest: sha256(manifestBytes) },
  };
}

// ---- detecting thin images ----------------------------------------------------------------

export type ThinImageResult =
  | { readonly thin: true; readonly file: ThinFile; readonly descriptor: ThinDescriptor }
  | { readonly thin: false };

const rootName = (name: string): string => name.replace(/^(\.\/)+/, '').replace(/^\/+/, '');

/**
 * Whether `image` is thin: exactly one layer, at most MAX_THIN_LAYER_BYTES, whose tar holds a
 * regular `thin.json` (else `.thin.json`, else `.thin`) at its root. The layer is read through
 * verifiedLayer, so a thin answer comes from verified bytes. A thin file that fails to parse, or is
 * above MAX_THIN_JSON_BYTES, is D2C_BAD_THIN, not "not thin".
 */
export async function readThinImage(image: ResolvedImage, opts: { readonly signal?: AbortSignal; readonly defaultRepository?: string } = {}): Promise<ThinImageResult> {
  if (image.manifest.layers.length !== 1) return { thin: false };
  const d = image.manifest.layers[0]!;
  const diffId = image.config.rootfs.diff_ids[0];
  if (d.size > MAX_THIN_LAYER_BYTES || diffId === undefined) return { thin: false };
  const layer = verifiedLayer(await image.source.openBlob(d, opts.signal), d, diffId, opts.signal ? { signal: opts.signal } : {});
  const found = new Map<ThinFile, Buffer>();
  const extract = tar.extract();
  const parsed = (async () => {
    for await (const entry of extract) {
      const name = rootName(entry.header.name);
      const file = THIN_FILES.find((f) => f === name);
      if (file && entry.header.type === 'file') {
        if ((entry.header.size ?? 0) > MAX_THIN_JSON_BYTES) {
          throw badThin(file, `in layer ${d.digest} is ${entry.header.size} bytes, more than the ${MAX_THIN_JSON_BYTES} we read`);
        }
        const parts: Buffer[] = [];
        for await (const c of entry) parts.push(c as Buffer);
        found.set(file, Buffer.concat(parts));
      } else {
        entry.resume();
      }
    }
  })();
  layer.tar.pipe(extract);
  layer.tar.once('error', (err) => extract.destroy(err));
  try {
    await Promise.all([parsed, layer.done]);
  } catch (err) {
    layer.tar.destroy();
    if (err instanceof ConvertError) throw err;
    throw new ConvertError('D2C_BAD_IMAGE', `layer ${d.digest} is not a valid tar (${(err as Error).message})`, { cause: err });
  }
  for (const file of THIN_FILES) {
    const bytes = found.get(file);
    if (bytes) return { thin: true, file, descriptor: parseThinDescriptor(file, bytes, opts.defaultRepository) };
  }
  return { thin: false };
}
