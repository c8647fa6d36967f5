/** RepositoryStorage on a local directory: the tree a web server (or `cvmfs-repo serve`) serves. */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { CvmfsError } from '../errors.js';
import { isStaleSideFile, takeFileLock, type LockStep } from './file-lock.js';
import type { ObjectStats, RepositoryStorage, WriterLock } from './storage.js';

const run = promisify(execFile);
export const STAGING_DIR = 'data/txn';
const LOCK_FILE = `${STAGING_DIR}/writer.lock`;
export type { LockStep } from './file-lock.js';

export interface DirStorageOptions {
  /** Test-only: awaited at points of the lock protocol, so that tests can interleave writers. */
  readonly lockHook?: (step: LockStep) => Promise<void> | void;
}

function storageError(what: string, err: unknown): CvmfsError {
  return new CvmfsError('CVMFS_STORAGE_FAILED', `${what}: ${(err as Error).message}`, { cause: err });
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

  /** The writer lock: `data/txn/writer.lock`, by the protocol of file-lock.ts. */
  async lock(owner: string): Promise<WriterLock> {
    const file = this.abs(LOCK_FILE);
    try { await fs.mkdir(path.dirname(file), { recursive: true }); } catch (err) { throw storageError(`cannot create ${path.dirname(file)}`, err); }
    return takeFileLock({ file, what: `repository ${this.root}`, ...(this.options.lockHook ? { hook: this.options.lockHook } : {}) }, owner);
  }

  /** Removes staging files left by interrupted writers (called while holding the lock). */
  async sweepStaging(): Promise<void> {
    const dir = this.abs(STAGING_DIR);
    const names = await fs.readdir(dir).catch(() => [] as string[]);
    const lockFile = this.abs(LOCK_FILE);
    // A lock file in flight: only its writer's own, unless that writer died.
    const leftover = (n: string): boolean => n.endsWith('.tmp') || isStaleSideFile(lockFile, n);
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
