/** Real FUSE mounts need root, /dev/fuse and fusermount: skip loudly, never silently. */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

export function fuseUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'not running as root';
  if (!fs.existsSync('/dev/fuse')) return '/dev/fuse is missing';
  try { execFileSync('sh', ['-c', 'command -v fusermount'], { stdio: 'ignore' }); } catch { return 'fusermount is not installed (Debian package "fuse")'; }
  return null;
}

export function skipWithoutFuse(t: { skip: (...args: never[]) => unknown; comment: (...args: never[]) => unknown }): boolean {
  const why = fuseUnavailable();
  if (why === null) return false;
  const msg = `FUSE TESTS SKIPPED: ${why}; these tests need real FUSE mounts`;
  console.error(`\n*** ${msg} ***\n`);
  (t.comment as (m: string) => void)(msg);
  (t.skip as (m: string) => void)(msg);
  return true;
}
