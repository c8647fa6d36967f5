/**
 * Manifests, indexes, configs and descriptors as untrusted JSON (OCI image-spec `descriptor.md`,
 * `manifest.md`, `image-index.md`, `config.md`; Docker image manifest v2 schema 2), parsed into
 * the typed model of image.ts for every source: registry (registry/client.ts), OCI layout and
 * docker-archive (sources/). Pure: bytes in, values or a ConvertError out. Every failure names
 * `what` (the object and where it came from) and the field at fault (docs/style.md §10).
 *
 * Codes: D2C_BAD_IMAGE for a structure that is wrong, D2C_UNSUPPORTED_MEDIA_TYPE for one that is
 * well-formed but not ours (schema 1, other artifacts, digests other than sha256),
 * D2C_DIGEST_MISMATCH / D2C_TRUNCATED from checkDigest.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { ConvertError } from './errors.js';
import { MEDIA, SHA256_DIGEST, type Descriptor, type ImageConfig, type ImageIndex, type ImageManifest, type Platform } from './image.js';

/** Largest manifest or index we read into memory (containerd and distribution use 4 MiB too). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Largest image config we read into memory (long histories make big configs). */
export const MAX_CONFIG_BYTES = 32 * 1024 * 1024;
/**
 * Most indexes in one chain above a manifest, the first included (OCI allows index → index; real
 * images use one level).
 */
export const MAX_INDEX_DEPTH = 4;

const INDEX_TYPES: ReadonlySet<string> = new Set([MEDIA.ociIndex, MEDIA.dockerManifestList]);
const MANIFEST_TYPES: ReadonlySet<string> = new Set([MEDIA.ociManifest, MEDIA.dockerManifest]);
export const isIndexType = (mediaType: string): boolean => INDEX_TYPES.has(mediaType);
export const isManifestType = (mediaType: string): boolean => MANIFEST_TYPES.has(mediaType);

/** D2C_BAD_IMAGE unless `indexes` (the one about to be read included) is at most MAX_INDEX_DEPTH. */
export function checkIndexDepth(indexes: number, what: string): void {
  if (indexes > MAX_INDEX_DEPTH) throw bad(`${what}: indexes nested deeper than ${MAX_INDEX_DEPTH}`);
}

