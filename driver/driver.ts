/**
 * The graphdriver: an overlay2-style layer store (docker-graphdriver-protocol.md §5–§7).
 * Concurrency: one lock per layer ID, never a global one (commit runs Diff and ApplyDiff at once).
 * Get/Put count references per ID: mount on 0 → 1, unmount on 1 → 0; the mount path is stable.
 * Init arrives once per daemon start (G2): it is persisted, and a restarted plugin reloads it,
 * its layers, and what is still mounted.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { applyDiff } from './apply-diff.js';
import { changesOf, diffSize, diffTar, type Change } from './diff.js';
import { DriverError } from './errors.js';
import { IdMapping, type IdMap } from './id-map.js';
import { LayerStore, type LayerRecord } from './layer-store.js';
import { Layout } from './layout.js';
import { mount, mountpoints, unmount } from './mounter.js';
import { overlayMountOf } from './overlay-options.js';
import { RepoMounts, type RepoLease, type RepositoryConfig } from './repo-mounts.js';
import { parseThin, THIN_FILES, type ThinFile } from './thin.js';

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
}

export class GraphDriver {
  private layout: Layout | undefined;
  private store: LayerStore | undefined;
  private repos: RepoMounts | undefined;
  private readonly refs = new Map<string, number>();
  private readonly mounted = new Set<string>();
  /** Repository leases held by each mounted layer built on a thin image. */
  private readonly leases = new Map<string, RepoLease[]>();
  private readonly locks = new KeyedLock();
  private readonly log: Logger;
  private ids = new IdMapping();

  constructor(private readonly o: DriverOptions = {}) { this.log = o.log ?? (() => {}); }

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
        const { lowers, leases } = await this.lowerStack(chain);
        try {
          const m = overlayMountOf({ home: layout.home, lowerLinks: lowers, upperDir: layout.diffDir(id), workDir: layout.workDir(id) });
          await mount(m, merged);
        } catch (err) {
          await Promise.all(leases.map((l) => l.release()));
          throw err;
        }
        if (leases.length) this.leases.set(id, leases);
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
   * A thin layer's own Get is its plain directory with the byte-exact thin.json (R15).
   */
  private async lowerStack(chain: readonly LayerRecord[]): Promise<{ lowers: string[]; leases: RepoLease[] }> {
    const { layout } = this.need();
    const k = chain.findIndex((r, i) => i > 0 && r.thin !== undefined);
    if (k < 0) return { lowers: chain.slice(1).map((r) => `l/${r.link}`), leases: [] };
    const thin = chain[k]!;
    const file = thin.thin!;
    if (!this.repos) throw new DriverError('DRIVER_REPOSITORY_UNCONFIGURED', `layer ${thin.id} is a thin image but no CernVM-FS repositories are configured`);
    const bytes = await fs.readFile(path.join(layout.diffDir(thin.id), file));
    const desc = parseThin(file as ThinFile, bytes, this.o.defaultRepository);
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
    const below = chain.slice(k + 1).map((r) => `l/${r.link}`);
    return { lowers: [...above, ...cvmfsLowers, ...below], leases: [...leases.values()] };
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
      ['Thin layers', String(store.all().filter((r) => r.thin).length)], ['Mounted', String(this.mounted.size)], ['Repositories mounted', repos]];
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

  async changes(id: string, parent: string): Promise<Change[]> {
    this.checkDiffParent(id, parent);
    const { store, layout } = this.need();
    return changesOf(layout.diffDir(id), store.chain(id).slice(1).map((r) => layout.diffDir(r.id)));
  }

  async diffSize(id: string, parent: string): Promise<number> {
    this.checkDiffParent(id, parent);
    return diffSize(this.need().layout.diffDir(id));
  }
}
