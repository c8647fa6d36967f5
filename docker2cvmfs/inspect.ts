/**
 * `docker2cvmfs inspect IMAGE`: whether an image is thin, what each layer points to, and (with a
 * repository to ask) whether each layer directory is present there. For a thin image the layers
 * are those of its thin.json (ours, DUCC's or the 2017 docker2cvmfs's: thin-image.ts reads all);
 * for an ordinary image they are its own layers, looked up where `convert` would put them. The
 * presence check goes through our CernVM-FS client, so the answer is what a client would see:
 * verified against the repository's signature, at its current revision.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CvmfsError } from '../cvmfs/errors.js';
import { openRepository, type Repository } from '../cvmfs/reader/index.js';
import { hexOf, type ResolvedImage } from './image.js';
import { layerFs } from './layout.js';
import { readThinImage } from './thin-image.js';

export interface RepositoryAccess {
  /** Server base URL (`http://host/cvmfs/<fqrn>`; `@fqrn@` is substituted) */
  readonly url: string;
  readonly fqrn: string;
  readonly publicKeyPem: string;
}

export interface InspectedLayer {
  readonly digest: string;
  readonly size?: number;
  readonly mediaType?: string;
  readonly url?: string;
  readonly fqrn?: string;
  readonly path?: string;
  /** Only when a repository was given and the layer lives in it. */
  readonly present?: boolean;
}

export interface Inspection {
  readonly name: string;
  readonly manifestDigest: string;
  readonly configDigest: string;
  readonly platform: string;
  readonly thin: boolean;
  readonly thinFile?: string;
  readonly origin?: string;
  /** Files in the recorded access list of a thin image (convert --record). */
  readonly prefetchFiles?: number;
  readonly source?: { readonly name?: string; readonly digest?: string };
  readonly layers: readonly InspectedLayer[];
  readonly repository?: { readonly fqrn: string; readonly revision: number };
}

async function withRepository<T>(access: RepositoryAccess, fn: (r: Repository) => Promise<T>): Promise<T> {
  const cacheDir = await fs.mkdtemp(path.join(os.tmpdir(), 'docker2cvmfs-inspect-'));
  try {
    const repo = await openRepository({
      fqrn: access.fqrn, servers: [access.url], publicKeys: [{ name: `${access.fqrn}.pub`, pem: access.publicKeyPem }], cacheDir,
    });
    try { return await fn(repo); } finally { await repo.close(); }
  } finally { await fs.rm(cacheDir, { recursive: true, force: true }); }
}

async function isDirectory(r: Repository, p: string): Promise<boolean> {
  try {
    const d = await r.stat(p);
    return (d.mode & 0o170000) === 0o040000;
  } catch (err) {
    if (err instanceof CvmfsError && err.code === 'CVMFS_PATH_NOT_FOUND') return false;
    throw err;
  }
}

export async function inspectImage(image: ResolvedImage, access?: RepositoryAccess): Promise<Inspection> {
  const thin = await readThinImage(image, { defaultRepository: access?.fqrn });
  const c = image.config;
  const labels = (c.config?.['Labels'] ?? {}) as Record<string, unknown>;
  const base = {
    name: image.name, manifestDigest: image.manifestDigest, configDigest: image.manifest.config.digest,
    platform: [c.os, c.architecture, c.variant].filter(Boolean).join('/'),
  };
  let layers: InspectedLayer[];
  let extra: Partial<Inspection> = {};
  if (thin.thin) {
    layers = thin.descriptor.layers.map((l) => ({ digest: `sha256:${l.digest}`, url: l.url, fqrn: l.location?.fqrn, path: l.location?.path }));
    extra = {
      thinFile: thin.file, origin: thin.descriptor.origin, prefetchFiles: thin.descriptor.prefetchFiles,
      source: { name: typeof labels['org.cernvm.thin.source'] === 'string' ? labels['org.cernvm.thin.source'] as string : undefined,
        digest: typeof labels['org.cernvm.thin.source-digest'] === 'string' ? labels['org.cernvm.thin.source-digest'] as string : undefined },
    };
  } else {
    layers = image.manifest.layers.map((l) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType, fqrn: access?.fqrn, path: layerFs(hexOf(l.digest)) }));
  }
  if (access === undefined) return { ...base, thin: thin.thin, ...extra, layers };
  return withRepository(access, async (r) => {
    const checked: InspectedLayer[] = [];
    for (const l of layers) {
      checked.push(l.fqrn === access.fqrn && l.path !== undefined ? { ...l, present: await isDirectory(r, l.path) } : l);
    }
    return { ...base, thin: thin.thin, ...extra, layers: checked, repository: { fqrn: access.fqrn, revision: r.revision } };
  });
}
