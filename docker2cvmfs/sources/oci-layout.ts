/**
 * Image source: an OCI image layout directory (OCI image-spec `image-layout.md`): `oci-layout`,
 * `index.json`, `blobs/<alg>/<hex>`. The index is walked down to one image manifest (by the
 * `org.opencontainers.image.ref.name` annotation, then by platform through nested indexes);
 * manifests and the config are verified against their digests before they are parsed. Layer
 * blobs are served raw: the caller verifies them (layer-stream.ts).
 * Parsing is manifest.ts's, platform choice platform.ts's.
 *
 * Also exports the pieces docker-archive.ts shares: the index walk over any `BlobReader`.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { ConvertError } from '../errors.js';
import { SHA256_DIGEST, hexOf, type BlobSource, type Descriptor, type Platform, type ResolvedImage } from '../image.js';
import { MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, checkDigest, checkIndexDepth, isIndexType, isManifestType, parseConfig,
  parseDescribed, parseIndex, parseJson, readAll, type ParsedManifest } from '../manifest.js';
import { hostPlatform, isAttestationEntry, selectManifest } from '../platform.js';

export const REF_NAME = 'org.opencontainers.image.ref.name';
const CONTAINERD_NAME = 'io.containerd.image.name';
const SUPPORTED_LAYOUT = /^1\.\d+\.\d+$/;
/** The `oci-layout` file holds one short JSON object. */
export const MAX_LAYOUT_FILE_BYTES = 64 * 1024;

/** D2C_BAD_IMAGE unless the `oci-layout` file's bytes name a layout version we read (1.x.y). */
export function checkLayoutFile(bytes: Buffer, what: string): void {
  const layout = parseJson(bytes, `${what}: oci-layout`);
  if (typeof layout['imageLayoutVersion'] !== 'string' || !SUPPORTED_LAYOUT.test(layout['imageLayoutVersion'])) {
    throw bad(`${what}: oci-layout has imageLayoutVersion ${JSON.stringify(layout['imageLayoutVersion'])}, supported: 1.x.y`);
  }
}

const bad = (why: string): ConvertError => new ConvertError('D2C_BAD_IMAGE', why);

// ---- the index walk, over any store of blobs --------------------------------------------------

/** Reads small blobs (manifests, indexes, configs) whole; at most `limit` bytes or it fails. */
export interface BlobReader extends BlobSource {
  readSmall(d: Descriptor, limit: number, what: string): Promise<Buffer>;
}

/** A verified manifest and config: a ResolvedImage before it is named and given its blob source. */
export type ChosenImage = Omit<ResolvedImage, 'name' | 'source'>;

/** Reads `d` (a manifest or an index), verifies it against `d` and parses it as the kind `d` says. */
export async function readDescribed(store: BlobReader, d: Descriptor, what: string): Promise<{ bytes: Buffer; parsed: ParsedManifest }> {
  const kind = isIndexType(d.mediaType) ? 'index' : 'manifest';
  const bytes = await store.readSmall(d, MAX_MANIFEST_BYTES, `${what} ${kind}`);
  checkDigest(bytes, d, `${what} ${kind}`);
  return { bytes, parsed: parseDescribed(bytes, d, `${what} ${kind} ${d.digest}`) };
}

/** Loads and verifies the manifest `d` and its config. */
export async function loadImage(store: BlobReader, d: Descriptor, what: string): Promise<ChosenImage> {
  const { bytes: manifestBytes, parsed } = await readDescribed(store, d, what);
  if (parsed.kind !== 'manifest') throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `${what}: ${d.digest} is an index, not an image manifest`);
  const manifest = parsed.manifest;
  const configBytes = await store.readSmall(manifest.config, MAX_CONFIG_BYTES, `${what} config`);
  checkDigest(configBytes, manifest.config, `${what} config`);
  const config = parseConfig(configBytes, `${what} config ${manifest.config.digest}`, manifest.layers.length);
  return { manifest, manifestBytes, manifestDigest: d.digest, config, configBytes };
}

/**
 * From descriptors of one index level down to one image manifest. At the top (`depth` 0, the
 * entries of index.json that resolveTop kept) a single image is that image whatever its platform,
 * as a tag naming a manifest is; otherwise platform.ts's selectManifest chooses. A chosen index
 * is read, verified and walked the same way.
 */
export async function chooseManifest(store: BlobReader, candidates: readonly Descriptor[], platform: Platform, what: string, depth = 0): Promise<Descriptor> {
  const images = candidates.filter((d) => !isAttestationEntry(d));
  const pick = depth === 0 && images.length === 1 ? images[0]! : selectManifest(candidates, platform, what);
  if (isIndexType(pick.mediaType)) {
    // index.json is the first index of the chain; this one is number depth + 2.
    checkIndexDepth(depth + 2, what);
    const { parsed } = await readDescribed(store, pick, what);
    if (parsed.kind !== 'index') throw new ConvertError('D2C_INTERNAL', `${what}: ${pick.digest} parsed as a manifest`);
    return chooseManifest(store, parsed.index.manifests, platform, what, depth + 1);
  }
  if (!isManifestType(pick.mediaType)) {
    throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `${what}: ${pick.digest} has media type ${pick.mediaType}, not an image manifest or index`);
  }
  return pick;
}

/** The name a descriptor in a top-level index.json goes by, if any. */
export const refNameOf = (d: Descriptor): string | undefined => d.annotations?.[REF_NAME] ?? d.annotations?.[CONTAINERD_NAME];

