/**
 * IMAGE arguments: a registry reference (reference.ts grammar), `docker-archive:FILE[:REF]` (a
 * `docker save` tar) or `oci:DIR[:REF]` (an OCI image layout), as skopeo names them. Opening one
 * gives the resolved image, the repository path of its `.metadata` marker, and the variables a
 * thin-image name format may use.
 */
import fs from 'node:fs';
import { ConvertError } from './errors.js';
import { hexOf, type Platform, type ResolvedImage } from './image.js';
import { imageMetadataFile } from './layout.js';
import type { OutputVars } from './recipe.js';
import { DOCKER_HUB, parseReference, type ImageReference } from './reference.js';
import type { RegistryClient } from './registry/index.js';
import { openDockerArchive } from './sources/docker-archive.js';
import { openOciLayout } from './sources/oci-layout.js';

export type ImageArg =
  | { readonly kind: 'registry'; readonly text: string; readonly ref: ImageReference }
  | { readonly kind: 'docker-archive' | 'oci'; readonly text: string; readonly path: string; readonly ref?: string };

/** `PATH` if it exists as given, else `PATH:REF` split at the last colon (skopeo's rule). */
function pathAndRef(rest: string): { path: string; ref?: string } {
  if (rest === '') throw new ConvertError('D2C_USAGE', 'an image path is missing after the transport name');
  if (fs.existsSync(rest)) return { path: rest };
  const i = rest.lastIndexOf(':');
  if (i > 0 && !rest.slice(i + 1).includes('/')) return { path: rest.slice(0, i), ref: rest.slice(i + 1) };
  return { path: rest };
}

export function parseImageArg(text: string): ImageArg {
  for (const kind of ['docker-archive', 'oci'] as const) {
    if (text.startsWith(`${kind}:`)) return { kind, text, ...pathAndRef(text.slice(kind.length + 1)) };
  }
  return { kind: 'registry', text, ref: parseReference(text) };
}

export interface OpenedImage {
  readonly arg: ImageArg;
  readonly image: ResolvedImage;
  readonly metadataFile: string;
  readonly vars: OutputVars;
}

export interface OpenContext {
  readonly registry: RegistryClient;
  readonly platform: Platform;
  readonly allowForeign?: boolean;
}

function localVars(tag: string | undefined, configDigest: string): { metadataFile: string; vars: OutputVars } {
  if (tag === undefined) {
    const repository = `by-config/${hexOf(configDigest).slice(0, 12)}`;
    return { metadataFile: imageMetadataFile('local', 'by-config', undefined, configDigest), vars: { scheme: 'https', registry: 'local', repository, tag: 'latest' } };
  }
  const r = parseReference(tag);
  const registry = r.registry === DOCKER_HUB ? 'local' : `local/${r.registry}`;
  return { metadataFile: imageMetadataFile(registry, r.repository, r.tag, r.digest), vars: { scheme: 'https', registry: r.registry, repository: r.repository, tag: r.tag, digest: r.digest } };
}

export async function openImage(arg: ImageArg, ctx: OpenContext): Promise<OpenedImage> {
  if (arg.kind === 'registry') {
    const image = await ctx.registry.resolve(arg.ref, ctx.platform, { foreignUrls: ctx.allowForeign ?? false });
    const r = arg.ref;
    return {
      arg, image,
      metadataFile: imageMetadataFile(r.registry, r.repository, r.tag, r.tag === undefined ? r.digest : undefined),
      vars: { scheme: r.scheme ?? 'https', registry: r.registry, repository: r.repository, tag: r.tag, digest: r.digest ?? image.manifestDigest },
    };
  }
  const image = arg.kind === 'oci'
    ? await openOciLayout(arg.path, { ref: arg.ref, platform: ctx.platform })
    : await openDockerArchive(arg.path, { ref: arg.ref, platform: ctx.platform });
  // Without REF, a single-image archive names the RepoTag it chose in image.name.
  const prefix = `${arg.kind}:${arg.path}:`;
  const tag = arg.ref ?? (image.name.startsWith(prefix) ? image.name.slice(prefix.length) : undefined);
  return { arg, image, ...localVars(tag, image.manifest.config.digest) };
}
