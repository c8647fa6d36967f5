/**
 * Hangs a freshly built nested catalog at a path of the repository, replacing whatever was there,
 * and rewrites every catalog on the way up to the root (docs/cvmfs-format.md §15.3–§15.5). Only the
 * catalogs on that path change; all others are reused by hash.
 *
 * Counters: each rewritten catalog recounts its own rows (`self_*`); `subtree_*` moves by the
 * difference between a child's totals (self + subtree) before and after, as cvmfs_server does.
 */
import { CvmfsError } from '../errors.js';
import {
  addCounters, asMountpointFlags, catalogFlags, DIR_SIZE, S_IFDIR, zeroCounters, type Counters,
} from '../format/catalog-schema.js';
import type { CatalogEntry, CatalogDatabase } from '../format/catalog-statements.js';
import { textualHash, type HashAlgo } from '../format/hash.js';
import { encodeObject } from '../format/object.js';
import { isPathWithin, parentPathOf } from '../format/path-key.js';
import type { ObjectSink } from './object-sink.js';
import { stageCatalog, type StagedCatalog } from './repository-state.js';
import type { RepositoryStorage } from './storage.js';
import fs from 'node:fs/promises';

function totalsOf(db: CatalogDatabase): Counters {
  return addCounters(db.counters('self'), db.counters('subtree'));
}

interface ChainLink extends StagedCatalog { readonly totalsBefore: Counters }

export interface GraftPlan {
  readonly mountPath: string;
  /** Root catalog first; the last one holds the parent directory of `mountPath`. */
  readonly chain: readonly ChainLink[];
  /** The nested catalog currently at `mountPath`, if any. */
  readonly previous: { readonly hash: string; readonly revision: number } | null;
}

export interface GraftContext {
  readonly storage: RepositoryStorage;
  readonly sink: ObjectSink;
  readonly algo: HashAlgo;
  readonly now: Date;
  readonly scratchDir: string;
}

export interface NewChild {
  readonly hash: string;
  readonly size: bigint;
  readonly rootEntry: CatalogEntry;
  readonly totals: Counters;
}

/** Loads the catalogs from the root down to the one that will hold `mountPath`, and checks that
 *  the path can take a nested catalog. Nothing is written. */
export async function planGraft(ctx: GraftContext, rootHash: string, mountPath: string): Promise<GraftPlan> {
  const chain: ChainLink[] = [];
  const link = async (hash: string, mp: string) => {
    const s = await stageCatalog(ctx.storage, hash, mp, ctx.scratchDir);
    chain.push({ ...s, totalsBefore: totalsOf(s.db) });
  };
  await link(rootHash, '');
  for (;;) {
    const cur = chain[chain.length - 1]!;
    const next = cur.db.nestedCatalogs().find((n) => n.path !== mountPath && isPathWithin(mountPath, n.path));
    if (next === undefined) break;
    await link(next.hash, next.path);
  }
  const k = chain[chain.length - 1]!;
  for (let a = parentPathOf(mountPath); a.length > k.mountPath.length; a = parentPathOf(a)) {
    const e = k.db.lookup(a);
    if (e !== undefined && (e.mode & S_IFDIR) !== S_IFDIR) {
      throw new CvmfsError('CVMFS_PATH_CONFLICT', `cannot ingest at ${mountPath}: ${a} is not a directory in the repository`);
    }
  }
  let previous: GraftPlan['previous'] = null;
  const ref = k.db.nestedCatalogs().find((n) => n.path === mountPath);
  if (ref) {
    const old = await stageCatalog(ctx.storage, ref.hash, ref.path, ctx.scratchDir);
    try { previous = { hash: ref.hash, revision: Number(old.db.property('revision') ?? '0') }; } finally { old.db.close(); }
  }
  return { mountPath, chain, previous };
}

async function totalsOfNested(ctx: GraftContext, hash: string, mountPath: string): Promise<Counters> {
  const s = await stageCatalog(ctx.storage, hash, mountPath, ctx.scratchDir);
  try { return totalsOf(s.db); } finally { s.db.close(); await fs.rm(s.file, { force: true }); }
}

