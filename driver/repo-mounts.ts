/**
 * One FUSE mount per repository, shared and reference-counted: mounted for the first layer that
 * needs it, unmounted when the last one is Put (R2). A failed mount is not counted (R3). Whiteouts
 * are presented in overlay form (R12), symlink targets verbatim (R13), owners as stored (R14).
 * Configuration is uniform per repository (R11): server URLs (a default pattern with @fqrn@, or
 * per repository), proxies, and master public keys from `<keysDir>/<fqrn>.pub`, else a domain key
 * `<keysDir>/<domain>.pub` for a parent domain (as `/etc/cvmfs/keys/cern.ch.pub` serves *.cern.ch).
 * A repository with neither is not configured.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { mountRepository, type Mount } from '../cvmfs/fuse/index.js';
import { openRepository, type Repository } from '../cvmfs/reader/index.js';
import type { Logger } from './driver.js';
import { DriverError } from './errors.js';

export interface RepositoryConfig {
  readonly servers: readonly string[];
  readonly perRepository?: Readonly<Record<string, { readonly servers?: readonly string[]; readonly proxy?: string }>>;
  readonly proxy?: string;
  readonly keysDir: string;
  readonly cacheDir: string;
  readonly quotaBytes?: number;
  readonly timeoutMs?: number;
}

export interface RepoLease {
  readonly fqrn: string;
  /** Where the repository root is mounted. */
  readonly root: string;
  readonly repo: Repository;
  release(): Promise<void>;
}

interface Entry { count: number; repo: Repository; mount: Mount; root: string }

export class RepoMounts {
  private readonly entries = new Map<string, Promise<Entry>>();
  private readonly counts = new Map<string, number>();

  constructor(private readonly config: RepositoryConfig, private readonly mountRoot: string, private readonly log: Logger) {}

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
      const mount = await mountRepository(repo, { mountpoint: root, overlayWhiteouts: true, allowOther: true, log: (l) => this.log('warn', l) });
      this.log('info', `mounted ${fqrn} revision ${repo.revision} at ${root}`);
      return { count: 0, repo, mount, root };
    } catch (err) {
      await repo.close();
      throw new DriverError('DRIVER_REPOSITORY_UNAVAILABLE', `cannot mount repository ${fqrn} at ${root}: ${(err as Error).message}`, { cause: err });
    }
  }

  async acquire(fqrn: string): Promise<RepoLease> {
    let p = this.entries.get(fqrn);
    if (!p) {
      p = this.mount(fqrn);
      this.entries.set(fqrn, p);
      p.catch(() => { if (this.entries.get(fqrn) === p) this.entries.delete(fqrn); });
    }
    const e = await p;
    this.counts.set(fqrn, (this.counts.get(fqrn) ?? 0) + 1);
    let released = false;
    return {
      fqrn, root: e.root, repo: e.repo,
      release: async () => {
        if (released) return;
        released = true;
        const n = (this.counts.get(fqrn) ?? 1) - 1;
        if (n > 0) { this.counts.set(fqrn, n); return; }
        this.counts.delete(fqrn);
        this.entries.delete(fqrn);
        await e.mount.unmount().catch((err: Error) => this.log('warn', `unmounting ${fqrn}: ${err.message}`));
        await e.repo.close();
        this.log('info', `unmounted ${fqrn}`);
      },
    };
  }

  /** Repositories mounted now, with their users. */
  active(): [string, number][] { return [...this.counts]; }

  async releaseAll(): Promise<void> {
    for (const [fqrn, p] of [...this.entries]) {
      this.entries.delete(fqrn);
      this.counts.delete(fqrn);
      const e = await p.catch(() => undefined);
      if (e) { await e.mount.unmount().catch(() => {}); await e.repo.close(); }
    }
  }
}
