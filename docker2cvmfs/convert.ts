/**
 * Image → repository: every layer of every image into the DUCC layout (layout.ts), each layer its
 * own nested catalog, all of a run in ONE new revision (R32). Per layer: the blob streams through
 * layer-stream.ts, which checks it against its digest and the uncompressed tar against the
 * config's diffID while the writer ingests it (R25); a layer already in the repository (its
 * layerfs and layers.json present) is reused. Then per layer its layers.json and origin.json,
 * and per image its manifest.json, last. Any failure throws before the manifest of the new
 * revision is written: the repository stays at its previous revision (R20).
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CvmfsError } from '../cvmfs/errors.js';
import { transaction, type Clock, type RepositoryStorage, type Transaction } from '../cvmfs/writer/index.js';
import { ConvertError, isConvertError } from './errors.js';
import { hexOf, layerMediaType, type Descriptor, type ResolvedImage } from './image.js';
import { verifiedLayer } from './layer-stream.js';
import {
  imageMetadataFile, layerFs, layerInfoFile, layerInfoJson, layerOriginFile, layerShard, layerUrl, LAYERS_ROOT, withOrigin,
} from './layout.js';
import { isTransient, Prefetcher } from './prefetch.js';

export interface ConvertJob {
  readonly image: ResolvedImage;
  /** Repository path of the image's manifest.json marker (layout.ts imageMetadataFile). */
  readonly metadataFile: string;
}

export type ConvertEvent =
  | { readonly type: 'image'; readonly name: string; readonly layers: number; readonly newLayers: number }
  | { readonly type: 'layer-start'; readonly digest: string; readonly size: number }
  | { readonly type: 'layer-progress'; readonly digest: string; readonly bytes: number }
  | { readonly type: 'layer-retry'; readonly digest: string; readonly attempt: number; readonly reason: string }
  | { readonly type: 'layer-done'; readonly digest: string; readonly status: 'new' | 'reused'; readonly bytes: number; readonly seconds: number }
  | { readonly type: 'publish'; readonly revision: number; readonly published: boolean }
  | { readonly type: 'warning'; readonly message: string };

export interface ConvertOptions {
  readonly storage: RepositoryStorage;
  readonly keysDir: string;
  readonly clock?: Clock;
  readonly threads?: number;
  /** Fetch foreign / non-distributable layers from their URLs instead of failing the image (R31). */
  readonly allowForeign?: boolean;
  /** Layers downloading while one is ingested (default 3). */
  readonly parallel?: number;
  /** Ingest layers again even when present. */
  readonly force?: boolean;
  /** Where downloads ahead of the ingest wait (a private temporary directory is made inside). */
  readonly tmpDir?: string;
  readonly onEvent?: (e: ConvertEvent) => void;
  /** Runs inside the same transaction after the images are in (sync's garbage collection). */
  readonly afterConvert?: (tx: Transaction, images: readonly ImageOutcome[]) => Promise<void>;
}

export interface LayerOutcome {
  readonly digest: string;
  readonly diffId: string;
  readonly status: 'new' | 'reused';
  readonly compressedBytes: number;
  readonly uncompressedBytes: number;
  readonly seconds: number;
}

export interface ImageOutcome {
  readonly name: string;
  readonly manifestDigest: string;
  readonly configDigest: string;
  /** unchanged: manifest marker, layers and origins were all in place already. */
  readonly status: 'converted' | 'unchanged';
  readonly layers: readonly LayerOutcome[];
  /** Base first, as thin.json lists them. */
  readonly thinLayers: readonly { readonly digest: string; readonly url: string }[];
}

export interface ConvertSummary {
  readonly fqrn: string;
  readonly revision: number;
  readonly published: boolean;
  readonly images: readonly ImageOutcome[];
  readonly newLayers: number;
  readonly reusedLayers: number;
  /** Compressed bytes read from sources for new layers. */
  readonly bytesRead: number;
  /** Uncompressed bytes ingested. */
  readonly bytesIngested: number;
  readonly seconds: number;
}

