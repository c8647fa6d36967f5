/** Content-addressed objects (docs/cvmfs-format.md §3–§4). */
import { deflateSync, inflateSync, constants as zc } from 'node:zlib';
import { digestOf, textualHash, type HashAlgo } from './hash.js';

export type ObjectSuffix = '' | 'C' | 'P' | 'X' | 'H' | 'M';

/** zlib level used for every object we write; the benchmark's physical limit uses the same. */
export const ZLIB_LEVEL = zc.Z_DEFAULT_COMPRESSION;

/** `data/<xx>/<rest><suffix>` for a textual hash. */
export function objectPath(textual: string, suffix: ObjectSuffix): string {
  return `data/${textual.slice(0, 2)}/${textual.slice(2)}${suffix}`;
}

export interface EncodedObject {
  /** Bytes as stored and served (zlib stream unless uncompressed). */
  readonly stored: Buffer;
  /** Raw digest of `stored`: what catalog BLOB columns hold. */
  readonly digest: Buffer;
  readonly textual: string;
  readonly path: string;
}

export function encodeObject(content: Uint8Array, suffix: ObjectSuffix, algo: HashAlgo, compress = true): EncodedObject {
  const stored = compress ? deflateSync(content, { level: ZLIB_LEVEL }) : Buffer.from(content);
  const digest = digestOf(algo, stored);
  const textual = textualHash(algo, digest);
  return { stored, digest, textual, path: objectPath(textual, suffix) };
}

export function decodeObject(stored: Uint8Array, compressed = true): Buffer {
  return compressed ? inflateSync(stored) : Buffer.from(stored);
}
