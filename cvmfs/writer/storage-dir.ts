/** RepositoryStorage on a local directory: the tree a web server (or `cvmfs-repo serve`) serves. */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { CvmfsError } from '../errors.js';
import type { ObjectStats, RepositoryStorage, WriterLock } from './storage.js';

const run = promisify(execFile);
export const STAGING_DIR = 'data/txn';
const LOCK_FILE = `${STAGING_DIR}/writer.lock`;
/** Side files of the lock protocol, named after their writer's pid: a lock being created, or moved aside. */
const LOCK_SIDE_FILE = /^writer\.lock\.(\d+)-[0-9a-f]+\.(new|aside)$/;
const LOCK_ATTEMPTS = 5;

/** Points in the lock protocol where `DirStorageOptions.lockHook` is awaited. */
export type LockStep = 'stale-seen' | 'moved-aside';

export interface DirStorageOptions {
  /** Test-only: awaited at points of the lock protocol, so that tests can interleave writers. */
  readonly lockHook?: (step: LockStep) => Promise<void> | void;
}

function storageError(what: string, err: unknown): CvmfsError {
  return new CvmfsError('CVMFS_STORAGE_FAILED', `${what}: ${(err as Error).message}`, { cause: err });
}

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
}

/** "<pid> <nonce> <owner>" (or "<pid> <owner>" from older writers), for messages. */
function describeLock(content: string): string {
  const [pid, second, ...rest] = content.trim().split(' ');
  const owner = second !== undefined && /^[0-9a-f]{32}$/.test(second) ? rest : [second ?? '', ...rest];
  return pid ? `pid ${pid}${owner.join(' ').trim() ? `: ${owner.join(' ').trim()}` : ''}` : 'unknown';
}

export class DirStorage implements RepositoryStorage {
  readonly location: string;
  readonly localDir: string;
  private readonly root: string;

  constructor(root: string, private readonly options: DirStorageOptions = {}) {
    this.root = path.resolve(root);
    this.location = this.root;
    this.localDir = this.root;
  }