/** Checks what can be checked before any byte is downloaded. */
export function checkImage(image: ResolvedImage, allowForeign: boolean): void {
  const diffIds = image.config.rootfs?.diff_ids;
  if (!Array.isArray(diffIds)) throw new ConvertError('D2C_BAD_IMAGE', `${image.name}: the image config has no rootfs.diff_ids`);
  if (diffIds.length !== image.manifest.layers.length) {
    throw new ConvertError('D2C_BAD_IMAGE',
      `${image.name}: the manifest lists ${image.manifest.layers.length} layers but the config ${diffIds.length} diff_ids`);
  }
  image.manifest.layers.forEach((l, i) => {
    const mt = layerMediaType(l.mediaType);
    if (mt === undefined) {
      throw new ConvertError('D2C_UNSUPPORTED_MEDIA_TYPE', `${image.name}: layer ${i + 1} (${l.digest}) has media type ${l.mediaType}, which is not a layer type this tool reads (gzip, zstd or plain tar)`);
    }
    if (mt.foreign && !allowForeign) {
      throw new ConvertError('D2C_FOREIGN_LAYER', `${image.name}: layer ${i + 1} (${l.digest}) is a foreign (non-distributable) layer${l.urls?.length ? ` served from ${l.urls.join(', ')}` : ' without URLs'}; pass --allow-foreign to fetch and convert it`);
    }
    if (!/^sha256:[0-9a-f]{64}$/.test(String(diffIds[i]))) throw new ConvertError('D2C_BAD_IMAGE', `${image.name}: diff_id ${i + 1} "${String(diffIds[i])}" is not a sha256 digest`);
  });
}

interface PlannedLayer {
  readonly descriptor: Descriptor;
  readonly diffId: string;
  readonly image: ResolvedImage;
  /** The layers below it in its image, nearest first: where a hardlink into a lower layer points (R27). */
  readonly lower: readonly string[];
}

/**
 * R27: a hardlink whose target is in a lower layer becomes a copy of the nearest lower layer's
 * file of that name (the objects are shared: content-addressed); with none, the entry is left out
 * with a warning. Never aborts the image.
 */
function hardlinkResolver(p: PlannedLayer, o: ConvertOptions) {
  return async (name: string, target: string, read: (path: string) => Promise<Buffer | undefined>): Promise<Buffer | undefined> => {
    for (const d of p.lower) {
      const bytes = await read(`${layerFs(d)}/${target}`).catch(() => undefined);
      if (bytes !== undefined) {
        o.onEvent?.({ type: 'warning', message: `layer ${p.descriptor.digest}: hardlink ${name} points to ${target} of the lower layer ${d}: stored as a copy` });
        return bytes;
      }
    }
    o.onEvent?.({ type: 'warning', message: `layer ${p.descriptor.digest}: hardlink ${name} points to ${target}, found in no lower layer: left out` });
    return undefined;
  };
}

async function storedDiffId(tx: Transaction, digest: string): Promise<string | undefined> {
  const fsEntry = await tx.lookup(layerFs(digest));
  if (fsEntry === undefined) return undefined;
  const info = await tx.readFile(layerInfoFile(digest)).catch(() => undefined);
  if (info === undefined) return undefined;
  try {
    const doc = JSON.parse(info.toString('utf8')) as { 'diff-digest'?: unknown }[];
    const d = Array.isArray(doc) ? doc[0]?.['diff-digest'] : undefined;
    return typeof d === 'string' ? d : undefined;
  } catch { return undefined; }
}

function repositoryError(err: unknown): unknown {
  if (err instanceof CvmfsError) {
    const code = err.code.startsWith('CVMFS_TAR_') ? 'D2C_BAD_IMAGE' : 'D2C_REPOSITORY_ERROR';
    return new ConvertError(code, err.message, { cause: err });
  }
  return err;
}

async function ingestLayer(tx: Transaction, p: PlannedLayer, prefetch: Prefetcher, index: number, o: ConvertOptions)
  : Promise<{ compressedBytes: number; uncompressedBytes: number }> {
  const d = p.descriptor.digest;
  for (let attempt = 1; ; attempt++) {
    const blob = await prefetch.take(index);
    const { tar, done } = verifiedLayer(blob, p.descriptor, p.diffId, {
      onProgress: (bytes) => o.onEvent?.({ type: 'layer-progress', digest: d, bytes }),
    });
    let verifyError: unknown;
    done.catch((e: unknown) => { verifyError = e; });
    try {
      await tx.ingest(layerFs(d), tar, { missingHardlink: hardlinkResolver(p, o) });
      return await done;
    } catch (err) {
      blob.destroy();
      tar.destroy();
      await Promise.race([done.catch(() => {}), new Promise((r) => setTimeout(r, 200))]);
      const cause = verifyError ?? repositoryError(err);
      if (!isTransient(cause) || attempt >= 3) throw cause;
      o.onEvent?.({ type: 'layer-retry', digest: d, attempt, reason: (cause as Error).message });
      await new Promise((r) => setTimeout(r, 500 * attempt));
    }
  }
}