function bumpLinkcount(db: CatalogDatabase, path: string): void {
  const e = db.lookup(path);
  if (e) db.update(path, { ...e, linkcount: e.linkcount + 1 });
}

/** Applies the plan and stores every rewritten catalog; returns the new root catalog. */
export async function applyGraft(ctx: GraftContext, plan: GraftPlan, child: NewChild, rootRevision: number)
  : Promise<{ hash: string; size: bigint }> {
  const { mountPath, chain } = plan;
  const k = chain[chain.length - 1]!;
  let removed = zeroCounters();
  for (const n of k.db.nestedCatalogsWithin(mountPath)) removed = addCounters(removed, await totalsOfNested(ctx, n.hash, n.path));
  const nowSeconds = Math.floor(ctx.now.getTime() / 1000);

  k.db.transaction(() => {
    const missing: string[] = [];
    for (let a = parentPathOf(mountPath); a.length > k.mountPath.length && !k.db.lookup(a); a = parentPathOf(a)) missing.unshift(a);
    for (const a of missing) {
      k.db.upsert(a, { name: a.slice(a.lastIndexOf('/') + 1), mode: S_IFDIR | 0o755, size: DIR_SIZE, mtime: nowSeconds, mtimens: null,
        uid: 0, gid: 0, flags: catalogFlags({ kind: 'dir' }), linkcount: 2, hardlinkGroup: 0, hash: null, symlink: '', xattr: null });
      bumpLinkcount(k.db, parentPathOf(a));
    }
    const old = k.db.lookup(mountPath);
    if (old) k.db.removeSubtree(mountPath);
    if (!old || (old.mode & S_IFDIR) !== S_IFDIR) bumpLinkcount(k.db, parentPathOf(mountPath));
    k.db.upsert(mountPath, { ...child.rootEntry, flags: asMountpointFlags(child.rootEntry.flags) });
    k.db.setNestedCatalog({ path: mountPath, hash: child.hash, size: child.size });
    k.db.setCounters('subtree', addCounters(addCounters(k.db.counters('subtree'), removed, -1n), child.totals));
  });

  let below: { link: ChainLink; child: NewChild } | null = null;
  let result: { hash: string; size: bigint } | null = null;
  for (let i = chain.length - 1; i >= 0; i--) {
    const link = chain[i]!;
    const db = link.db;
    db.transaction(() => {
      if (below) {
        const c = below.child;
        db.setNestedCatalog({ path: below.link.mountPath, hash: c.hash, size: c.size });
        db.update(below.link.mountPath, { ...c.rootEntry, flags: asMountpointFlags(c.rootEntry.flags) });
        db.setCounters('subtree', addCounters(addCounters(db.counters('subtree'), below.link.totalsBefore, -1n), c.totals));
      }
      db.setCounters('self', db.computeSelfCounters());
      const revision = i === 0 ? rootRevision : Number(db.property('revision') ?? '0') + 1;
      db.setProperty('revision', String(revision));
      db.setProperty('previous_revision', link.hash);
      db.setProperty('last_modified', String(nowSeconds));
    });
    const rootEntry = db.lookup(link.mountPath);
    if (!rootEntry) throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${link.hash} lacks its root entry ${link.mountPath || '/'}`);
    const totals = totalsOf(db);
    db.finalize();
    db.close();
    const bytes = await fs.readFile(link.file);
    const enc = encodeObject(bytes, 'C', ctx.algo);
    await ctx.sink.put(enc.path, enc.stored);
    const hash = textualHash(ctx.algo, enc.digest);
    below = { link, child: { hash, size: BigInt(bytes.length), rootEntry, totals } };
    result = { hash, size: BigInt(bytes.length) };
  }
  return result!;
}

export function closePlan(plan: GraftPlan): void {
  for (const l of plan.chain) l.db.close();
}
