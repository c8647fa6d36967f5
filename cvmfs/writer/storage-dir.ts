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

function storageError(what: string, err: unknown): CvmfsError {
  return new CvmfsError('CVMFS_STORAGE_FAILED', `${what}: ${(err as Error).message}`, { cause: err });
}

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
}

export class DirStorage implements RepositoryStorage {
  readonly location: string;
  private readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
    this.location = this.root;
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

  async lock(owner: string): Promise<WriterLock> {
    const file = this.abs(LOCK_FILE);
    await fs.mkdir(path.dirname(file), { recursive: true });
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await fs.writeFile(file, `${process.pid} ${owner}\n`, { flag: 'wx' });
        let released = false;
        return {
          release: async () => {
            if (released) return;
            released = true;
            await fs.rm(file, { force: true });
          },
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw storageError(`cannot create lock ${file}`, err);
        const holder = (await fs.readFile(file, 'utf8').catch(() => '')).trim();
        const pid = Number(holder.split(' ')[0]);
        if (Number.isInteger(pid) && pid > 0 && !pidAlive(pid)) {
          await fs.rm(file, { force: true }); // left by a writer that died; take over
          continue;
        }
        throw new CvmfsError('CVMFS_REPO_LOCKED',
          `repository ${this.root} is being written by another process (${holder || 'unknown'}); wait for it, or remove ${file} if that process is gone`);
      }
    }
    throw new CvmfsError('CVMFS_REPO_LOCKED', `could not take the writer lock ${file}`);
  }

  /** Removes staging files left by interrupted writers (called while holding the lock). */
  async sweepStaging(): Promise<void> {
    const dir = this.abs(STAGING_DIR);
    const names = await fs.readdir(dir).catch(() => [] as string[]);
    await Promise.all(names.filter((n) => n.endsWith('.tmp')).map((n) => fs.rm(path.join(dir, n), { force: true })));
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
