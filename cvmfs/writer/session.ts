/**
 * What every writing command shares: the clock, the scratch directory, the writer lock, repository
 * path normalisation, and the checks made before anything is written (keys outside the served
 * tree, certificate listed in the whitelist).
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CvmfsError } from '../errors.js';
import { fingerprintOf, fingerprintToTextual } from '../format/hash.js';
import type { SigningKeys } from './keys.js';
import type { RepositoryState } from './repository-state.js';
import type { RepositoryStorage, WriterLock } from './storage.js';
import { NAME_MAX_BYTES, PATH_MAX_BYTES } from './tree.js';

export interface Clock { now(): Date }
export const systemClock: Clock = { now: () => new Date() };

export async function withScratch<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cvmfs-repo-'));
  try { return await fn(dir); } finally { await fs.rm(dir, { recursive: true, force: true }); }
}

export async function underLock<T>(storage: RepositoryStorage, what: string, fn: (lock: WriterLock) => Promise<T>): Promise<T> {
  const lock = await storage.lock(what);
  try {
    await storage.sweepStaging();
    return await fn(lock);
  } finally {
    await lock.release();
  }
}

/** A string for messages: NULs shown as \0, long ones cut after `max` characters. */
function shown(s: string, max = 60): string {
  const v = s.replace(/\0/g, '\\0');
  return v.length > max ? `${v.slice(0, max)}…` : v;
}

/**
 * Normalises a repository path: absolute, no trailing slash, no `.`/`..`/empty components, at
 * most NAME_MAX_BYTES per component and PATH_MAX_BYTES in all (what a Linux client can look up).
 */
export function normalizeRepoPath(p: string): string {
  if (!p.startsWith('/')) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `repository path "${shown(p)}" must be absolute (start with /)`);
  const parts = p.split('/').filter((c) => c !== '');
  for (const c of parts) {
    if (c === '.' || c === '..' || c.includes('\0')) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `repository path "${shown(p)}" contains "${shown(c)}"`);
    const n = Buffer.byteLength(c);
    if (n > NAME_MAX_BYTES) {
      throw new CvmfsError('CVMFS_BAD_ARGUMENT', `repository path "${shown(p)}": the name "${shown(c, 40)}" is ${n} bytes; at most ${NAME_MAX_BYTES}`);
    }
  }
  const normal = parts.length ? '/' + parts.join('/') : '';
  const n = Buffer.byteLength(normal);
  if (n > PATH_MAX_BYTES) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `repository path "${shown(p)}" is ${n} bytes; at most ${PATH_MAX_BYTES}`);
  return normal;
}

/**
 * Where `p` really is: absolute, with every symlink along it resolved, including dangling ones and
 * those met inside symlink targets. The part that does not exist yet is appended as it is, as
 * `mkdir -p` would create it. (Lexical normalisation first, as the writer's own paths get it.)
 */
async function physicalPath(p: string): Promise<string> {
  const pending = path.resolve(p).split('/');
  let cur = '/';
  let links = 0;
  let missing = false;
  while (pending.length) {
    const c = pending.shift()!;
    if (c === '' || c === '.') continue;
    if (c === '..') { cur = path.dirname(cur); continue; }
    const next = path.join(cur, c);
    if (!missing) {
      const st = await fs.lstat(next).catch(() => undefined);
      if (st === undefined) missing = true;
      else if (st.isSymbolicLink()) {
        if (++links > 40) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `${p}: too many levels of symbolic links`);
        const target = await fs.readlink(next);
        pending.unshift(...target.split('/'));
        if (target.startsWith('/')) cur = '/';
        continue;
      }
    }
    cur = next;
  }
  return cur;
}

const within = (inner: string, outer: string): boolean =>
  inner === outer || inner.startsWith(outer.endsWith(path.sep) ? outer : outer + path.sep);

/**
 * Refuses a key directory inside the served tree, following symlinks on either side (a key
 * directory reached through a symlink into the tree, or a tree reached through a symlink). A tree
 * inside the key directory is allowed: the keys then sit above what is served, not in it.
 */
export async function checkKeysNotServed(storage: RepositoryStorage, keysDir: string): Promise<void> {
  if (storage.localDir === undefined) return;
  const [keys, served] = await Promise.all([physicalPath(keysDir), physicalPath(storage.localDir)]);
  if (within(keys, served)) {
    const real = [[keysDir, keys], [storage.localDir, served]].filter(([given, is]) => path.resolve(given!) !== is);
    const via = real.length ? ` (through symlinks: ${real.map(([given, is]) => `${given} is ${is}`).join(', ')})` : '';
    throw new CvmfsError('CVMFS_BAD_ARGUMENT',
      `the key directory ${path.resolve(keysDir)} lies inside the served tree ${storage.location}${via}; private keys must never be served: move them out of the tree`);
  }
}

/** The certificate must be listed in the current whitelist, or clients would reject the revision. */
export function checkCertificateListed(state: RepositoryState, keys: SigningKeys, keysDir: string): void {
  const listed = state.whitelist.fingerprints;
  const fp = fingerprintToTextual(fingerprintOf(state.algo, keys.certDer));
  const fpSha1 = fingerprintToTextual(fingerprintOf('sha1', keys.certDer));
  if (!listed.includes(fp) && !listed.includes(fpSha1)) {
    throw new CvmfsError('CVMFS_KEYS_MISMATCH',
      `the certificate in ${keysDir} is not listed in the whitelist of ${state.manifest.fqrn}: wrong key directory for this repository?`);
  }
}
