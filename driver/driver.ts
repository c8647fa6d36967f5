/**
 * The graphdriver: an overlay2-style layer store (docker-graphdriver-protocol.md §5–§7).
 * Concurrency: one lock per layer ID, never a global one (commit runs Diff and ApplyDiff at once).
 * Get/Put count references per ID: mount on 0 → 1, unmount on 1 → 0; the mount path is stable.
 * Init arrives once per daemon start (G2): it is persisted, and a restarted plugin reloads it,
 * its layers, and what is still mounted.
 * Commits are local layers (R9). With a publisher configured, the commit of a container on a thin
 * image publishes its layer and exports a thin layer instead (publish.ts, `exportDiff`).
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import type { PrefetchLimits } from '../cvmfs/reader/index.js';
import { applyDiff } from './apply-diff.js';
import { changesOf, diffSize, diffTar, type Change } from './diff.js';
import { DriverError } from './errors.js';
import { IdMapping, type IdMap } from './id-map.js';
import { LayerStore, type LayerRecord } from './layer-store.js';
import { Layout } from './layout.js';
import { mount, mountpoints, unmount } from './mounter.js';
import { overlayMountOf } from './overlay-options.js';
import { LayerPublisher, spoolLayer, type PublishSettings, type SpooledLayer } from './publish.js';
import { RepoMounts, type RepoLease, type RepositoryConfig } from './repo-mounts.js';
import { appendedThinJson, parseThin, THIN_FILES, type ThinDescriptor, type ThinFile } from './thin.js';

export interface InitRequest {
  readonly home: string;
  readonly opts: readonly string[];
  readonly uidMaps?: readonly IdMap[];
  readonly gidMaps?: readonly IdMap[];
}
export type Logger = (level: 'debug' | 'info' | 'warn' | 'error', msg: string) => void;

class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const next = new Promise<void>((r) => { release = r; });
    const tail = prev.then(() => next);
    this.tails.set(key, tail);
    await prev;
    try { return await fn(); } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

export interface DriverOptions {
  readonly repositories?: RepositoryConfig;
  /** Repository for old descriptors whose layers carry no URL. */
  readonly defaultRepository?: string;
  readonly log?: Logger;
  /** ApplyDiff fails when its upload sends no byte for this long. */
  readonly applyIdleTimeoutMs?: number;
  /** Publish commits of containers on thin images (thin commits); unset: commits stay local (R9). */
  readonly publish?: PublishSettings;
  /** Bounds of the prefetch of a thin image's recorded access list; false: never prefetch. */
  readonly prefetch?: Partial<PrefetchLimits> | false;
}

export interface ExportOptions {
  /** Aborted when the daemon gives up on the Diff request: a publish in progress is abandoned. */
  readonly signal?: AbortSignal;
}

/** How long a thin image's prefetch outlives the unmount of the last layer using it. */
const PREFETCH_GRACE_MS = 30_000;

/** What a thin commit publishes: the layers above the nearest thin ancestor, and that ancestor. */
interface ThinCommitPlan {
  /** Layers whose changes make the new layer, top first (the container layer, then regular layers above the thin one). */
  readonly layers: readonly LayerRecord[];
  readonly thin: LayerRecord;
}

export class GraphDriver {
  private layout: Layout | undefined;
  private store: LayerStore | undefined;
  private repos: RepoMounts | undefined;
  private readonly refs = new Map<string, number>();
  private readonly mounted = new Set<string>();
  /** Repository leases held by each mounted layer built on a thin image. */
  private readonly leases = new Map<string, RepoLease[]>();
  /**
   * Prefetch of a recorded access list, one per thin image, shared by the mounted layers built on
   * it: `docker run` mounts and unmounts the -init and container layers in turn, which must not
   * restart or abort it. Aborted PREFETCH_GRACE_MS after its last layer is unmounted.
   */
  private readonly prefetches = new Map<string, { ac: AbortController; users: number; idle?: NodeJS.Timeout }>();
  /** Mounted layer → the thin image whose prefetch it uses. */
  private readonly prefetchOf = new Map<string, string>();
  private readonly locks = new KeyedLock();
  private readonly log: Logger;
  private ids = new IdMapping();
  private readonly publisher: LayerPublisher | undefined;

  constructor(private readonly o: DriverOptions = {}) {
    this.log = o.log ?? (() => {});
    this.publisher = o.publish ? new LayerPublisher(o.publish, this.log) : undefined;
  }

