/**
 * Xattr blob (docs/cvmfs-format.md §11.11): 1-byte version, count, then per attribute 1-byte key
 * and value lengths, key bytes, value bytes, keys in ascending byte order. (The upstream docs say
 * 8-byte fields; the format uses 1-byte fields.)
 */
import { CvmfsError } from '../errors.js';

export const XATTR_MAX_COUNT = 255;
export const XATTR_MAX_KEY_BYTES = 255;
export const XATTR_MAX_VALUE_BYTES = 255;

export type Xattrs = ReadonlyMap<string, Buffer>;

export function encodeXattrs(attrs: Xattrs): Buffer | null {
  if (attrs.size === 0) return null;
  if (attrs.size > XATTR_MAX_COUNT) {
    throw new CvmfsError('CVMFS_BAD_XATTR', `${attrs.size} extended attributes; at most ${XATTR_MAX_COUNT} fit a catalog entry`);
  }
  const entries = [...attrs].map(([k, v]) => [Buffer.from(k, 'utf8'), v] as const)
    .sort((a, b) => Buffer.compare(a[0], b[0]));
  const out: Buffer[] = [Buffer.from([1, entries.length])];
  for (const [k, v] of entries) {
    if (k.length === 0 || k.includes(0)) throw new CvmfsError('CVMFS_BAD_XATTR', 'extended attribute with an empty name or a NUL byte in its name');
    if (k.length > XATTR_MAX_KEY_BYTES) throw new CvmfsError('CVMFS_BAD_XATTR', `extended attribute name "${k.toString('utf8', 0, 40)}…" is ${k.length} bytes; at most ${XATTR_MAX_KEY_BYTES}`);
    if (v.length > XATTR_MAX_VALUE_BYTES) throw new CvmfsError('CVMFS_BAD_XATTR', `extended attribute "${k.toString('utf8')}" has a ${v.length}-byte value; at most ${XATTR_MAX_VALUE_BYTES} fit a catalog entry`);
    out.push(Buffer.from([k.length, v.length]), k, v);
  }
  return Buffer.concat(out);
}

export function decodeXattrs(blob: Uint8Array | null): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  if (blob === null || blob.length === 0) return out;
  const b = Buffer.from(blob);
  const bad = (why: string) => new CvmfsError('CVMFS_BAD_XATTR', `corrupt xattr blob: ${why}`);
  if (b[0] !== 1) throw bad(`version ${b[0]}`);
  const count = b[1] ?? 0;
  let pos = 2;
  for (let i = 0; i < count; i++) {
    const kl = b[pos], vl = b[pos + 1];
    if (kl === undefined || vl === undefined || pos + 2 + kl + vl > b.length) throw bad('truncated');
    if (kl === 0 && vl === 0) throw bad('empty entry');
    const key = b.toString('utf8', pos + 2, pos + 2 + kl);
    out.set(key, b.subarray(pos + 2 + kl, pos + 2 + kl + vl));
    pos += 2 + kl + vl;
  }
  return out;
}
