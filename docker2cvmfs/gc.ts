/**
 * Garbage collection of converted layers (R33). Used layers are those named by some image
 * marker `/.metadata/**\/manifest.json` that is kept; every `/.layers/<xx>/<d>` no kept image
 * names and older than the grace period goes, with its nested catalog and metadata. With `keep`
 * (sync --gc: the images the recipe lists), markers of other images are removed first, so their
 * layers become unused. A dry run computes the same plan and changes nothing. Everything the
 * converter creates for an image (marker, layer directory, layers.json, origin.json) is covered.
 */
import { transaction, type RepositoryStorage, type Transaction } from '../cvmfs/writer/index.js';
import { hexOf } from './image.js';
import { LAYERS_ROOT, METADATA_ROOT } from './layout.js';

export interface GcOptions {
  readonly now: Date;
  /** Layers younger than this (by their ingest time) are kept even when unused. */
  readonly graceSeconds: number;
  /** Image markers to keep; undefined keeps every marker (plain `gc`). */
  readonly keep?: ReadonlySet<string>;
}

export interface GcPlan {
  readonly removeImages: readonly string[];
  readonly removeLayers: readonly { readonly digest: string; readonly path: string; readonly ageDays: number }[];
  /** Unused but inside the grace period. */
  readonly keptYoung: readonly string[];
  readonly usedLayers: number;
}

async function markers(tx: Transaction, dir: string, out: string[]): Promise<void> {
  const names = await tx.list(dir);
  if (names === undefined) return;
  for (const n of names) {
    const p = `${dir}/${n}`;
    const e = await tx.lookup(p);
    if (e === undefined) continue;
    if ((e.mode & 0o170000) === 0o040000) await markers(tx, p, out);
    else if (n === 'manifest.json' && (e.mode & 0o170000) === 0o100000) out.push(p);
  }
}

function layersOf(bytes: Buffer): string[] {
  try {
    const m = JSON.parse(bytes.toString('utf8')) as { layers?: { digest?: unknown }[] };
    return (m.layers ?? []).map((l) => l.digest).filter((d): d is string => typeof d === 'string' && /^sha256:[0-9a-f]{64}$/.test(d)).map(hexOf);
  } catch { return []; }
}

export async function planGc(tx: Transaction, o: GcOptions): Promise<GcPlan> {
  const all: string[] = [];
  await markers(tx, METADATA_ROOT, all);
  const removeImages = o.keep ? all.filter((m) => !o.keep!.has(m)) : [];
  const used = new Set<string>();
  for (const m of all) {
    if (removeImages.includes(m)) continue;
    const bytes = await tx.readFile(m).catch(() => undefined);
    // An unreadable marker keeps nothing alive; a marker that cannot be parsed is reported by the
    // converter when its image is converted again.
    if (bytes) for (const d of layersOf(bytes)) used.add(d);
  }
  const removeLayers: { digest: string; path: string; ageDays: number }[] = [];
  const keptYoung: string[] = [];
  const nowSeconds = o.now.getTime() / 1000;
  for (const shard of (await tx.list(LAYERS_ROOT)) ?? []) {
    if (!/^[0-9a-f]{2}$/.test(shard)) continue;
    for (const d of (await tx.list(`${LAYERS_ROOT}/${shard}`)) ?? []) {
      if (!/^[0-9a-f]{64}$/.test(d) || !d.startsWith(shard) || used.has(d)) continue;
      const path = `${LAYERS_ROOT}/${shard}/${d}`;
      const e = (await tx.lookup(`${path}/layerfs`)) ?? (await tx.lookup(path));
      const age = e ? nowSeconds - e.mtime : Infinity;
      if (age < o.graceSeconds) keptYoung.push(d);
      else removeLayers.push({ digest: d, path, ageDays: Math.floor(age / 86400) });
    }
  }
  return { removeImages, removeLayers, keptYoung, usedLayers: used.size };
}

/** Removes what the plan names; the caller's transaction publishes it as one revision. */
export async function applyGc(tx: Transaction, plan: GcPlan): Promise<void> {
  for (const m of plan.removeImages) {
    await tx.remove(m.slice(0, -'/manifest.json'.length));
  }
  for (const l of plan.removeLayers) await tx.remove(l.path);
}

export interface CollectOptions extends GcOptions {
  readonly storage: RepositoryStorage;
  readonly keysDir: string;
  readonly dryRun: boolean;
}

/** `docker2cvmfs gc`: one transaction; a dry run plans and publishes nothing. */
export async function collectGarbage(o: CollectOptions): Promise<{ plan: GcPlan; revision: number; published: boolean }> {
  const r = await transaction({ storage: o.storage, keysDir: o.keysDir, clock: { now: () => o.now }, what: 'docker2cvmfs gc' }, async (tx) => {
    const plan = await planGc(tx, o);
    if (!o.dryRun) await applyGc(tx, plan);
    return plan;
  });
  return { plan: r.value, revision: r.revision, published: r.published };
}
