/**
 * Metadata calls that never follow a symlink at the final component (the layer code checks every
 * parent itself). Linux has no lchmod: a file is opened with O_PATH|O_NOFOLLOW, which opens a
 * symlink itself rather than its target, its type is checked on that descriptor, and the mode is
 * set through /proc/self/fd, as glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does. Regular files are
 * created exclusively (O_EXCL|O_NOFOLLOW), so a write never lands on something already there.
 */
import { chmodSync, closeSync, constants as fsc, fstatSync, openSync, type Stats } from 'node:fs';
import fs from 'node:fs/promises';

/** Linux's O_PATH (asm-generic, x86_64 and arm64); Node does not export it. */
const O_PATH = 0o10000000;

export class SymlinkRefused extends Error {}

/** chmod that refuses a symlink instead of changing its target. */
export function chmodNoFollow(p: string, mode: number): Stats {
  const fd = openSync(p, O_PATH | fsc.O_NOFOLLOW);
  try {
    const st = fstatSync(fd);
    if (st.isSymbolicLink()) throw new SymlinkRefused(`${p} is a symlink`);
    chmodSync(`/proc/self/fd/${fd}`, mode);
    return st;
  } finally {
    closeSync(fd);
  }
}

/** A new regular file, opened for writing; fails if anything exists at `p`. */
export function createExclusive(p: string, mode: number): Promise<fs.FileHandle> {
  return fs.open(p, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, mode);
}