  private need(): { layout: Layout; store: LayerStore } {
    if (!this.layout || !this.store) throw new DriverError('DRIVER_NOT_INITIALIZED', 'the driver has not received Init from the daemon');
    return { layout: this.layout, store: this.store };
  }

  /** Init from the daemon; persisted so that a restarted plugin can resume (G2). */
  async init(req: InitRequest, stateDir?: string): Promise<void> {
    await this.open(req);
    if (stateDir) {
      await fs.mkdir(stateDir, { recursive: true });
      await fs.writeFile(path.join(stateDir, 'init.json'), JSON.stringify(req));
    }
    this.log('info', `initialised at ${req.home}: ${this.store!.all().length} layers`);
  }

  /** Resumes after a plugin restart from the persisted Init, if any. */
  async resume(stateDir: string): Promise<boolean> {
    const text = await fs.readFile(path.join(stateDir, 'init.json'), 'utf8').catch(() => undefined);
    if (!text) return false;
    const req = JSON.parse(text) as InitRequest;
    await this.open(req);
    this.log('info', `resumed at ${req.home} after a restart: ${this.store!.all().length} layers, ${this.mounted.size} mounted`);
    return true;
  }

  private async open({ home, uidMaps, gidMaps }: InitRequest): Promise<void> {
    const ids = new IdMapping(uidMaps, gidMaps);
    if (!path.isAbsolute(home)) throw new DriverError('DRIVER_BAD_REQUEST', `Home "${home}" is not an absolute path`);
    await fs.mkdir(home, { recursive: true, mode: 0o700 });
    if (!ids.identity) {
      // The container's root (a host ID) must reach its rootfs under Home, as overlay2 allows it.
      await fs.chown(home, 0, ids.root().gid);
      await fs.chmod(home, 0o710);
    }
    const layout = new Layout(home);
    const store = new LayerStore(layout, ids.root());
    await store.load();
    const mps = await mountpoints();
    this.mounted.clear();
    this.refs.clear();
    for (const r of store.all()) if (mps.has(layout.mergedDir(r.id))) this.mounted.add(r.id);
    const swept = await store.sweep((d) => mps.has(d));
    if (swept.length) this.log('info', `removed ${swept.length} leftover layer directories`);
    // Spool files of thin commits a crash interrupted.
    await fs.rm(layout.spoolDir(), { recursive: true, force: true });
    // A crash during ApplyDiff leaves a layer the daemon never registered: remove it whole.
    for (const r of store.all()) {
      if (this.mounted.has(r.id) || !(await layout.isApplying(r.id))) continue;
      await store.remove(r.id);
      this.log('info', `removed layer ${r.id}, whose ApplyDiff a crash interrupted`);
    }
    this.layout = layout;
    this.store = store;
    this.ids = ids;
    if (this.o.repositories) {
      this.repos = new RepoMounts(this.o.repositories, path.join(home, 'cvmfs'), this.log, ids);
      const stale = await this.repos.sweepStale();
      if (stale.length) this.log('info', `unmounted ${stale.length} repository mounts left by a previous plugin process`);
    }
  }

  async create(id: string, parent: string, readWrite: boolean): Promise<void> {
    const { store } = this.need();
    Layout.checkId(id);
    if (parent) Layout.checkId(parent);
    await this.locks.run(id, () => store.create(id, parent, readWrite).then(() => {}));
  }

  async remove(id: string): Promise<void> {
    const { store } = this.need();
    await this.locks.run(id, async () => {
      if (!store.has(id)) return;
      // G5: when Get of `<m>-init` fails, the daemon abandons that layer without removing it. Such
      // orphans (unmounted `-init` layers with no container layer on top) go with their parent.
      const isOrphanInit = (r: LayerRecord) => r.id.endsWith('-init') && !this.mounted.has(r.id) && !store.all().some((c) => c.parent === r.id);
      const children = store.all().filter((r) => r.parent === id);
      const live = children.filter((r) => !isOrphanInit(r));
      if (live.length) throw new DriverError('DRIVER_LAYER_BUSY', `layer ${id} is the parent of ${live.map((r) => r.id).join(', ')}`);
      for (const orphan of children) {
        await store.remove(orphan.id);
        this.log('info', `removed abandoned layer ${orphan.id} with its parent ${id}`);
      }
      await this.unmountLayer(id);
      this.refs.delete(id);
      await store.remove(id);
    });
  }

