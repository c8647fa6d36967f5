/**
 * The single-writer lock as a file on a local file system, shared by DirStorage (the lock lives in
 * the repository's staging area) and S3Storage (the lock lives in a private state directory of
 * the writer host, keyed by the bucket).
 *
 * The lock file holds "<pid> <nonce> <owner>". The nonce makes every lock's content unique, so
 * "is this still the lock I saw / I took?" is a comparison of bytes.
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
 *   and the write of the letter (it needs a stale lock, two takers and a third writer in a
 *   window of microseconds). Even then nothing is corrupted: objects are content-addressed and
 *   only ever added, and each letter is replaced atomically, so the last manifest wins whole (a
 *   lost update, not a torn repository).
 * - A pid is "dead" when kill(pid, 0) fails with ESRCH; writers sharing the lock from different
 *   pid namespaces (containers) must not rely on the takeover.
 *
 * Side files (`<lock name>.<pid>-<hex>.new|aside`) sit next to the lock; `isStaleSideFile` tells
 * which of them a sweep may remove (those of writers that died).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CvmfsError } from '../errors.js';
import type { WriterLock } from './storage.js';

const LOCK_ATTEMPTS = 5;

/** Points in the lock protocol where `FileLockOptions.hook` is awaited. */
export type LockStep = 'stale-seen' | 'moved-aside';

export interface FileLockOptions {
  /** Absolute path of the lock file; its directory must exist. */
  readonly file: string;
  /** What the lock guards, for messages, e.g. "repository /srv/cvmfs/x". */
  readonly what: string;
  /** Test-only: awaited at points of the protocol, so that tests can interleave writers. */
  readonly hook?: (step: LockStep) => Promise<void> | void;
}

function storageError(what: string, err: unknown): CvmfsError {
  return new CvmfsError('CVMFS_STORAGE_FAILED', `${what}: ${(err as Error).message}`, { cause: err });
}

export function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
}

/** "<pid> <nonce> <owner>" (or "<pid> <owner>" from older writers), for messages. */
export function describeLock(content: string): string {
  const [pid, second, ...rest] = content.trim().split(' ');
  const owner = second !== undefined && /^[0-9a-f]{32}$/.test(second) ? rest : [second ?? '', ...rest];
  return pid ? `pid ${pid}${owner.join(' ').trim() ? `: ${owner.join(' ').trim()}` : ''}` : 'unknown';
}

const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Whether `name` (in the lock's directory) is a side file of the lock protocol left by a writer that died. */
export function isStaleSideFile(lockFile: string, name: string): boolean {
  const m = new RegExp(`^${escapeRe(path.basename(lockFile))}\\.(\\d+)-[0-9a-f]+\\.(new|aside)$`).exec(name);
  return m !== null && !pidAlive(Number(m[1]));
}

/** Removes the side files of writers that died from the lock's directory. */
export async function sweepStaleSideFiles(lockFile: string): Promise<void> {
  const dir = path.dirname(lockFile);
  const names = await fs.readdir(dir).catch(() => [] as string[]);
  await Promise.all(names.filter((n) => isStaleSideFile(lockFile, n)).map((n) => fs.rm(path.join(dir, n), { force: true })));
}

/** Takes the lock for `owner`, or fails with CVMFS_REPO_LOCKED naming the holder. */
export async function takeFileLock(o: FileLockOptions, owner: string): Promise<WriterLock> {
  const { file } = o;
  const mine = `${process.pid} ${randomBytes(16).toString('hex')} ${owner.replace(/\s+/g, ' ')}\n`;
  for (let attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
    if (await createLock(file, mine)) return heldLock(file, mine, o);
    const holder = await readLock(file);
    if (holder === undefined) continue; // released meanwhile
    const pid = Number(holder.split(' ')[0]);
    if (!(Number.isInteger(pid) && pid > 0 && !pidAlive(pid))) {
      throw new CvmfsError('CVMFS_REPO_LOCKED',
        `${o.what} is being written by another process (${describeLock(holder)}); wait for it, or remove ${file} if that process is gone`);
    }
    if (o.hook) await o.hook('stale-seen');
    await removeIf(file, holder, o); // left by a writer that died: take over (any outcome: try again)
  }
  throw new CvmfsError('CVMFS_REPO_LOCKED', `could not take the writer lock ${file}: other writers keep taking it over; try again`);
}

function sideName(file: string, kind: 'new' | 'aside'): string {
  return `${file}.${process.pid}-${randomBytes(8).toString('hex')}.${kind}`;
}

/** The lock's content, or undefined when there is none. */
async function readLock(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw storageError(`cannot read lock ${file}`, err);
  }
}

/** Creates the lock with `content` unless one exists (link(2) never overwrites). */
async function createLock(file: string, content: string): Promise<boolean> {
  const tmp = sideName(file, 'new');
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
 * put back with link(2) if it turns out to be another one (see the comment at the top).
 */
async function removeIf(file: string, expected: string, o: FileLockOptions): Promise<'removed' | 'absent' | 'mismatch'> {
  const aside = sideName(file, 'aside');
  try {
    await fs.rename(file, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
    throw storageError(`cannot move lock ${file} aside`, err);
  }
  let moved: string | undefined;
  let readErr: unknown;
  try {
    if (o.hook) await o.hook('moved-aside');
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

function heldLock(file: string, mine: string, o: FileLockOptions): WriterLock {
  let released = false;
  return {
    verify: async () => {
      const now = released ? undefined : await readLock(file);
      if (now !== mine) {
        throw new CvmfsError('CVMFS_REPO_LOCKED',
          `the writer lock ${file} is no longer held by this writer (${now === undefined ? 'it is gone' : `now ${describeLock(now)}`}): ` +
          'another writer took it over; not publishing, the repository stays at its previous revision');
      }
    },
    release: async () => {
      if (released) return;
      released = true;
      if ((await readLock(file)) !== mine) return; // taken over: not ours to remove
      await removeIf(file, mine, o);
    },
  };
}
