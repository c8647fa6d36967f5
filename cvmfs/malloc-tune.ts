/**
 * For processes that run the writer (the CLIs call it first): a fixed glibc mmap threshold, so that
 * freed file bodies and chunks go back to the system instead of staying in the heap (see
 * native/malloc-tune). Process-wide, hence never called by the library itself. A no-op where the
 * addon is not built or the C library is not glibc.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';

export const WRITER_MMAP_THRESHOLD_BYTES = 256 * 1024;

const require = createRequire(import.meta.url);
// From cvmfs/ (sources under test) or dist/cvmfs/ (the build).
const CANDIDATES = ['../native/malloc-tune/build/Release/malloc_tune.node', '../../native/malloc-tune/build/Release/malloc_tune.node']
  .map((p) => new URL(p, import.meta.url));

/** True when the threshold was set. */
export function tuneMallocForWriter(bytes = WRITER_MMAP_THRESHOLD_BYTES): boolean {
  const addon = CANDIDATES.find((u) => fs.existsSync(u));
  if (addon === undefined) return false;
  const m = require(addon.pathname) as { setMmapThreshold(bytes: number): boolean };
  return m.setMmapThreshold(bytes);
}