  async get(id: string): Promise<string> {
    const { store, layout } = this.need();
    return this.locks.run(id, async () => {
      const chain = store.chain(id);
      const merged = layout.mergedDir(id);
      if (!this.mounted.has(id)) {
        const { lowers, leases, prefetch } = await this.lowerStack(chain);
        try {
          const m = overlayMountOf({ home: layout.home, lowerLinks: lowers, upperDir: layout.diffDir(id), workDir: layout.workDir(id) });
          await mount(m, merged);
        } catch (err) {
          await Promise.all(leases.map((l) => l.release()));
          throw err;
        }
        if (leases.length) this.leases.set(id, leases);
        if (prefetch) this.prefetchOf.set(id, prefetch());
        this.mounted.add(id);
      }
      this.refs.set(id, (this.refs.get(id) ?? 0) + 1);
      return merged;
    });
  }

  /**
   * Lower dirs for a chain (the layer itself first). The nearest thin ancestor's descriptor
   * describes the filesystem below it (R8): its layers come from their repositories, top-most
   * first; regular layers above it stack normally, and regular layers below it go underneath (R7).
   * A thin layer's own Get is its plain directory with the byte-exact thin.json (R15): push and
   * save read only that file, and no repository is mounted for them.
   */
  private async lowerStack(chain: readonly LayerRecord[]): Promise<{ lowers: string[]; leases: RepoLease[]; prefetch?: () => string }> {
    const { layout } = this.need();
    if (chain[0]?.thin !== undefined) return { lowers: [], leases: [] };
    const k = chain.findIndex((r, i) => i > 0 && r.thin !== undefined);
    if (k < 0) return { lowers: chain.slice(1).map((r) => `l/${r.link}`), leases: [] };
    const thin = chain[k]!;
    if (!this.repos) throw new DriverError('DRIVER_REPOSITORY_UNCONFIGURED', `layer ${thin.id} is a thin image but no CernVM-FS repositories are configured`);
    const desc = await this.descriptorOf(thin);
    const leases = new Map<string, RepoLease>();
    const cvmfsLowers: string[] = [];
    try {
      for (const l of [...desc.layers].reverse()) {
        let lease = leases.get(l.fqrn);
        if (!lease) { lease = await this.repos.acquire(l.fqrn); leases.set(l.fqrn, lease); }
        const where = `${l.fqrn}:${l.path} (layer sha256:${l.digest})`;
        let d = await lease.repo.stat(l.path).catch(() => undefined);
        if (!d) {
          // The layer may have been published after the last TTL check (§4.5 step 3).
          await lease.repo.refresh().catch(() => false);
          d = await lease.repo.stat(l.path).catch(() => undefined);
        }
        if (!d) throw new DriverError('DRIVER_THIN_LAYER_MISSING', `layer sha256:${l.digest} is not in repository ${l.fqrn} at ${l.path}`);
        if (d.kind !== 'dir') throw new DriverError('DRIVER_THIN_INVALID', `${where} is not a directory`);
        cvmfsLowers.push(await this.linkTo(path.join(lease.root, l.path), `${l.fqrn}${l.path}`));
      }
    } catch (err) {
      await Promise.all([...leases.values()].map((l) => l.release()));
      throw err;
    }
    const above = chain.slice(1, k).map((r) => `l/${r.link}`);
    // A thin layer further down (the parent of a thin commit) is described by the nearer descriptor
    // already; its own directory holds only its thin.json, which containers never see (R15).
    const below = chain.slice(k + 1).filter((r) => r.thin === undefined).map((r) => `l/${r.link}`);
    const lowers = [...above, ...cvmfsLowers, ...below];
    if (desc.prefetch.length === 0 || this.o.prefetch === false) return { lowers, leases: [...leases.values()] };
    return { lowers, leases: [...leases.values()], prefetch: () => this.usePrefetch(thin.id, desc, leases) };
  }

  /**
   * Fetches the descriptor's recorded access list in the background while the container starts,
   * per repository, bounded; a read of an object in flight waits for that download. Aborted when
   * the layer is unmounted. Its outcome is only logged: prefetch never fails a start.
   */
  private usePrefetch(thinId: string, desc: ThinDescriptor, leases: ReadonlyMap<string, RepoLease>): string {
    const running = this.prefetches.get(thinId);
    if (running) {
      running.users++;
      clearTimeout(running.idle);
      delete running.idle;
      return thinId;
    }
    this.prefetches.set(thinId, { ac: this.startPrefetch(thinId, desc, leases), users: 1 });
    return thinId;
  }