export async function convertImages(jobs: readonly ConvertJob[], o: ConvertOptions): Promise<ConvertSummary> {
  const started = Date.now();
  for (const j of jobs) checkImage(j.image, o.allowForeign ?? false);
  const spoolDir = await fs.mkdtemp(path.join(o.tmpDir ?? os.tmpdir(), 'docker2cvmfs-'));
  const now = () => (o.clock ?? { now: () => new Date() }).now();
  let bytesRead = 0, bytesIngested = 0;
  try {
    const result = await transaction({ storage: o.storage, keysDir: o.keysDir, clock: o.clock, threads: o.threads, what: 'docker2cvmfs convert' }, async (tx) => {
      // Which layers are new: each distinct digest once, in image order (base layers first).
      const outcomes = new Map<string, LayerOutcome>();
      const planned: PlannedLayer[] = [];
      const seen = new Set<string>();
      for (const j of jobs) {
        const { layers } = j.image.manifest;
        let fresh = 0;
        for (const [i, l] of layers.entries()) {
          const diffId = j.image.config.rootfs.diff_ids[i]!;
          if (seen.has(l.digest)) continue;
          seen.add(l.digest);
          const stored = o.force ? undefined : await storedDiffId(tx, l.digest);
          if (stored !== undefined && stored !== diffId) {
            throw new ConvertError('D2C_DIFFID_MISMATCH', `${j.image.name}: layer ${l.digest} is in the repository with diff_id ${stored}, but the image config says ${diffId}`);
          }
          if (stored !== undefined) {
            outcomes.set(l.digest, { digest: l.digest, diffId, status: 'reused', compressedBytes: 0, uncompressedBytes: 0, seconds: 0 });
            o.onEvent?.({ type: 'layer-done', digest: l.digest, status: 'reused', bytes: 0, seconds: 0 });
          } else {
            planned.push({ descriptor: l, diffId, image: j.image, lower: layers.slice(0, i).map((x) => x.digest).reverse() });
            fresh++;
          }
        }
        o.onEvent?.({ type: 'image', name: j.image.name, layers: layers.length, newLayers: fresh });
      }

      if (planned.length) {
        await tx.ensureCatalog(LAYERS_ROOT);
        for (const shard of new Set(planned.map((p) => layerShard(p.descriptor.digest)))) await tx.ensureCatalog(shard);
      }
      const prefetch = new Prefetcher(planned.map((p) => ({ descriptor: p.descriptor, source: p.image.source })), spoolDir, o.parallel ?? 3);
      try {
        for (const [i, p] of planned.entries()) {
          const t0 = Date.now();
          o.onEvent?.({ type: 'layer-start', digest: p.descriptor.digest, size: p.descriptor.size });
          const r = await ingestLayer(tx, p, prefetch, i, o);
          await tx.writeFile(layerInfoFile(p.descriptor.digest), layerInfoJson(p.descriptor.digest, p.diffId, r.uncompressedBytes, now()));
          bytesRead += r.compressedBytes;
          bytesIngested += r.uncompressedBytes;
          const seconds = (Date.now() - t0) / 1000;
          outcomes.set(p.descriptor.digest, { digest: p.descriptor.digest, diffId: p.diffId, status: 'new', ...r, seconds });
          o.onEvent?.({ type: 'layer-done', digest: p.descriptor.digest, status: 'new', bytes: r.compressedBytes, seconds });
        }
      } finally {
        await prefetch.close();
      }

      const images: ImageOutcome[] = [];
      for (const j of jobs) {
        const configDigest = j.image.manifest.config.digest;
        let changed = false;
        for (const l of j.image.manifest.layers) {
          const origin = withOrigin(await tx.readFile(layerOriginFile(l.digest)).catch(() => undefined), configDigest);
          if (origin) { await tx.writeFile(layerOriginFile(l.digest), origin); changed = true; }
          if (outcomes.get(l.digest)?.status === 'new') changed = true;
        }
        const marker = await tx.readFile(j.metadataFile).catch(() => undefined);
        if (marker === undefined || !marker.equals(j.image.manifestBytes)) {
          await tx.writeFile(j.metadataFile, j.image.manifestBytes);
          changed = true;
        }
        images.push({
          name: j.image.name, manifestDigest: j.image.manifestDigest, configDigest, status: changed ? 'converted' : 'unchanged',
          layers: j.image.manifest.layers.map((l) => outcomes.get(l.digest)!),
          thinLayers: j.image.manifest.layers.map((l) => ({ digest: hexOf(l.digest), url: layerUrl(tx.fqrn, l.digest) })),
        });
      }
      await o.afterConvert?.(tx, images);
      return { fqrn: tx.fqrn, images, newLayers: planned.length, reusedLayers: seen.size - planned.length };
    }).catch((err: unknown) => { throw isConvertError(err) ? err : repositoryError(err); });
    o.onEvent?.({ type: 'publish', revision: result.revision, published: result.published });
    return { ...result.value, revision: result.revision, published: result.published, bytesRead, bytesIngested, seconds: (Date.now() - started) / 1000 };
  } finally {
    await fs.rm(spoolDir, { recursive: true, force: true });
  }
}

export { imageMetadataFile };
