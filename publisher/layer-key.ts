/**
 * Object key → the layer digest it names (R41). The plugin uploads a committed layer under the hex
 * sha256 of its compressed bytes (thin-images-and-layout.md §3.6); we also take `sha256:<hex>` and
 * a file-name suffix, in the last path component of the key:
 *
 *   layers/9f2c…e1            sha256:9f2c…e1
 *   sha256:9f2c…e1.tar.gz     sha256:9f2c…e1
 *
 * A key naming no sha256 cannot be verified; the publisher refuses it unless told otherwise.
 */
const SUFFIX = /\.(tar\.gz|tgz|tar\.zst|tar\.zstd|tar)$/;
const HEX64 = /^[0-9a-f]{64}$/;

/** `sha256:<64 hex>` named by the key, or undefined. Hex must be lowercase, as digests are written. */
export function digestOfKey(key: string): string | undefined {
  const last = key.slice(key.lastIndexOf('/') + 1).replace(SUFFIX, '');
  const hex = last.startsWith('sha256:') ? last.slice('sha256:'.length) : last;
  return HEX64.test(hex) ? `sha256:${hex}` : undefined;
}