  private releasePrefetch(id: string): void {
    const thinId = this.prefetchOf.get(id);
    this.prefetchOf.delete(id);
    const p = thinId !== undefined ? this.prefetches.get(thinId) : undefined;
    if (!p || --p.users > 0) return;
    p.idle = setTimeout(() => { p.ac.abort(); this.prefetches.delete(thinId!); }, PREFETCH_GRACE_MS);
    p.idle.unref();
  }

  private startPrefetch(thinId: string, desc: ThinDescriptor, leases: ReadonlyMap<string, RepoLease>): AbortController {
    const ac = new AbortController();
    const byRepo = new Map<string, string[]>();
    for (const e of desc.prefetch) {
      const l = desc.layers[e.layer]!;
      let list = byRepo.get(l.fqrn);
      if (!list) byRepo.set(l.fqrn, list = []);
      list.push(l.path + e.path);
    }
    if (desc.prefetchDropped) this.log('warn', `thin layer ${thinId}: ${desc.prefetchDropped} prefetch list entries were malformed or over the bound, and ignored`);
    for (const [fqrn, paths] of byRepo) {
      const lease = leases.get(fqrn);
      if (!lease) continue;
      const t0 = performance.now();
      void lease.repo.prefetch(paths, this.o.prefetch || {}, ac.signal).then((r) => {
        this.log('debug', `prefetch for thin layer ${thinId} from ${fqrn}: ${r.objects} objects, ${(r.bytes / 1e6).toFixed(1)} MB in ${((performance.now() - t0) / 1000).toFixed(2)} s; `
          + `${r.alreadyCached} cached, ${r.missing} missing, ${r.notFiles} not files, ${r.overBudget} over budget, ${r.failed} failed${r.firstError ? ` (${r.firstError})` : ''}`);
      });
    }
    return ac;
  }

  private async descriptorOf(thin: LayerRecord): Promise<ThinDescriptor> {
    const file = thin.thin as ThinFile;
    const bytes = await fs.readFile(path.join(this.need().layout.diffDir(thin.id), file));
    return parseThin(file, bytes, this.o.defaultRepository);
  }

  /** A short `l/` link to a directory inside a repository mount, keeping mount data small. */
  private async linkTo(target: string, key: string): Promise<string> {
    const { layout } = this.need();
    const short = 'c' + createHash('sha256').update(key).digest('base64url').slice(0, 15);
    const link = layout.link(short);
    const cur = await fs.readlink(link).catch(() => undefined);
    if (cur !== target) {
      await fs.rm(link, { force: true });
      await fs.symlink(target, link);
    }
    return `l/${short}`;
  }

  /** Unmounts a layer's merged view and releases the repositories it held. */
  private async unmountLayer(id: string): Promise<void> {
    if (this.mounted.has(id)) { await unmount(this.need().layout.mergedDir(id)); this.mounted.delete(id); }
    this.releasePrefetch(id);
    const ls = this.leases.get(id);
    this.leases.delete(id);
    if (ls) await Promise.all(ls.map((l) => l.release()));
  }

  async put(id: string): Promise<void> {
    this.need();
    await this.locks.run(id, async () => {
      const n = (this.refs.get(id) ?? 0) - 1;
      if (n > 0) { this.refs.set(id, n); return; }
      this.refs.delete(id);
      await this.unmountLayer(id);
    });
  }

  exists(id: string): boolean { return this.need().store.has(id); }

  status(): [string, string][] {
    const { store, layout } = this.need();
    const users = new Map(this.repos?.active());
    const repos = this.repos?.mounted().map((f) => `${f} (${users.get(f) ?? 'idle'})`).join(', ') || 'none';
    return [['Home', layout.home], ['Backing Filesystem', 'overlay'], ['Layers', String(store.all().length)],
      ['Thin layers', String(store.all().filter((r) => r.thin).length)], ['Mounted', String(this.mounted.size)], ['Repositories mounted', repos],
      ['Commits on thin images', this.publisher ? `published to ${this.publisher.describe()}` : 'local layers']];
  }

  metadata(id: string): Record<string, string> {
    const { store, layout } = this.need();
    const chain = store.chain(id);
    const md: Record<string, string> = { UpperDir: layout.diffDir(id), WorkDir: layout.workDir(id), MergedDir: layout.mergedDir(id) };
    if (chain.length > 1) md.LowerDir = chain.slice(1).map((r) => layout.diffDir(r.id)).join(':');
    return md;
  }

