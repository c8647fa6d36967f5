/**
 * Where the converter writes in the repository: the DUCC layout (thin-images-and-layout.md §4.3),
 * so that repositories made by DUCC and by us can be read by either.
 *
 *   /.layers/<xx>/<d>/layerfs               the layer, its own nested catalog
 *   /.layers/<xx>/<d>/.metadata/layers.json  [{id, created, compressed-diff-digest, diff-digest, diff-size}]
 *   /.layers/<xx>/<d>/.metadata/origin.json  {"origin": ["sha256:<config>", …]}
 *   /.metadata/<registry>/<repository>:<tag>/manifest.json   written last: the "converted" marker
 */
import { ConvertError } from './errors.js';
import { hexOf, SHA256_DIGEST } from './image.js';

export const LAYERS_ROOT = '/.layers';
export const METADATA_ROOT = '/.metadata';

function hex(digest: string): string {
  const d = digest.startsWith('sha256:') ? digest : `sha256:${digest}`;
  if (!SHA256_DIGEST.test(d)) throw new ConvertError('D2C_BAD_IMAGE', `"${digest}" is not a sha256 digest`);
  return hexOf(d);
}

export const layerShard = (digest: string): string => `${LAYERS_ROOT}/${hex(digest).slice(0, 2)}`;
export const layerDir = (digest: string): string => `${layerShard(digest)}/${hex(digest)}`;
export const layerFs = (digest: string): string => `${layerDir(digest)}/layerfs`;
export const layerInfoFile = (digest: string): string => `${layerDir(digest)}/.metadata/layers.json`;
export const layerOriginFile = (digest: string): string => `${layerDir(digest)}/.metadata/origin.json`;
export const layerUrl = (fqrn: string, digest: string): string => `cvmfs://${fqrn}${layerFs(digest)}`;

/**
 * The name under /.metadata of one image: `<registry>/<repository>:<tag>` as DUCC writes it, or
 * `<registry>/<repository>@sha256:<hex>` for an image named by digest only. Every component must
 * be a plain name (the reference grammar already allows nothing else; checked again here because
 * the path goes into the repository).
 */
export function imageMetadataFile(registry: string, repository: string, tag: string | undefined, digest: string | undefined): string {
  const last = tag !== undefined ? `:${tag}` : digest !== undefined ? `@${digest}` : ':latest';
  const parts = [...registry.split('/'), ...repository.split('/')];
  parts[parts.length - 1] += last;
  for (const p of parts) {
    if (p === '' || p === '.' || p === '..' || p.includes('\0') || p.startsWith('.')) {
      throw new ConvertError('D2C_BAD_IMAGE', `image name ${registry}/${repository}${last} cannot be a repository path ("${p}")`);
    }
  }
  return `${METADATA_ROOT}/${parts.join('/')}/manifest.json`;
}

/** One record of layers.json (containers/storage layer format, as DUCC writes it). */
export interface LayerInfo {
  readonly id: string;
  readonly created: string;
  readonly 'compressed-diff-digest': string;
  readonly 'diff-digest': string;
  readonly 'diff-size': number;
}

export function layerInfoJson(digest: string, diffId: string, diffSize: number, created: Date): Buffer {
  const info: LayerInfo = {
    id: hexOf(diffId), created: created.toISOString(),
    'compressed-diff-digest': `sha256:${hex(digest)}`, 'diff-digest': `sha256:${hex(diffId)}`, 'diff-size': diffSize,
  };
  return Buffer.from(JSON.stringify([info], null, 2) + '\n');
}

/** origin.json with `configDigest` added (kept sorted, each once); undefined when already listed. */
export function withOrigin(existing: Buffer | undefined, configDigest: string): Buffer | undefined {
  let origins: string[] = [];
  if (existing !== undefined) {
    try {
      const doc = JSON.parse(existing.toString('utf8')) as { origin?: unknown };
      if (Array.isArray(doc.origin)) origins = doc.origin.filter((o): o is string => typeof o === 'string');
    } catch { /* a damaged origin.json is rewritten from what we know */ }
  }
  if (origins.includes(configDigest)) return undefined;
  origins = [...new Set([...origins, configDigest])].sort();
  return Buffer.from(JSON.stringify({ origin: origins }, null, 2) + '\n');
}
