/**
 * Catalog schema 2.5, revision 7 (docs/cvmfs-format.md §11). Every DDL statement, flag bit and
 * counter name lives here.
 *
 * Schema revision history (within schema 2.5), as the stock client reads it:
 *   1 nested_catalogs.size · 2 catalog.xattr · 3 external files, compression bits · 4 bind
 *   mountpoints, hidden flag · 5 special files, all 24 counters mandatory · 6 direct I/O ·
 *   7 catalog.mtimens. A catalog declaring revision 7 must have every column above; changing
 *   the revision means changing CATALOG_DDL and the statements in catalog-statements.ts.
 */
import { ALGO_FLAG_VALUE, type HashAlgo } from './hash.js';

export const CATALOG_SCHEMA = '2.5';
export const CATALOG_SCHEMA_REVISION = 7;
export const DEFAULT_TTL_SECONDS = 240;
export const DIR_SIZE = 4096n;

export const CATALOG_DDL: readonly string[] = [
  `CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))`,
  `CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER,
     hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, mtimens INTEGER,
     flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, xattr BLOB,
     CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2))`,
  `CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2)`,
  `CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER, hash BLOB,
     CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),
     FOREIGN KEY (md5path_1, md5path_2) REFERENCES catalog(md5path_1, md5path_2))`,
  `CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, CONSTRAINT pk_nested_catalogs PRIMARY KEY (path))`,
  `CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path))`,
  `CREATE TABLE statistics (counter TEXT, value INTEGER, CONSTRAINT pk_statistics PRIMARY KEY (counter))`,
];

/** Stored flag bits (§11.8; stored values combine them: symlink 12, mountpoint 3, nested root 33). */
export const FLAG = {
  DIR: 1,
  NESTED_MOUNTPOINT: 2,
  FILE: 4,
  LINK: 8,
  SPECIAL: 16,
  NESTED_ROOT: 32,
  CHUNKED: 64,
  EXTERNAL: 128,
  BIND_MOUNTPOINT: 0x4000,
  HIDDEN: 0x8000,
  DIRECT_IO: 0x10000,
} as const;
const ALGO_SHIFT = 8;
const COMPRESSION_SHIFT = 11;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFIFO = 0o010000;
export const S_IFSOCK = 0o140000;

export type EntryKind = 'dir' | 'file' | 'symlink' | 'special';

export function kindOfMode(mode: number): EntryKind {
  switch (mode & S_IFMT) {
    case S_IFDIR: return 'dir';
    case S_IFREG: return 'file';
    case S_IFLNK: return 'symlink';
    default: return 'special';
  }
}

export interface FlagInput {
  readonly kind: EntryKind;
  readonly nestedRoot?: boolean;
  readonly nestedMountpoint?: boolean;
  readonly chunked?: boolean;
  readonly uncompressed?: boolean;
  readonly hasHash?: boolean;
  readonly algo?: HashAlgo;
  readonly hidden?: boolean;
}

export function catalogFlags(e: FlagInput): number {
  let f = 0;
  if (e.nestedRoot) f |= FLAG.NESTED_ROOT;
  else if (e.nestedMountpoint) f |= FLAG.NESTED_MOUNTPOINT;
  if (e.kind === 'dir') f |= FLAG.DIR;
  else if (e.kind === 'symlink') f |= FLAG.FILE | FLAG.LINK;
  else if (e.kind === 'special') f |= FLAG.FILE | FLAG.SPECIAL;
  else f |= FLAG.FILE | ((e.uncompressed ? 1 : 0) << COMPRESSION_SHIFT) | (e.chunked ? FLAG.CHUNKED : 0);
  if (e.hasHash || e.chunked) f |= ALGO_FLAG_VALUE[e.algo ?? 'sha1'] << ALGO_SHIFT;
  if (e.hidden) f |= FLAG.HIDDEN;
  return f;
}

export function isCompressedFlags(flags: number): boolean {
  return ((flags >> COMPRESSION_SHIFT) & 7) === 0;
}

/** Turns a catalog root entry's flags into the parent's mountpoint flags, and back. */
export function asMountpointFlags(flags: number): number {
  return (flags & ~FLAG.NESTED_ROOT) | FLAG.NESTED_MOUNTPOINT;
}
export function asNestedRootFlags(flags: number): number {
  return (flags & ~FLAG.NESTED_MOUNTPOINT) | FLAG.NESTED_ROOT;
}

export const COUNTER_FIELDS = [
  'regular', 'symlink', 'special', 'dir', 'nested', 'chunked', 'chunks',
  'file_size', 'chunked_size', 'xattr', 'external', 'external_file_size',
] as const;
export type CounterField = (typeof COUNTER_FIELDS)[number];
export type Counters = Record<CounterField, bigint>;

export function zeroCounters(): Counters {
  return Object.fromEntries(COUNTER_FIELDS.map((f) => [f, 0n])) as Counters;
}
export function addCounters(a: Counters, b: Counters, sign: 1n | -1n = 1n): Counters {
  return Object.fromEntries(COUNTER_FIELDS.map((f) => [f, a[f] + sign * b[f]])) as Counters;
}

/** glibc `makedev`: the device number stored in `size` for character and block devices. */
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major), mi = BigInt(minor);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}
export function majorOf(dev: bigint): number {
  return Number(((dev >> 32n) & 0xfffff000n) | ((dev >> 8n) & 0xfffn));
}
export function minorOf(dev: bigint): number {
  return Number(((dev >> 12n) & 0xffffff00n) | (dev & 0xffn));
}