/** Top-level descriptors named `ref` (by ref.name, or by the full containerd image name). */
export function byRef(manifests: readonly Descriptor[], ref: string): Descriptor[] {
  return manifests.filter((d) => d.annotations?.[REF_NAME] === ref || d.annotations?.[CONTAINERD_NAME] === ref);
}

// ---- the layout directory --------------------------------------------------------------------

/** Blobs under `<dir>/blobs/sha256/<hex>` only: no symlink anywhere below `dir`, regular files only. */
class LayoutBlobs implements BlobReader {
  constructor(private readonly dir: string) {}

  private async checkDirs(): Promise<void> {
    for (const p of ['blobs', 'blobs/sha256']) {
      let st: fs.Stats;
      try { st = await fs.promises.lstat(path.join(this.dir, p)); } catch (err) {
        throw new ConvertError('D2C_BAD_IMAGE', `OCI layout ${this.dir}: ${p}/ is missing`, { cause: err });
      }
      if (!st.isDirectory()) throw bad(`OCI layout ${this.dir}: ${p} is not a directory (symlinks are refused)`);
    }
  }

  async openBlob(d: Descriptor): Promise<Readable> {
    if (!SHA256_DIGEST.test(d.digest)) throw bad(`OCI layout ${this.dir}: blob digest ${d.digest} is not sha256:<64 hex>`);
    await this.checkDirs();
    const file = path.join(this.dir, 'blobs', 'sha256', hexOf(d.digest));
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP') throw new ConvertError('D2C_BAD_IMAGE', `OCI layout ${this.dir}: blob ${d.digest} is a symlink`, { cause: err });
      if (code === 'ENOENT') {
        throw new ConvertError('D2C_BAD_IMAGE', `OCI layout ${this.dir}: blob ${d.digest} is missing`
          + (d.urls?.length ? ' (a foreign layer: fetch it from its urls first)' : ''), { cause: err });
      }
      throw new ConvertError('D2C_IO_FAILED', `OCI layout ${this.dir}: cannot open blob ${d.digest} (${(err as Error).message})`, { cause: err });
    }
    const st = await fh.stat();
    if (!st.isFile()) { await fh.close(); throw bad(`OCI layout ${this.dir}: blob ${d.digest} is not a regular file`); }
    return fh.createReadStream();
  }

  async readSmall(d: Descriptor, limit: number, what: string): Promise<Buffer> {
    if (d.size > limit) throw bad(`${what} ${d.digest} declares ${d.size} bytes, more than the ${limit} we read`);
    return readAll(await this.openBlob(d), d.size,
      () => new ConvertError('D2C_DIGEST_MISMATCH', `${what} ${d.digest} is longer than its descriptor's ${d.size} bytes`));
  }
}

async function readSmallFile(file: string, limit: number, what: string): Promise<Buffer> {
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConvertError(code === 'ENOENT' || code === 'ELOOP' ? 'D2C_BAD_IMAGE' : 'D2C_IO_FAILED',
      `${what}: ${code === 'ELOOP' ? 'is a symlink' : (err as Error).message}`, { cause: err });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw bad(`${what} is not a regular file`);
    if (st.size > limit) throw bad(`${what} is larger than ${limit} bytes`);
    return await fh.readFile();
  } finally { await fh.close(); }
}

export interface OciLayoutOptions {
  /** The `org.opencontainers.image.ref.name` annotation (e.g. a tag) of the image to open. */
  readonly ref?: string;
  /** For an index: the platform to pick (default: this host's). */
  readonly platform?: Platform;
}

export async function openOciLayout(dir: string, opts: OciLayoutOptions = {}): Promise<ResolvedImage> {
  const what = `OCI layout ${dir}`;
  checkLayoutFile(await readSmallFile(path.join(dir, 'oci-layout'), MAX_LAYOUT_FILE_BYTES, `${what}: oci-layout`), what);
  const index = parseIndex(await readSmallFile(path.join(dir, 'index.json'), MAX_MANIFEST_BYTES, `${what}: index.json`), `${what}: index.json`);
  const store = new LayoutBlobs(dir);
  const top = resolveTop(index.manifests, opts.ref, what);
  const d = await chooseManifest(store, top, opts.platform ?? hostPlatform(), what);
  const image = await loadImage(store, d, what);
  return { name: `oci:${dir}${opts.ref ? `:${opts.ref}` : ''}`, ...image, source: store };
}

/** Top-level candidates: those named `ref`, or all when no ref is given and they are one image. */
export function resolveTop(manifests: readonly Descriptor[], ref: string | undefined, what: string): Descriptor[] {
  const names = [...new Set(manifests.map(refNameOf).filter((n): n is string => n !== undefined))];
  if (ref !== undefined) {
    const found = byRef(manifests, ref);
    if (found.length === 0) {
      throw new ConvertError('D2C_IMAGE_NOT_FOUND', `${what}: no image named ${JSON.stringify(ref)} (named: ${names.join(', ') || 'none'})`);
    }
    return found;
  }
  const images = manifests.filter((d) => !isAttestationEntry(d));
  // Several top-level entries are one image only if they are its platform variants.
  if (images.length > 1 && !images.every((d) => d.platform !== undefined && refNameOf(d) === refNameOf(images[0]!))) {
    throw new ConvertError('D2C_USAGE', `${what} holds ${images.length} images: choose one by ref (named: ${names.join(', ') || 'none'})`);
  }
  if (images.length === 0) throw new ConvertError('D2C_IMAGE_NOT_FOUND', `${what}: index.json lists no image`);
  return images;
}