  private abs(name: string): string {
    const p = path.resolve(this.root, name);
    if (!p.startsWith(this.root + path.sep)) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `"${name}" lies outside the repository`);
    return p;
  }

  private tempName(): string {
    return this.abs(`${STAGING_DIR}/${process.pid}-${randomBytes(8).toString('hex')}.tmp`);
  }

  async init(): Promise<void> {
    try {
      await fs.mkdir(this.abs(STAGING_DIR), { recursive: true });
      await Promise.all(Array.from({ length: 256 }, (_, i) =>
        fs.mkdir(this.abs(`data/${i.toString(16).padStart(2, '0')}`), { recursive: true })));
    } catch (err) {
      throw storageError(`cannot create the repository tree in ${this.root}`, err);
    }
  }

  async get(name: string): Promise<Buffer | undefined> {
    try {
      return await fs.readFile(this.abs(name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw storageError(`cannot read ${name} in ${this.root}`, err);
    }
  }

  async putObject(objectPath: string, data: Uint8Array): Promise<'written' | 'present'> {
    const dest = this.abs(objectPath);
    try {
      await fs.access(dest, fsc.F_OK);
      return 'present';
    } catch { /* absent: write it */ }
    const tmp = this.tempName();
    try {
      await fs.writeFile(tmp, data, { mode: 0o644 });
      await fs.rename(tmp, dest);
      return 'written';
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw storageError(`cannot store object ${objectPath} in ${this.root}`, err);
    }
  }

  async flush(): Promise<void> {
    // One syncfs(2) for the whole file system is far cheaper than an fsync per object.
    try { await run('sync', ['-f', this.root]); } catch (err) { throw storageError(`cannot flush ${this.root} to disk`, err); }
  }

  async putLetter(name: string, data: Uint8Array): Promise<void> {
    const dest = this.abs(name);
    const tmp = `${dest}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`;
    try {
      const fh = await fs.open(tmp, 'w', 0o644);
      try { await fh.writeFile(data); await fh.sync(); } finally { await fh.close(); }
      await fs.rename(tmp, dest);
      const dir = await fs.open(path.dirname(dest), 'r');
      try { await dir.sync(); } finally { await dir.close(); }
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw storageError(`cannot write ${name} in ${this.root}`, err);
    }
  }

  /*
   * The writer lock: `data/txn/writer.lock` holds "<pid> <nonce> <owner>". The nonce makes every
   * lock's content unique, so "is this still the lock I saw / I took?" is a comparison of bytes.
   *
   * - Taking it: the content is written to a side file and link(2)ed to the lock name. link never
   *   overwrites (EEXIST), and a reader never sees a half-written lock.
   * - Taking over a lock whose pid is dead: rename(2) the lock aside to a name of our own (atomic:
   *   exactly one of several takers gets any given lock file), read what was moved, and
   *   - if it is the stale lock we saw, drop it and try to take the lock afresh (via link, so of
   *     several takers at most one wins; the others see a live lock and give up);
   *   - if it is not (between our read and our rename another taker dropped the stale lock and
   *     took its own), put it back with link(2). If a third writer took the lock in the short
   *     gap while it was away, the link fails with EEXIST and the lock we moved cannot be put
   *     back without overwriting the third one; it is dropped, and its holder finds out below.
   * - Releasing: only when the lock still holds our content, and again by rename-aside-and-check,
   *   so a writer never removes a lock that is not its own.
   * - Second line of defence: `verify()` re-reads the lock right before each letter (whitelist,
   *   manifest) is written, and the writer aborts with CVMFS_REPO_LOCKED if it is no longer its
   *   own, leaving the previous revision. What remains is a takeover landing between `verify()`
   *   and the rename of the letter (it needs a stale lock, two takers and a third writer in a
   *   window of microseconds). Even then nothing is corrupted: objects are content-addressed and
   *   only ever added, the sweep of staging files only touches `*.tmp` in data/txn, and each
   *   letter is replaced atomically, so the last manifest wins whole (a lost update, not a torn
   *   repository).
   * - A pid is "dead" when kill(pid, 0) fails with ESRCH; writers sharing the tree from different
   *   pid namespaces (containers) must not rely on the takeover.
   */
  async lock(owner: string): Promise<WriterLock> {
    const file = this.abs(LOCK_FILE);
    try { await fs.mkdir(path.dirname(file), { recursive: true }); } catch (err) { throw storageError(`cannot create ${path.dirname(file)}`, err); }
    const mine = `${process.pid} ${randomBytes(16).toString('hex')} ${owner.replace(/\s+/g, ' ')}\n`;
    for (let attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
      if (await this.createLock(file, mine)) return this.heldLock(file, mine);
      const holder = await this.readLock(file);
      if (holder === undefined) continue; // released meanwhile
      const pid = Number(holder.split(' ')[0]);
      if (!(Number.isInteger(pid) && pid > 0 && !pidAlive(pid))) {
        throw new CvmfsError('CVMFS_REPO_LOCKED',
          `repository ${this.root} is being written by another process (${describeLock(holder)}); wait for it, or remove ${file} if that process is gone`);
      }
      await this.hook('stale-seen');
      await this.removeIf(file, holder); // left by a writer that died: take over (any outcome: try again)
    }
    throw new CvmfsError('CVMFS_REPO_LOCKED', `could not take the writer lock ${file}: other writers keep taking it over; try again`);
  }

  private sideName(kind: 'new' | 'aside'): string {
    return this.abs(`${STAGING_DIR}/writer.lock.${process.pid}-${randomBytes(8).toString('hex')}.${kind}`);
  }

  private async hook(step: LockStep): Promise<void> {
    if (this.options.lockHook) await this.options.lockHook(step);
  }

  /** The lock's content, or undefined when there is none. */
  private async readLock(file: string): Promise<string | undefined> {
    try {
      return await fs.readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw storageError(`cannot read lock ${file}`, err);
    }
  }

  /** Creates the lock with `content` unless one exists (link(2) never overwrites). */
  private async createLock(file: string, content: string): Promise<boolean> {
    const tmp = this.sideName('new');
    try {
      await fs.writeFile(tmp, content, { flag: 'wx', mode: 0o644 });
      await fs.link(tmp, file);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw storageError(`cannot create lock ${file}`, err);
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  /**
   * Removes the lock if its content is `expected`, atomically: it is renamed aside, checked, and
   * put back with link(2) if it turns out to be another one (see the comment on `lock`).
   */
  private async removeIf(file: string, expected: string): Promise<'removed' | 'absent' | 'mismatch'> {
    const aside = this.sideName('aside');
    try {
      await fs.rename(file, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
      throw storageError(`cannot move lock ${file} aside`, err);
    }
    let moved: string | undefined;
    let readErr: unknown;
    try {
      await this.hook('moved-aside');
      moved = await fs.readFile(aside, 'utf8');
    } catch (err) { readErr = err; }
    if (readErr === undefined && moved === expected) {
      await fs.rm(aside, { force: true });
      return 'removed';
    }
    try {
      await fs.link(aside, file);
    } catch (err) {
      // EEXIST: a third writer took the lock while this one was aside; it cannot be put back
      // without overwriting that one, so it is dropped, and its holder's verify() fails.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw storageError(`cannot put lock ${file} back from ${aside} (move it back by hand)`, err);
      }
    }
    await fs.rm(aside, { force: true });
    if (readErr !== undefined) throw storageError(`cannot read lock ${aside}`, readErr);
    return 'mismatch';
  }

  private heldLock(file: string, mine: string): WriterLock {
    let released = false;
    return {
      verify: async () => {
        const now = released ? undefined : await this.readLock(file);
        if (now !== mine) {
          throw new CvmfsError('CVMFS_REPO_LOCKED',
            `the writer lock ${file} is no longer held by this writer (${now === undefined ? 'it is gone' : `now ${describeLock(now)}`}): ` +
            'another writer took it over; not publishing, the repository stays at its previous revision');
        }
      },
      release: async () => {
        if (released) return;
        released = true;
        if ((await this.readLock(file)) !== mine) return; // taken over: not ours to remove
        await this.removeIf(file, mine);
      },
    };
  }

  /** Removes staging files left by interrupted writers (called while holding the lock). */
  async sweepStaging(): Promise<void> {
    const dir = this.abs(STAGING_DIR);
    const names = await fs.readdir(dir).catch(() => [] as string[]);
    const leftover = (n: string): boolean => {
      if (n.endsWith('.tmp')) return true;
      const side = LOCK_SIDE_FILE.exec(n); // a lock file in flight: only its writer's own, unless that writer died
      return side !== null && !pidAlive(Number(side[1]));
    };
    await Promise.all(names.filter(leftover).map((n) => fs.rm(path.join(dir, n), { force: true })));
  }

  async objectStats(): Promise<ObjectStats> {
    let count = 0, bytes = 0;
    for (let i = 0; i < 256; i++) {
      const dir = this.abs(`data/${i.toString(16).padStart(2, '0')}`);
      const names = await fs.readdir(dir).catch(() => [] as string[]);
      for (const n of names) {
        const st = await fs.stat(path.join(dir, n)).catch(() => undefined);
        if (st?.isFile()) { count++; bytes += st.size; }
      }
    }
    return { count, bytes };
  }
}
