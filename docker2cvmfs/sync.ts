/**
 * `docker2cvmfs sync RECIPE`: DUCC's wish list (recipe.ts) made true. Inputs are expanded (tag
 * wildcards through tags/list), resolved, and converted in one transaction: what is new or whose
 * tag moved is ingested, the rest is left as it is. Thin images are pushed for images converted
 * now and for those whose thin image is missing or names another source digest at the output
 * name. With `gc`, image markers the recipe no longer produces and the layers no kept image uses
 * (older than the grace period) are removed in the same revision. A dry run resolves and plans,
 * and changes neither the repository nor any registry.
 */
import type { Clock, RepositoryStorage } from '../cvmfs/writer/index.js';
import { transaction } from '../cvmfs/writer/index.js';
import { convertImages, type ConvertEvent, type ConvertSummary, type ImageOutcome } from './convert.js';
import { ConvertError, isConvertError } from './errors.js';
import { applyGc, planGc, type GcPlan } from './gc.js';
import type { Platform } from './image.js';
import { openImage, type OpenedImage } from './images.js';
import { layerFs } from './layout.js';
import { expandWildcard, outputName, type Recipe } from './recipe.js';
import { formatReference, parseReference } from './reference.js';
import type { RegistryClient } from './registry/index.js';
import { buildThinImage, LABEL_SOURCE_DIGEST, makeThinJson } from './thin-image.js';
import { pushThinImage } from './thin-output.js';

export interface SyncOptions {
  readonly recipe: Recipe;
  readonly storage: RepositoryStorage;
  readonly keysDir: string;
  readonly registry: RegistryClient;
  readonly platform: Platform;
  readonly thin: boolean;
  readonly gc?: { readonly graceSeconds: number };
  readonly dryRun: boolean;
  readonly parallel?: number;
  readonly allowForeign?: boolean;
  readonly clock?: Clock;
  readonly onEvent?: (e: ConvertEvent) => void;
  readonly log?: (line: string) => void;
}

export interface SyncSummary {
  readonly images: readonly { readonly name: string; readonly status: 'converted' | 'unchanged' | 'would convert'; readonly thin?: string; readonly thinStatus?: 'pushed' | 'present' | 'would push' }[];
  readonly convert?: ConvertSummary;
  readonly gc?: GcPlan;
  readonly revision: number;
  readonly published: boolean;
  readonly dryRun: boolean;
  /** Nothing was converted, pushed or removed. */
  readonly unchanged: boolean;
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) { const i = next++; out[i] = await fn(items[i]!); }
  }));
  return out;
}

/** Every image the recipe names now: wildcards expanded against the registry's tags. */
async function expandInputs(o: SyncOptions): Promise<string[]> {
  const names: string[] = [];
  for (const input of o.recipe.inputs) {
    const scheme = input.scheme === 'http' ? 'http://' : '';
    const base = `${scheme}${input.registry}/${input.repository}`;
    if (!input.wildcard) { names.push(input.text.replace(/^https:\/\//, '')); continue; }
    const tags = await o.registry.listTags(parseReference(`${base}:latest`));
    const matched = expandWildcard(input, tags);
    if (matched.length === 0) o.log?.(`${o.recipe.inputs.length ? `line ${input.line}: ` : ''}${input.text} matches no tag`);
    names.push(...matched.map((t) => `${base}:${t}`));
  }
  return [...new Set(names)];
}

function thinNameOf(o: SyncOptions, img: OpenedImage): string {
  return outputName(o.recipe.outputFormat, img.vars);
}

async function thinPresent(o: SyncOptions, name: string, sourceDigest: string): Promise<boolean> {
  try {
    const ref = parseReference(name);
    const found = await o.registry.resolve(ref, o.platform);
    const labels = (found.config.config?.['Labels'] ?? {}) as Record<string, unknown>;
    return labels[LABEL_SOURCE_DIGEST] === sourceDigest;
  } catch (err) {
    if (isConvertError(err) && (err.code === 'D2C_IMAGE_NOT_FOUND' || err.code === 'D2C_PLATFORM_NOT_FOUND')) return false;
    throw err;
  }
}

export async function sync(o: SyncOptions): Promise<SyncSummary> {
  const names = await expandInputs(o);
  const opened = await mapLimit(names, 4, (n) => openImage({ kind: 'registry', text: n, ref: parseReference(n) },
    { registry: o.registry, platform: o.platform, allowForeign: o.allowForeign ?? false }));
  const keep = new Set(opened.map((i) => i.metadataFile));
  const jobs = opened.map((i) => ({ image: i.image, metadataFile: i.metadataFile }));

  if (o.dryRun) {
    const r = await transaction({ storage: o.storage, keysDir: o.keysDir, clock: o.clock, what: 'docker2cvmfs sync --dry-run' }, async (tx) => {
      const images = [];
      for (const i of opened) {
        const marker = await tx.readFile(i.metadataFile).catch(() => undefined);
        let present = true;
        for (const l of i.image.manifest.layers) if (await tx.lookup(layerFs(l.digest)) === undefined) present = false;
        const converted = marker?.equals(i.image.manifestBytes) === true && present;
        images.push({ name: i.image.name, status: converted ? 'unchanged' as const : 'would convert' as const });
      }
      const gc = o.gc ? await planGc(tx, { now: (o.clock?.now() ?? new Date()), graceSeconds: o.gc.graceSeconds, keep }) : undefined;
      return { images, gc };
    });
    const unchanged = r.value.images.every((i) => i.status === 'unchanged') && (!r.value.gc || (r.value.gc.removeImages.length === 0 && r.value.gc.removeLayers.length === 0));
    return { images: r.value.images, gc: r.value.gc, revision: r.revision, published: false, dryRun: true, unchanged };
  }

  let gcPlan: GcPlan | undefined;
  const summary = await convertImages(jobs, {
    storage: o.storage, keysDir: o.keysDir, clock: o.clock, parallel: o.parallel, allowForeign: o.allowForeign, onEvent: o.onEvent,
    afterConvert: o.gc ? async (tx) => {
      gcPlan = await planGc(tx, { now: o.clock?.now() ?? new Date(), graceSeconds: o.gc!.graceSeconds, keep });
      await applyGc(tx, gcPlan);
    } : undefined,
  });

  const images: { name: string; status: 'converted' | 'unchanged'; thin?: string; thinStatus?: 'pushed' | 'present' }[] = [];
  for (const [k, i] of opened.entries()) {
    const outcome: ImageOutcome = summary.images[k]!;
    const entry: (typeof images)[number] = { name: i.image.name, status: outcome.status };
    if (o.thin) {
      const thinName = thinNameOf(o, i);
      entry.thin = thinName;
      if (outcome.status === 'unchanged' && await thinPresent(o, thinName, i.image.manifestDigest)) entry.thinStatus = 'present';
      else {
        const thin = buildThinImage(i.image, makeThinJson(outcome.thinLayers, i.image.name));
        const ref = parseReference(thinName);
        await pushThinImage(o.registry, ref, thin).catch((err: unknown) => {
          throw isConvertError(err) ? err : new ConvertError('D2C_REGISTRY_ERROR', `pushing ${formatReference(ref)}: ${(err as Error).message}`, { cause: err });
        });
        entry.thinStatus = 'pushed';
        o.log?.(`thin image ${thinName} pushed`);
      }
    }
    images.push(entry);
  }
  const unchanged = !summary.published && images.every((i) => i.status === 'unchanged' && i.thinStatus !== 'pushed');
  return { images, convert: summary, gc: gcPlan, revision: summary.revision, published: summary.published, dryRun: false, unchanged };
}
