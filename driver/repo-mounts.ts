/**
 * One FUSE mount per repository, shared and reference-counted: mounted for the first layer that
 * needs it, unmounted when the last one is Put (R2) and an idle delay has passed, so the Get/Put
 * churn of `docker run` does not remount it. A failed mount is not counted (R3). Whiteouts
 * are presented in overlay form (R12), symlink targets verbatim (R13), owners as stored (R14), or
 * shifted into the host range of the daemon's user namespace map.
 * Configuration is uniform per repository (R11): server URLs (a default pattern with @fqrn@, or
 * per repository), proxies, and master public keys from `<keysDir>/<fqrn>.pub`, else a domain key
 * `<keysDir>/<domain>.pub` for a parent domain (as `/etc/cvmfs/keys/cern.ch.pub` serves *.cern.ch).
 * A repository with neither is not configured.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { decodeXattrs } from '../cvmfs/format/xattr.js';
import { mountRepository, type Mount } from '../cvmfs/fuse/index.js';
import { openRepository, type Repository, type RepositoryCounters } from '../cvmfs/reader/index.js';
import type { Logger } from './driver.js';
import { DriverError } from './errors.js';
import { IdMapping } from './id-map.js';
import { mountpoints, unmount } from './mounter.js';

export interface RepositoryConfig {
  readonly servers: readonly string[];
  readonly perRepository?: Readonly<Record<string, { readonly servers?: readonly string[]; readonly proxy?: string }>>;
  readonly proxy?: string;
  readonly keysDir: string;
  readonly cacheDir: string;
  readonly quotaBytes?: number;
  readonly timeoutMs?: number;
  /** How long a repository stays mounted after its last user is Put; 0 unmounts at once. */
  readonly idleUnmountMs?: number;
}

export interface RepoLease {
  readonly fqrn: string;
  /** Where the repository root is mounted. */
  readonly root: string;
  readonly repo: Repository;
  release(): Promise<void>;
}

interface Entry { repo: Repository; mount: Mount; root: string }

export class RepoMounts {
  /** Mounted or being mounted. */
  private readonly live = new Map<string, Promise<Entry>>();
  private readonly users = new Map<string, number>();
  private readonly idle = new Map<string, NodeJS.Timeout>();
  /** Unmounts in progress. */
  private readonly closing = new Map<string, Promise<void>>();
  private readonly idleMs: number;

  constructor(private readonly config: RepositoryConfig, private readonly mountRoot: string, private readonly log: Logger,
    private readonly ids: IdMapping = new IdMapping()) {
    this.idleMs = config.idleUnmountMs ?? 0;
  }

  private async publicKeys(fqrn: string): Promise<{ name: string; pem: string }[]> {
    const dir = this.config.keysDir;
    const names = new Set(await fs.readdir(dir).catch(() => [] as string[]));
    const labels = fqrn.split('.');
    const candidates = labels.slice(0, -1).map((_, i) => `${labels.slice(i).join('.')}.pub`);
    const found = candidates.find((c) => names.has(c));
    if (!found) {
      throw new DriverError('DRIVER_REPOSITORY_UNCONFIGURED',
        `repository ${fqrn} is not configured: no public key ${candidates.map((c) => path.join(dir, c)).join(' or ')}`);
    }
    const f = path.join(dir, found);
    return [{ name: f, pem: await fs.readFile(f, 'utf8') }];
  }