  async cleanup(): Promise<void> {
    const { layout } = this.need();
    for (const id of [...this.mounted]) {
      await unmount(layout.mergedDir(id)).catch((err: Error) => this.log('warn', err.message));
      this.mounted.delete(id);
    }
    this.refs.clear();
    this.leases.clear();
    for (const p of this.prefetches.values()) { clearTimeout(p.idle); p.ac.abort(); }
    this.prefetches.clear();
    this.prefetchOf.clear();
    await this.repos?.releaseAll();
  }

  async applyDiff(id: string, parent: string, input: Readable): Promise<number> {
    const { store, layout } = this.need();
    const rec = store.must(id);
    if (parent !== rec.parent) throw new DriverError('DRIVER_BAD_REQUEST', `ApplyDiff parent "${parent}" is not the parent "${rec.parent}" of layer ${id}`);
    return this.locks.run(id, async () => {
      await layout.markApplying(id);
      const size = await applyDiff(layout.diffDir(id), input, {
        ids: this.ids, ...(this.o.applyIdleTimeoutMs !== undefined ? { idleTimeoutMs: this.o.applyIdleTimeoutMs } : {}),
      }).finally(() => layout.clearApplying(id));
      for (const f of THIN_FILES) {
        const st = await fs.lstat(path.join(layout.diffDir(id), f)).catch(() => undefined);
        if (st?.isFile()) {
          await store.update({ ...rec, thin: f });
          this.log('info', `layer ${id} is a thin image (${f})`);
          break;
        }
      }
      return size;
    });
  }

  /** Only against the layer's own parent: other ancestors are refused. */
  private checkDiffParent(id: string, parent: string): void {
    const rec = this.need().store.must(id);
    if (parent !== rec.parent) {
      throw new DriverError('DRIVER_UNSUPPORTED', `Changes or size of ${id} against "${parent || '(empty)'}" is not supported, only against its parent ${rec.parent || '(none)'}`);
    }
  }

  /** Against the parent, or against an older ancestor or nothing: the layers between squashed (docker build --squash). */
  diff(id: string, parent: string): Readable {
    const { store, layout } = this.need();
    const chain = store.chain(id);
    const stop = parent ? chain.findIndex((r) => r.id === parent) : chain.length;
    if (stop < 1) throw new DriverError('DRIVER_BAD_REQUEST', `Diff of ${id} against ${parent}: ${parent} is not an ancestor of ${id}`);
    const range = chain.slice(0, stop);
    const thin = range.length > 1 ? range.find((r) => r.thin) : undefined;
    if (thin) {
      throw new DriverError('DRIVER_UNSUPPORTED', `Diff of ${id} against "${parent || '(empty)'}" would squash the thin layer ${thin.id}, whose files stay in CernVM-FS: `
        + 'squash only the layers above a thin image');
    }
    // A single layer is emitted as it is stored, as overlay2 does; only a squash to nothing drops deletions.
    return diffTar(range.map((r) => layout.diffDir(r.id)), { base: range.length > 1 && stop === chain.length, ids: this.ids });
  }

  /**
   * What the daemon's Diff gets. Without a publisher, or for anything but the commit of a
   * container on a thin image, the layer tar of `diff`. With one, `docker commit` (and each classic
   * builder step) of a container on a thin image is a thin commit (§3.6, R1, R6): the container's
   * changes, with the regular layers between it and the thin layer, are published, and the tar
   * answered holds only the new thin.json (the parent's descriptor with the new layer appended
   * top-most), so that the committed layer is itself thin. All of it happens before the first
   * byte of the answer: a failure is a plain error reply, and the daemon creates no layer.
   */
  async exportDiff(id: string, parent: string, o: ExportOptions = {}): Promise<Readable> {
    const plan = this.publisher ? this.thinCommitPlan(id, parent) : undefined;
    if (!this.publisher || !plan) return this.diff(id, parent);
    return this.thinCommit(id, plan, this.publisher, o.signal);
  }

