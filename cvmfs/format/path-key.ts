/** MD5 path keys (docs/cvmfs-format.md §11.6). The root is "", never "/". */
import { createHash } from 'node:crypto';

export type PathKey = readonly [bigint, bigint];

export function pathKey(path: string): PathKey {
  const d = createHash('md5').update(path, 'utf8').digest();
  return [d.readBigInt64LE(0), d.readBigInt64LE(8)];
}

/** `/a/b` → `/a`; `/a` → `""`. */
export function parentPathOf(path: string): string {
  return path.slice(0, Math.max(0, path.lastIndexOf('/')));
}

export function baseNameOf(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** True when `path` equals `prefix` or lies below it on a `/` boundary. */
export function isPathWithin(path: string, prefix: string): boolean {
  return prefix === '' || path === prefix || path.startsWith(prefix + '/');
}

/** The root-path MD5 every manifest carries as `R`. */
export const ROOT_PATH_MD5 = 'd41d8cd98f00b204e9800998ecf8427e';