  private async mount(fqrn: string): Promise<Entry> {
    const per = this.config.perRepository?.[fqrn];
    const root = path.join(this.mountRoot, fqrn);
    await fs.mkdir(root, { recursive: true });
    let repo: Repository;
    try {
      repo = await openRepository({
        fqrn, servers: per?.servers ?? this.config.servers, publicKeys: await this.publicKeys(fqrn),
        cacheDir: path.join(this.config.cacheDir, fqrn), expandSymlinks: false,
        ...(per?.proxy ?? this.config.proxy ? { proxy: per?.proxy ?? this.config.proxy } : {}),
        ...(this.config.quotaBytes ? { quotaBytes: this.config.quotaBytes } : {}),
        ...(this.config.timeoutMs ? { timeoutMs: this.config.timeoutMs } : {}),
        maxRetries: 0, backoffInitMs: 200, log: (l) => this.log('info', l),
      });
    } catch (err) {
      if (err instanceof DriverError) throw err;
      throw new DriverError('DRIVER_REPOSITORY_UNAVAILABLE', `cannot open repository ${fqrn}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const mount = await mountRepository(storedXattrsListed(repo), {
        mountpoint: root, overlayWhiteouts: true, allowOther: true, log: (l) => this.log('warn', l),
        ...(this.ids.identity ? {} : { owner: (uid: number, gid: number) => this.ids.presentOnHost(uid, gid) }),
      });
      this.log('info', `mounted ${fqrn} revision ${repo.revision} at ${root}`);
      return { repo, mount, root };
    } catch (err) {
      await repo.close();
      throw new DriverError('DRIVER_REPOSITORY_UNAVAILABLE', `cannot mount repository ${fqrn} at ${root}: ${(err as Error).message}`, { cause: err });
    }
  }

  async acquire(fqrn: string): Promise<RepoLease> {
    this.cancelIdle(fqrn);
    let p = this.live.get(fqrn);
    if (!p) {
      // A mount point being unmounted is mounted again only once it is free.
      const free = this.closing.get(fqrn) ?? Promise.resolve();
      const mounting = free.then(() => this.mount(fqrn));
      p = mounting;
      this.live.set(fqrn, mounting);
      mounting.catch(() => { if (this.live.get(fqrn) === mounting) this.live.delete(fqrn); });
    }
    this.users.set(fqrn, (this.users.get(fqrn) ?? 0) + 1);
    let e: Entry;
    try {
      e = await p;
    } catch (err) {
      this.dropUser(fqrn);
      throw err;
    }
    let released = false;
    return {
      fqrn, root: e.root, repo: e.repo,
      release: async () => {
        if (released) return;
        released = true;
        if (this.dropUser(fqrn) > 0) return;
        if (this.idleMs <= 0) { await this.unmountIdle(fqrn); return; }
        const timer = setTimeout(() => {
          this.idle.delete(fqrn);
          this.unmountIdle(fqrn).catch((err: Error) => this.log('warn', `unmounting idle ${fqrn}: ${err.message}`));
        }, this.idleMs);
        timer.unref();
        this.idle.set(fqrn, timer);
      },
    };
  }

  private dropUser(fqrn: string): number {
    const n = (this.users.get(fqrn) ?? 1) - 1;
    if (n > 0) this.users.set(fqrn, n); else this.users.delete(fqrn);
    return n;
  }

  private cancelIdle(fqrn: string): void {
    const timer = this.idle.get(fqrn);
    if (timer) { clearTimeout(timer); this.idle.delete(fqrn); }
  }

  /** Unmounts a repository nobody uses (any more); a no-op if a user came back meanwhile. */
  private async unmountIdle(fqrn: string): Promise<void> {
    if ((this.users.get(fqrn) ?? 0) > 0) return;
    const p = this.live.get(fqrn);
    if (!p) return;
    this.live.delete(fqrn);
    const closing = (async () => {
      const e = await p.catch(() => undefined);
      if (!e) return;
      await e.mount.unmount().catch((err: Error) => this.log('warn', `unmounting ${fqrn}: ${err.message}`));
      this.lastCounters.set(fqrn, e.repo.counters());
      await e.repo.close();
      this.log('info', `unmounted ${fqrn}`);
    })();
    this.closing.set(fqrn, closing);
    try { await closing; } finally { if (this.closing.get(fqrn) === closing) this.closing.delete(fqrn); }
  }

  /**
   * Unmounts what a previous plugin process left mounted under the mount root: its FUSE servers
   * died with it (G4), so those mounts only answer ENOTCONN.
   */
  async sweepStale(): Promise<string[]> {
    const prefix = this.mountRoot + path.sep;
    const stale = [...await mountpoints()].filter((m) => m.startsWith(prefix)).sort().reverse();
    for (const m of stale) await unmount(m).catch((err: Error) => this.log('warn', `removing stale mount ${m}: ${err.message}`));
    return stale;
  }

  /**
   * Checks the servers for a newer revision of a repository that is mounted (in use or idle) and
   * switches to it (R5); the revision now served, or undefined when it is not mounted.
   */
  async refreshMounted(fqrn: string): Promise<number | undefined> {
    const e = await this.live.get(fqrn)?.catch(() => undefined);
    if (!e) return undefined;
    await e.repo.refresh().catch(() => false);
    return e.repo.revision;
  }

  /** Repositories mounted now, with their users. */
  active(): [string, number][] { return [...this.users]; }

  /** Mounted repositories, used or idle. */
  mounted(): string[] { return [...this.live.keys()]; }

  async releaseAll(): Promise<void> {
    for (const fqrn of [...this.idle.keys()]) this.cancelIdle(fqrn);
    this.users.clear();
    await Promise.all([...this.live.keys()].map((fqrn) => this.unmountIdle(fqrn)));
    await Promise.all([...this.closing.values()]);
  }

  /** Counters as last seen, kept after an unmount so that totals do not vanish. */
  private readonly lastCounters = new Map<string, RepositoryCounters>();

  /**
   * The client counters of every repository: mounted ones read now (a mount still in progress is
   * not waited for), unmounted ones as they were at the unmount. A remount starts its counters
   * from zero again. Never throws.
   */
  async snapshot(): Promise<RepositorySnapshot[]> {
    // Promises already settled win the race: their reactions run before setImmediate.
    const pending = new Promise<undefined>((resolve) => setImmediate(resolve, undefined));
    const live = await Promise.all([...this.live].map(async ([fqrn, p]) => [fqrn, await Promise.race([p.catch(() => undefined), pending])] as const));
    const out: RepositorySnapshot[] = [];
    for (const [fqrn, e] of live) {
      if (!e) continue;
      try {
        const counters = e.repo.counters();
        this.lastCounters.set(fqrn, counters);
        out.push({ fqrn, counters, mounted: true });
      } catch (err) {
        this.log('debug', `counters of ${fqrn}: ${(err as Error).message}`);
      }
    }
    for (const [fqrn, counters] of this.lastCounters) if (!out.some((s) => s.fqrn === fqrn)) out.push({ fqrn, counters, mounted: false });
    return out.sort((a, b) => a.fqrn.localeCompare(b.fqrn));
  }
}

/** One repository's client counters; `mounted: false` are the last ones seen before its unmount. */
export interface RepositorySnapshot {
  readonly fqrn: string;
  readonly counters: RepositoryCounters;
  readonly mounted: boolean;
}

/**
 * The repository as the overlay lowers see it: listxattr names only the xattrs stored with each
 * entry, not the client's magic ones (user.revision, user.counters, …), which overlayfs would
 * otherwise copy up into every file a container changes, and so into its commits (and a
 * published commit's catalog, where a counters value does not even fit). getxattr still answers
 * them. Every other call goes to the repository itself (`this` bound to it).
 */
function storedXattrsListed(repo: Repository): Repository {
  const listxattr = async (p: string): Promise<string[]> => [...decodeXattrs((await repo.stat(p)).xattr).keys()];
  return new Proxy(repo, {
    get(target, prop) {
      if (prop === 'listxattr') return listxattr;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