  /**
   * A thin commit applies to Diff(<m>, <m>-init), the daemon's commit of a container (and its
   * classic builder steps), whose chain has a thin layer. BuildKit's Diff(snapshot, parent)
   * registers the snapshot itself, whose files would not match a thin tar: it stays ordinary.
   */
  private thinCommitPlan(id: string, parent: string): ThinCommitPlan | undefined {
    const { store } = this.need();
    const rec = store.must(id);
    if (!parent || rec.parent !== parent || !parent.endsWith('-init')) return undefined;
    const chain = store.chain(id);
    const k = chain.findIndex((r, i) => i > 1 && r.thin !== undefined);
    if (k < 0) return undefined;
    // The -init layer (the daemon's /etc/hosts and the like) stays out of commits, as the daemon intends.
    return { layers: [chain[0]!, ...chain.slice(2, k)], thin: chain[k]! };
  }

  private async thinCommit(id: string, plan: ThinCommitPlan, publisher: LayerPublisher, signal?: AbortSignal): Promise<Readable> {
    const { layout } = this.need();
    const desc = await this.descriptorOf(plan.thin);
    await fs.mkdir(layout.spoolDir(), { recursive: true, mode: 0o700 });
    const file = path.join(layout.spoolDir(), `${id}-${randomBytes(6).toString('hex')}.tar.gz`);
    try {
      let spooled: SpooledLayer;
      try {
        spooled = await spoolLayer(diffTar(plan.layers.map((r) => layout.diffDir(r.id)), { ids: this.ids }), file);
      } catch (err) {
        if (err instanceof DriverError) throw err;
        throw new DriverError('DRIVER_PUBLISH_FAILED', `thin commit of ${id}: writing the layer to ${file} failed: ${(err as Error).message}`, { cause: err });
      }
      const above = plan.layers.length > 1 ? `, with the ${plan.layers.length - 1} local layers between it and the thin layer ${plan.thin.id}` : '';
      this.log('info', `thin commit of ${id}${above}: layer sha256:${spooled.digest} (diffID sha256:${spooled.diffId}, ${spooled.size} bytes), publishing to ${publisher.describe()}`);
      const published = await publisher.publish(spooled, signal);
      const json = appendedThinJson(desc, { digest: published.digest, url: published.url });
      await this.refreshAfterPublish(published.url, published.revision);
      this.log('info', `thin commit of ${id}: layer sha256:${published.digest} is at ${published.url}${published.revision !== undefined ? ` (revision ${published.revision})` : ''}; `
        + `the new descriptor has ${desc.layers.length + 1} layers`);
      return Readable.from([await thinLayerTar(json)]);
    } finally {
      await fs.rm(file, { force: true });
    }
  }

  /**
   * The published layer is at a newer revision than a mounted repository may show: refresh it now
   * (R5), so that the first container of the committed image finds it. A repository not mounted
   * here opens at the current revision anyway; one that still lags is refreshed again when the
   * layer is first mounted and its path is missing (`lowerStack`).
   */
  private async refreshAfterPublish(url: string, revision: number | undefined): Promise<void> {
    const fqrn = /^cvmfs:\/\/([^/]+)\//.exec(url)?.[1];
    if (!fqrn || !this.repos) return;
    const now = await this.repos.refreshMounted(fqrn);
    if (now !== undefined && revision !== undefined && now < revision) {
      this.log('warn', `${fqrn} is still at revision ${now} after a refresh, but the published layer is in revision ${revision}: it is looked for again when first mounted`);
    }
  }

  async changes(id: string, parent: string): Promise<Change[]> {
    this.checkDiffParent(id, parent);
    const { store, layout } = this.need();
    return changesOf(layout.diffDir(id), store.chain(id).slice(1).map((r) => layout.diffDir(r.id)));
  }

  async diffSize(id: string, parent: string): Promise<number> {
    this.checkDiffParent(id, parent);
    return diffSize(this.need().layout.diffDir(id));
  }

  /** Client counters per repository (RepoMounts.snapshot); none before Init. Never throws. */
  async repositoryCounters(): ReturnType<RepoMounts['snapshot']> { return (await this.repos?.snapshot()) ?? []; }
}

/** The committed thin layer: one entry, thin.json (0644 as DUCC writes it), fixed owner and time. */
async function thinLayerTar(json: Buffer): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => { chunks.push(c as Buffer); });
  const ended = new Promise<void>((resolve, reject) => { pack.on('end', () => resolve()); pack.on('error', reject); });
  await new Promise<void>((resolve, reject) => {
    pack.entry({ name: 'thin.json', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: new Date(0), size: json.length }, json, (err) => (err ? reject(err) : resolve()));
  });
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}
