/**
 * For processes that run the writer (the CLIs call it first, before any worker starts): a fixed
 * glibc mmap threshold, so that freed file bodies and chunks go back to the system instead of
 * staying in the heap, and at most WRITER_MALLOC_ARENAS malloc arenas, so that each deflate worker
 * does not keep an arena of what it freed (see native/malloc-tune). Process-wide, hence never
 * called by the library itself. A no-op where the addon is not built or the C library is not glibc.
 *
 * The writer's CLIs also start Node with WRITER_ENV and WRITER_NODE_FLAGS (in their `#!` line):
 * MALLOC_ARENA_MAX from the start, before Node's own threads make arenas (mallopt later caps only
 * the arenas made after it), and 2 MiB young generation semi-spaces instead of 16 MiB, since the
 * writer's garbage is buffers outside the heap. Together they took a 1 GiB convert from 293-318 MB
 * peak RSS to 255-271 MB at the same rate.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';

export const WRITER_MMAP_THRESHOLD_BYTES = 256 * 1024;
export const WRITER_MALLOC_ARENAS = 2;
export const WRITER_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=2'];
export const WRITER_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: String(WRITER_MALLOC_ARENAS) };

const require = createRequire(import.meta.url);
// From cvmfs/ (sources under test) or dist/cvmfs/ (the build).
const CANDIDATES = ['../native/malloc-tune/build/Release/malloc_tune.node', '../../native/malloc-tune/build/Release/malloc_tune.node']
  .map((p) => new URL(p, import.meta.url));

/** True when both settings were made. */
export function tuneMallocForWriter(bytes = WRITER_MMAP_THRESHOLD_BYTES, arenas = WRITER_MALLOC_ARENAS): boolean {
  const addon = CANDIDATES.find((u) => fs.existsSync(u));
  if (addon === undefined) return false;
  const m = require(addon.pathname) as { setMmapThreshold(bytes: number): boolean; setArenaMax?(arenas: number): boolean };
  const threshold = m.setMmapThreshold(bytes);
  // An addon built before setArenaMax existed still sets the threshold.
  return (m.setArenaMax?.(arenas) ?? false) && threshold;
}
