/** Content hashes (docs/cvmfs-format.md §3.1). */
import { createHash, type Hash } from 'node:crypto';
import { CvmfsError } from '../errors.js';

export type HashAlgo = 'sha1' | 'rmd160' | 'shake128';

export const HASH_ALGOS: readonly HashAlgo[] = ['sha1', 'rmd160', 'shake128'];
export const DIGEST_BYTES = 20;

/** Suffix appended to the hex digest in textual hashes. */
const TEXT_ID: Readonly<Record<HashAlgo, string>> = { sha1: '', rmd160: '-rmd160', shake128: '-shake128' };
/** Value stored in catalog flag bits 8–10 (algorithm − 1). */
export const ALGO_FLAG_VALUE: Readonly<Record<HashAlgo, number>> = { sha1: 0, rmd160: 1, shake128: 2 };

export function parseHashAlgo(name: string): HashAlgo {
  if ((HASH_ALGOS as readonly string[]).includes(name)) return name as HashAlgo;
  throw new CvmfsError('CVMFS_UNKNOWN_HASH_ALGORITHM',
    `unknown hash algorithm "${name}": use one of ${HASH_ALGOS.join(', ')}`);
}

export function algoOfFlags(flags: number): HashAlgo {
  const v = (flags >> 8) & 7;
  const algo = HASH_ALGOS[v];
  if (algo === undefined) throw new CvmfsError('CVMFS_UNKNOWN_HASH_ALGORITHM', `catalog flags name unknown hash algorithm ${v + 1}`);
  return algo;
}

export function createHasher(algo: HashAlgo): Hash {
  switch (algo) {
    case 'sha1': return createHash('sha1');
    case 'rmd160': return createHash('ripemd160');
    case 'shake128': return createHash('shake128', { outputLength: DIGEST_BYTES });
  }
}

export function digestOf(algo: HashAlgo, data: Uint8Array | string): Buffer {
  return createHasher(algo).update(data).digest();
}

/** Lowercase hex plus the algorithm id, e.g. `…-shake128`: the form in manifests and nested_catalogs. */
export function textualHash(algo: HashAlgo, digest: Uint8Array): string {
  return Buffer.from(digest).toString('hex') + TEXT_ID[algo];
}

export interface ParsedHash { readonly algo: HashAlgo; readonly digest: Buffer }

/** Parses a textual hash (no suffix); the algorithm follows from the length. */
export function parseTextualHash(text: string): ParsedHash {
  const algo: HashAlgo | undefined = text.length === 40 ? 'sha1' : text.length === 47 ? 'rmd160'
    : text.length === 49 ? 'shake128' : undefined;
  if (algo === undefined || !text.endsWith(TEXT_ID[algo]) || !/^[0-9a-f]{40}$/.test(text.slice(0, 40))) {
    throw new CvmfsError('CVMFS_BAD_HASH', `"${text}" is not a textual content hash`);
  }
  return { algo, digest: Buffer.from(text.slice(0, 40), 'hex') };
}

/** Whitelist fingerprint form: `AB:CD:…` plus the uppercased algorithm id. */
export function fingerprintOf(algo: HashAlgo, data: Uint8Array): string {
  const hex = digestOf(algo, data).toString('hex').toUpperCase();
  return (hex.match(/../g) ?? []).join(':') + TEXT_ID[algo].toUpperCase();
}

/** Normalises a whitelist fingerprint line to a textual hash (parser rules of §9.1). */
export function fingerprintToTextual(line: string): string {
  const cut = line.search(/[ \t#]/);
  return (cut < 0 ? line : line.slice(0, cut)).replace(/:/g, '').toLowerCase();
}