const bad = (why: string): ConvertError => new ConvertError('D2C_BAD_IMAGE', why);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A JSON object, or D2C_BAD_IMAGE. */
export function parseJson(bytes: Buffer, what: string): Record<string, unknown> {
  let v: unknown;
  try { v = JSON.parse(bytes.toString('utf8')); } catch (err) {
    throw new ConvertError('D2C_BAD_IMAGE', `${what} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (!isObject(v)) throw bad(`${what} is not a JSON object`);
  return v;
}

function parseStringRecord(v: unknown, field: string, what: string): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v) || !Object.values(v).every((x) => typeof x === 'string')) throw bad(`${what}: "${field}" is not an object of strings`);
  return v as Record<string, string>;
}

/** A descriptor (`field` names it within `what`, e.g. `layers[2]`); only sha256 digests. */
export function parseDescriptor(v: unknown, field: string, what: string): Descriptor {
  const fault = (why: string) => bad(`${what}: ${field} ${why}`);
  if (!isObject(v)) throw fault('is not an object');
  const { mediaType, digest, size, urls, platform, annotations } = v;
  if (typeof mediaType !== 'string' || mediaType === '') throw fault('has no "mediaType"');
  if (typeof digest !== 'string') throw fault('has no "digest"');
  if (!SHA256_DIGEST.test(digest)) {
    throw new ConvertError(/^[a-z0-9]+:/.test(digest) && !digest.startsWith('sha256:') ? 'D2C_UNSUPPORTED_MEDIA_TYPE' : 'D2C_BAD_IMAGE',
      `${what}: ${field} has digest ${JSON.stringify(digest)}; only sha256:<64 hex> is supported`);
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw fault(`(${digest}) has no valid "size"`);
  let p: Platform | undefined;
  if (platform !== undefined && platform !== null) {
    if (!isObject(platform) || typeof platform['architecture'] !== 'string' || typeof platform['os'] !== 'string') {
      throw fault('has a "platform" without "os" and "architecture"');
    }
    const variant = platform['variant'];
    if (variant !== undefined && typeof variant !== 'string') throw fault('has a "platform.variant" that is not a string');
    p = { architecture: platform['architecture'], os: platform['os'], ...(variant ? { variant } : {}) };
  }
  if (urls !== undefined && (!Array.isArray(urls) || !urls.every((u) => typeof u === 'string'))) {
    throw fault(`(${digest}) has "urls" that are not a list of strings`);
  }
  const ann = parseStringRecord(annotations, `${field}.annotations`, what);
  return {
    mediaType, digest, size,
    ...(Array.isArray(urls) && urls.length ? { urls: urls as string[] } : {}),
    ...(p ? { platform: p } : {}),
    ...(ann ? { annotations: ann } : {}),
  };
}

function indexOf(j: Record<string, unknown>, declared: string | undefined, what: string): ImageIndex {
  if (!Array.isArray(j['manifests'])) throw bad(`${what}: "manifests" is not a list`);
  const manifests = j['manifests'].map((m, i) => parseDescriptor(m, `manifests[${i}]`, what));
  return { schemaVersion: 2, ...(declared ? { mediaType: declared } : {}), manifests };
}

function manifestOf(j: Record<string, unknown>, declared: string | undefined, what: string): ImageManifest {
  if (!Array.isArray(j['layers'])) throw bad(`${what}: "layers" is not a list`);
  const config = parseDescriptor(j['config'], 'config', what);
  const layers = j['layers'].map((l, i) => parseDescriptor(l, `layers[${i}]`, what));
  const annotations = parseStringRecord(j['annotations'], 'annotations', what);
  return { schemaVersion: 2, ...(declared ? { mediaType: declared } : {}), config, layers, ...(annotations ? { annotations } : {}) };
}

const declaredType = (j: Record<string, unknown>, what: string): string | undefined => {
  const t = j['mediaType'];
  if (t !== undefined && typeof t !== 'string') throw bad(`${what}: "mediaType" is not a string`);
  return t;
};

/** An image index (an OCI layout's `index.json` and the like): schema 2, an index media type if any. */
export function parseIndex(bytes: Buffer, what: string): ImageIndex {
  const j = parseJson(bytes, what);
  if (j['schemaVersion'] !== 2) throw bad(`${what}: "schemaVersion" is ${JSON.stringify(j['schemaVersion'])}, not 2`);
  const declared = declaredType(j, what);
  if (declared !== undefined && !isIndexType(declared)) {
    throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `${what} has media type ${declared}, not an image index`);
  }
  return indexOf(j, declared, what);
}

export type ParsedManifest =
  | { readonly kind: 'manifest'; readonly manifest: ImageManifest; readonly mediaType: string }
  | { readonly kind: 'index'; readonly index: ImageIndex; readonly mediaType: string };

/**
 * Classifies and validates manifest bytes. The media type comes from the JSON's `mediaType`, else
 * from `contentType` (a Content-Type header, or the media type of the descriptor the bytes were
 * found by), else from the shape (OCI lets both be absent).
 */
export function parseManifest(bytes: Buffer, contentType: string, what: string): ParsedManifest {
  const j = parseJson(bytes, what);
  if (j['schemaVersion'] === 1 || /^application\/vnd\.docker\.distribution\.manifest\.v1\+(prettyjws|json)$/.test(contentType)) {
    throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `${what} is a Docker schema 1 manifest, which is deprecated and not supported; `
      + 'push the image again with a current docker or buildah');
  }
  if (j['schemaVersion'] !== 2) throw bad(`${what}: "schemaVersion" is ${JSON.stringify(j['schemaVersion'])}, not 2`);
  const declared = declaredType(j, what);
  const known = (t: string | undefined): t is string => t !== undefined && (isIndexType(t) || isManifestType(t));
  const mediaType = declared ?? (known(contentType) ? contentType : Array.isArray(j['manifests']) ? MEDIA.ociIndex : MEDIA.ociManifest);
  if (!known(mediaType)) throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `${what} has media type ${mediaType}, which is not an image manifest or index`);
  return isIndexType(mediaType)
    ? { kind: 'index', mediaType, index: indexOf(j, declared, what) }
    : { kind: 'manifest', mediaType, manifest: manifestOf(j, declared, what) };
}

/** The bytes descriptor `d` points at, which must be the kind (index or manifest) `d` says. */
export function parseDescribed(bytes: Buffer, d: Descriptor, what: string): ParsedManifest {
  const m = parseManifest(bytes, d.mediaType, what);
  if (isIndexType(d.mediaType) !== (m.kind === 'index')) {
    throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `${what}: its descriptor says ${d.mediaType}, the content is ${m.mediaType}`);
  }
  return m;
}

/**
 * An image config, kept whole (unknown keys too). `rootfs.diff_ids` must be a list of sha256
 * digests, one per layer when `layerCount` is given.
 */
export function parseConfig(bytes: Buffer, what: string, layerCount?: number): ImageConfig {
  const j = parseJson(bytes, what);
  const rootfs = j['rootfs'];
  if (!isObject(rootfs) || rootfs['type'] !== 'layers') throw bad(`${what}: "rootfs.type" is not "layers"`);
  const ids = rootfs['diff_ids'];
  if (!Array.isArray(ids)) throw bad(`${what}: "rootfs.diff_ids" is not a list`);
  ids.forEach((d, i) => {
    if (typeof d !== 'string' || !SHA256_DIGEST.test(d)) throw bad(`${what}: "rootfs.diff_ids[${i}]" is ${JSON.stringify(d)}, not sha256:<64 hex>`);
  });
  if (layerCount !== undefined && ids.length !== layerCount) {
    throw bad(`${what} lists ${ids.length} diff_ids but the manifest has ${layerCount} layers`);
  }
  for (const k of ['architecture', 'os', 'variant', 'created'] as const) {
    if (j[k] !== undefined && typeof j[k] !== 'string') throw bad(`${what}: "${k}" is not a string`);
  }
  if (j['config'] !== undefined && j['config'] !== null && !isObject(j['config'])) throw bad(`${what}: "config" is not an object`);
  if (j['history'] !== undefined && (!Array.isArray(j['history']) || !j['history'].every(isObject))) {
    throw bad(`${what}: "history" is not a list of objects`);
  }
  return j as unknown as ImageConfig;
}

export const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** `bytes` are what `d` describes: its size (else D2C_TRUNCATED / D2C_DIGEST_MISMATCH) and sha256. */
export function checkDigest(bytes: Buffer, d: Descriptor, what: string): void {
  if (bytes.length !== d.size) {
    throw new ConvertError(bytes.length < d.size ? 'D2C_TRUNCATED' : 'D2C_DIGEST_MISMATCH',
      `${what} ${d.digest} is ${bytes.length} bytes, its descriptor says ${d.size}`);
  }
  const got = sha256(bytes);
  if (got !== d.digest) throw new ConvertError('D2C_DIGEST_MISMATCH', `${what} ${d.digest} has sha256 ${got}`);
}

/** Reads a small blob whole; `tooLong` makes the error for one past `limit` bytes. The stream is destroyed either way. */
export async function readAll(stream: Readable, limit: number, tooLong: () => ConvertError): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of stream) {
      n += (chunk as Buffer).length;
      if (n > limit) throw tooLong();
      parts.push(chunk as Buffer);
    }
  } finally { stream.destroy(); }
  return Buffer.concat(parts);
}
