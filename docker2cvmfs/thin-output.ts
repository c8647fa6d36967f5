/**
 * Where a made thin image goes: a registry (`--push`, blob uploads and a manifest PUT through the
 * registry client), the local dockerd (`--load`, its /images/load API) or a `docker load`-able
 * archive (`-o FILE`).
 */
import { PassThrough, Readable } from 'node:stream';
import { MEDIA } from './image.js';
import { writeDockerArchive } from './outputs/archive.js';
import { loadIntoDocker } from './outputs/docker-load.js';
import { formatReference, type ImageReference } from './reference.js';
import type { RegistryClient } from './registry/index.js';
import type { ThinImage } from './thin-image.js';

/** Pushes the thin image; returns its manifest digest. */
export async function pushThinImage(client: RegistryClient, ref: ImageReference, thin: ThinImage): Promise<string> {
  await client.pushBlob(ref, thin.layer.descriptor, () => Readable.from([thin.layer.gzip]));
  await client.pushBlob(ref, thin.config.descriptor, () => Readable.from([thin.config.bytes]));
  return client.pushManifest(ref, thin.manifest.bytes, MEDIA.dockerManifest);
}

const archiveImages = (name: string, thin: ThinImage) => [{ repoTags: [name], config: thin.config.bytes, layers: [{ diffId: thin.layer.diffId, tar: thin.layer.tar }] }];

/** Docker's name for a RepoTag: familiar form (`busybox:latest`, `localhost:5000/x:t`). */
export const repoTagOf = (ref: ImageReference): string => formatReference({ ...ref, scheme: undefined, digest: undefined }, { familiar: true });

export async function writeThinArchive(file: string, ref: ImageReference, thin: ThinImage): Promise<void> {
  await writeDockerArchive(file, archiveImages(repoTagOf(ref), thin));
}

export async function loadThinImage(ref: ImageReference, thin: ThinImage, dockerHost?: string): Promise<string[]> {
  const pipe = new PassThrough();
  const written = writeDockerArchive(pipe, archiveImages(repoTagOf(ref), thin));
  const [loaded] = await Promise.all([loadIntoDocker(pipe, dockerHost ? { dockerHost } : {}), written]);
  return loaded;
}
