/**
 * The image model shared by every source (registry, docker-archive, OCI layout) and output:
 * OCI / Docker v2 descriptors, manifests, indexes and configs, and the media types we accept.
 */
import type { Readable } from 'node:stream';

export const MEDIA = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerZstd: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
  dockerLayerForeign: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  /** Uncompressed Docker layer: `docker save` (legacy layout) `layer.tar` files. */
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNondist: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNondistGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociLayerNondistZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
} as const;

export type LayerCompression = 'gzip' | 'zstd' | 'none';

/** Compression and foreignness of a layer media type; undefined for one we do not accept. */
export function layerMediaType(mediaType: string): { compression: LayerCompression; foreign: boolean } | undefined {
  switch (mediaType) {
    case MEDIA.dockerLayerGzip: case MEDIA.ociLayerGzip: return { compression: 'gzip', foreign: false };
    case MEDIA.dockerLayerZstd: case MEDIA.ociLayerZstd: return { compression: 'zstd', foreign: false };
    case MEDIA.ociLayer: case MEDIA.dockerLayer: return { compression: 'none', foreign: false };
    case MEDIA.dockerLayerForeign: case MEDIA.ociLayerNondistGzip: return { compression: 'gzip', foreign: true };
    case MEDIA.ociLayerNondistZstd: return { compression: 'zstd', foreign: true };
    case MEDIA.ociLayerNondist: return { compression: 'none', foreign: true };
    default: return undefined;
  }
}

export interface Platform {
  readonly architecture: string;
  readonly os: string;
  readonly variant?: string;
}

export interface Descriptor {
  readonly mediaType: string;
  /** `sha256:<64 hex>` */
  readonly digest: string;
  readonly size: number;
  readonly urls?: readonly string[];
  readonly platform?: Platform;
  readonly annotations?: Readonly<Record<string, string>>;
}

export interface ImageManifest {
  readonly schemaVersion: 2;
  readonly mediaType?: string;
  readonly config: Descriptor;
  readonly layers: readonly Descriptor[];
  readonly annotations?: Readonly<Record<string, string>>;
}

export interface ImageIndex {
  readonly schemaVersion: 2;
  readonly mediaType?: string;
  readonly manifests: readonly Descriptor[];
}

/** The image configuration: kept whole (unknown keys too) when a thin image is made from it. */
export interface ImageConfig {
  readonly architecture?: string;
  readonly os?: string;
  readonly variant?: string;
  readonly created?: string;
  readonly config?: Readonly<Record<string, unknown>>;
  readonly rootfs: { readonly type: string; readonly diff_ids: readonly string[] };
  readonly history?: readonly Readonly<Record<string, unknown>>[];
  readonly [key: string]: unknown;
}

/** One image resolved to a single platform: manifest and config as the bytes that were hashed. */
export interface ResolvedImage {
  /** How a person names it: `registry/repository:tag@digest`, `docker-archive:FILE`, … */
  readonly name: string;
  readonly manifest: ImageManifest;
  readonly manifestBytes: Buffer;
  /** sha256 of manifestBytes, `sha256:…` */
  readonly manifestDigest: string;
  readonly config: ImageConfig;
  readonly configBytes: Buffer;
  /** Where the blobs come from. */
  readonly source: BlobSource;
}

export interface BlobSource {
  /** The raw blob, not verified: the caller hashes it. `signal` aborts the transfer. */
  openBlob(d: Descriptor, signal?: AbortSignal): Promise<Readable>;
}

export const SHA256_DIGEST = /^sha256:[0-9a-f]{64}$/;
export const hexOf = (digest: string): string => digest.replace(/^sha256:/, '');
