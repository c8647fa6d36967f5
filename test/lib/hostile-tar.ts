/**
 * Generated hostile layer tars for the property suites (test/fuzz): fast-check arbitraries for
 * entry lists, their encoding into tar bytes (through tarOf, plus raw headers), byte-level
 * mutations and compressions, and a small model of what a layer made from an unmutated entry list
 * must contain (or that it must be refused).
 *
 * Symlink targets may contain CANARY, replaced at encoding time by the absolute path of a canary
 * tree that lies beside the layer; relative targets climb out of the layer towards it.
 */
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { compress as zstdCompress } from 'zstd-napi';
import { paxRecords, rawHeader, tarOf, type TarSpec } from './tar-of.js';

export const CANARY = '@CANARY@';

export type PaxValue = string | Uint8Array;
export interface Meta {
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Header mtime, whole seconds. */
  readonly mtime: number;
  /** Raw PAX records sent before the entry (xattrs, owners, times, path/linkpath/size overrides). */
  readonly pax: Readonly<Record<string, PaxValue>>;
  /** How a name that does not fit the ustar header is carried. */
  readonly longVia: 'pax' | 'gnu';
}
/** Deterministic file content: small literal bytes, or a large pattern (size and seed). */
export type Content = { readonly bytes: Uint8Array } | { readonly big: number; readonly seed: number };
export type LinkTarget = { readonly ref: number; readonly suffix: string } | { readonly name: string };

export type GenEntry =
  | { readonly kind: 'file'; readonly name: string; readonly content: Content; readonly meta: Meta }
  | { readonly kind: 'directory'; readonly name: string; readonly meta: Meta }
  | { readonly kind: 'symlink'; readonly name: string; readonly target: string; readonly meta: Meta }
  | { readonly kind: 'link'; readonly name: string; readonly target: LinkTarget; readonly meta: Meta }
  | { readonly kind: 'character-device' | 'block-device'; readonly name: string; readonly major: number; readonly minor: number; readonly meta: Meta }
  | { readonly kind: 'fifo'; readonly name: string; readonly meta: Meta }
  /** A raw header of any type flag (sparse 'S', volume 'V', global PAX 'g', GNU 'L'/'K', …) with a body. */
  | { readonly kind: 'raw'; readonly name: string; readonly typeflag: string; readonly body: Uint8Array };

export type Mutation =
  | { readonly kind: 'flip'; readonly at: number; readonly bit: number; readonly fix: boolean }
  | { readonly kind: 'header-byte'; readonly header: number; readonly offset: number; readonly value: number; readonly fix: boolean }
  | { readonly kind: 'truncate'; readonly at: number }
  | { readonly kind: 'dup-blocks'; readonly from: number; readonly count: number; readonly to: number }
  | { readonly kind: 'zero-blocks'; readonly at: number; readonly count: number }
  | { readonly kind: 'drop-end-marker' }
  | { readonly kind: 'append'; readonly bytes: Uint8Array };

export type Compression = 'none' | 'gzip' | 'zstd';

export interface TarCase {
  readonly entries: readonly GenEntry[];
  /** Applied in order to the tar bytes. */
  readonly mutations: readonly Mutation[];
  /** Entries hidden after the end-of-archive marker (what GNU tar and Go's archive/tar never read). */
  readonly trailing: readonly GenEntry[];
}

const FRACTION = 1_000_000;
const at = (frac: number, len: number) => Math.floor((frac / FRACTION) * len);

// ---------------------------------------------------------------------------------------------
// Arbitraries

const plainComp = fc.constantFrom('a', 'b', 'c', 'd', 'sub');
/** Valid but unusual names: whiteouts of valid names, AUFS and catalog names, odd bytes. */
const oddComp = fc.constantFrom(
  '', '.', '...', '.wh.a', '.wh.b', '.wh.sub', '.wh..wh..opq', '.wh..wh.plnk', '.wh..wh.aufs', '.wh..x', 'n'.repeat(255), 'é',
  'ü'.repeat(127), ' ', '-rf', '\\', 'a b', '\n', '.cvmfscatalog', '.cvmfsdirtab', 'PaxHeader', '\u00ff', '\ud800',
);
/** Names the rules refuse: '..', NUL, over 255 bytes, whiteouts of '', '.' and '..'. */
const badComp = fc.constantFrom('..', 'x\0y', 'n'.repeat(256), 'ü'.repeat(128), '.wh.', '.wh..', '.wh...', '.wh.\0');
const comp = fc.oneof({ weight: 24, arbitrary: plainComp }, { weight: 5, arbitrary: oddComp }, { weight: 1, arbitrary: badComp });
const relName = fc.array(comp, { minLength: 1, maxLength: 4 }).map((cs) => cs.join('/'));
export const nameArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 30, arbitrary: relName },
  { weight: 2, arbitrary: relName.map((n) => `./${n}`) },
  { weight: 2, arbitrary: relName.map((n) => `${n}/`) },
  { weight: 1, arbitrary: relName.map((n) => `/${n}`) },
  { weight: 1, arbitrary: relName.map((n) => `a/../${n}`) },
  { weight: 2, arbitrary: fc.constantFrom('.', './', '/', '', '..', '//', './.') },
  // 20 components of 200 bytes: 4020 bytes, under PATH_MAX alone but over it below /layers/fuzz.
  { weight: 1, arbitrary: fc.integer({ min: 19, max: 22 }).map((n) => Array.from({ length: n }, (_, i) => `${i % 10}`.repeat(200)).join('/')) },
);

const canaryTarget = fc.constantFrom(CANARY, `${CANARY}/file`, `${CANARY}/sub`, `${CANARY}/exec`, `${CANARY}/dirlink`, `${CANARY}/link`, `${CANARY}/sub/inner`);
const relativeCanary = fc.tuple(fc.integer({ min: 0, max: 5 }), fc.constantFrom('canary', 'canary/file', 'canary/sub', 'canary/dirlink', 'canary/sub/inner'))
  .map(([n, s]) => `${'../'.repeat(n)}${s}`);
export const symlinkTargetArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: canaryTarget },
  { weight: 4, arbitrary: relativeCanary },
  { weight: 3, arbitrary: fc.constantFrom('a', 'b/c', 'sub', '.', '..', '../..', 'sub/..', 'a/b/../..') },
  { weight: 1, arbitrary: fc.constantFrom('', 'x\0y', 't'.repeat(4095), 't'.repeat(4096), '/'.repeat(300)) },
);

const modeArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(0o644, 0o755, 0o600, 0o777, 0o000) },
  { weight: 2, arbitrary: fc.constantFrom(0o4755, 0o2755, 0o6777, 0o1777, 0o7777, 0o4000) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0o7777 }) },
);
/** Header owners: ustar's 6 octal digits (tar-stream clamps above). */
const headerIdArb = fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 2, arbitrary: fc.integer({ min: 0, max: 0o777777 }) });
const paxIdArb = fc.constantFrom('0', '1000', '65534', '4294967294', '4294967295', '4294967296', '99999999999999999999', '-1', '12abc', '', ' 5', '00000000001');
const paxTimeArb = fc.constantFrom('1700000000.5', '1700000000.123456789123', '-1', '-1700000000', '999999999999999', '1e5', 'abc', '0.', '253402300800');

/** A v2 VFS capability (cap_net_bind_service permitted and effective). */
const CAP_V2 = Uint8Array.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
const xattrValueArb: fc.Arbitrary<PaxValue> = fc.oneof(
  { weight: 4, arbitrary: fc.uint8Array({ maxLength: 24 }) },
  { weight: 2, arbitrary: fc.constantFrom<PaxValue>('y', 'n', CAP_V2, Uint8Array.from([0, 0xff, 0x0a, 0x3d, 0x20])) },
  { weight: 1, arbitrary: fc.constantFrom<PaxValue>('v'.repeat(256), 'w'.repeat(65537)) },
);
const xattrKeyArb = fc.constantFrom(
  'SCHILY.xattr.user.k', 'SCHILY.xattr.user.other', 'SCHILY.xattr.trusted.k', 'SCHILY.xattr.trusted.overlay.opaque',
  'SCHILY.xattr.trusted.overlay.redirect', 'SCHILY.xattr.trusted.overlay.origin', 'SCHILY.xattr.security.capability',
  'SCHILY.xattr.', `SCHILY.xattr.user.${'k'.repeat(251)}`, `SCHILY.xattr.user.${'k'.repeat(252)}`, 'SCHILY.xattr.system.posix_acl_access',
  'LIBARCHIVE.xattr.user.%41b', 'LIBARCHIVE.xattr.%zz', 'LIBARCHIVE.xattr.trusted.overlay.opaque', 'LIBARCHIVE.xattr.user.a%00b',
);
const paxArb: fc.Arbitrary<Record<string, PaxValue>> = fc.oneof(
  { weight: 12, arbitrary: fc.constant({}) },
  {
    weight: 3,
    arbitrary: fc.array(fc.oneof(
      { weight: 4, arbitrary: fc.tuple(xattrKeyArb, xattrValueArb).map(([k, v]): [string, PaxValue] => [k, k.startsWith('LIBARCHIVE') ? Buffer.from(v).toString('base64') : v]) },
      { weight: 2, arbitrary: fc.tuple(fc.constantFrom('uid', 'gid'), paxIdArb) },
      { weight: 1, arbitrary: fc.tuple(fc.constant('mtime'), paxTimeArb) },
      { weight: 2, arbitrary: fc.tuple(fc.constant('path'), nameArb) },
      { weight: 1, arbitrary: fc.tuple(fc.constant('linkpath'), fc.oneof(symlinkTargetArb, nameArb)) },
      { weight: 1, arbitrary: fc.tuple(fc.constant('size'), fc.constantFrom('0', '7', '513', 'abc', '-1', '99999999')) },
      { weight: 1, arbitrary: fc.tuple(fc.constantFrom('atime', 'uname', 'hdrcharset', 'GNU.sparse.major', 'comment'), fc.constantFrom('0', 'x', 'BINARY')) },
    ), { minLength: 1, maxLength: 3 }).map((kvs) => Object.fromEntries(kvs)),
  },
);
export const metaArb: fc.Arbitrary<Meta> = fc.record({
  mode: modeArb, uid: headerIdArb, gid: headerIdArb,
  mtime: fc.oneof(fc.constant(1_700_000_000), fc.integer({ min: 0, max: 8_589_934_591 })),
  pax: paxArb, longVia: fc.constantFrom<'pax' | 'gnu'>('pax', 'pax', 'gnu'),
});
const plainMeta: fc.Arbitrary<Meta> = fc.record({ mode: modeArb, uid: headerIdArb, gid: headerIdArb, mtime: fc.constant(1_700_000_000),
  pax: fc.constant({}), longVia: fc.constant<'pax' | 'gnu'>('pax') });

export const contentArb: fc.Arbitrary<Content> = fc.oneof(
  { weight: 12, arbitrary: fc.uint8Array({ maxLength: 1200 }).map((bytes) => ({ bytes })) },
  { weight: 3, arbitrary: fc.constantFrom('x', 'hello', '').map((s) => ({ bytes: Buffer.from(s) })) },
  // Above ApplyDiff's one-write limit and the writer's chunking threshold (4 MiB).
  { weight: 1, arbitrary: fc.record({ big: fc.constantFrom(4 * 1024 * 1024 + 1, 9 * 1024 * 1024), seed: fc.nat(255) }) },
);

const linkTargetArb: fc.Arbitrary<LinkTarget> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ ref: fc.nat(40), suffix: fc.constantFrom('', '', '', '/file', '/sub/inner', '/x') }) },
  { weight: 1, arbitrary: nameArb.map((name) => ({ name })) },
  { weight: 1, arbitrary: fc.constantFrom('../canary/file', '/etc/passwd', '', '.', 'a/../a').map((name) => ({ name })) },
);

const rawArb: fc.Arbitrary<GenEntry> = fc.record({
  kind: fc.constant('raw' as const),
  name: fc.oneof(nameArb, fc.constant('././@LongLink')),
  typeflag: fc.constantFrom('S', 'V', 'M', 'N', 'D', 'g', 'x', 'L', 'K', 'A', '8', '\0', '7'),
  body: fc.oneof(
    fc.uint8Array({ maxLength: 600 }),
    nameArb.map((n) => Buffer.from(`${n}\0`)),
    fc.constantFrom(paxRecords({ path: '../escape' }), paxRecords({ 'SCHILY.xattr.trusted.overlay.opaque': 'y' }), paxRecords({ size: '100' })),
  ),
});

export const entryArb: fc.Arbitrary<GenEntry> = fc.oneof(
  { weight: 12, arbitrary: fc.record({ kind: fc.constant('file' as const), name: nameArb, content: contentArb, meta: metaArb }) },
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('directory' as const), name: nameArb, meta: metaArb }) },
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('symlink' as const), name: nameArb, target: symlinkTargetArb, meta: metaArb }) },
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('link' as const), name: nameArb, target: linkTargetArb, meta: metaArb }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constantFrom('character-device' as const, 'block-device' as const), name: nameArb,
      major: fc.oneof(fc.constantFrom(0, 1, 4095), fc.integer({ min: 0, max: 0o777777 })),
      minor: fc.oneof(fc.constantFrom(0, 3, 255), fc.integer({ min: 0, max: 0o777777 })), meta: metaArb,
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('fifo' as const), name: nameArb, meta: metaArb }) },
  { weight: 1, arbitrary: rawArb },
);

const file = (name: string, content = 'x', meta?: Meta): GenEntry => ({ kind: 'file', name, content: { bytes: Buffer.from(content) }, meta: meta ?? PLAIN });
const dir = (name: string): GenEntry => ({ kind: 'directory', name, meta: PLAIN });
const PLAIN: Meta = { mode: 0o644, uid: 0, gid: 0, mtime: 1_700_000_000, pax: {}, longVia: 'pax' };

/** Known-dangerous shapes, each a short sequence of entries. */
const scenarioArb: fc.Arbitrary<GenEntry[]> = fc.oneof(
  // A directory later replaced by a symlink to the canary, followed by entries below it.
  fc.tuple(plainComp, canaryTarget, fc.array(fc.oneof(
    fc.constantFrom('file', 'directory', 'link', 'symlink', 'fifo', 'whiteout', 'opaque'),
  ), { minLength: 1, maxLength: 3 }), plainMeta).map(([d, target, below, meta]): GenEntry[] => [
    { kind: 'directory', name: d, meta: { ...meta, mode: 0o755 } }, { kind: 'directory', name: `${d}/inner`, meta },
    file(`${d}/f`, 'before'), { kind: 'symlink', name: d, target, meta },
    ...below.map((k, i): GenEntry => {
      switch (k) {
        case 'file': return file(`${d}/evil${i}`, 'escaped', { ...meta, mode: 0o4777 });
        case 'directory': return { kind: 'directory', name: `${d}/sub`, meta };
        case 'link': return { kind: 'link', name: `${d}/h${i}`, target: { name: `${d}/f` }, meta };
        case 'symlink': return { kind: 'symlink', name: `${d}/inner`, target: '/', meta };
        case 'fifo': return { kind: 'fifo', name: `${d}/fifo${i}`, meta };
        case 'whiteout': return file(`${d}/.wh.file`, '');
        default: return file(`${d}/.wh..wh..opq`, '');
      }
    }),
  ]),
  // The same name, again and again, as entries of other types.
  fc.tuple(fc.oneof(plainComp, fc.constant('d/e')), fc.array(fc.constantFrom('file', 'directory', 'symlink', 'link', 'fifo', 'whiteout'), { minLength: 2, maxLength: 5 }), plainMeta)
    .map(([n, kinds, meta]): GenEntry[] => kinds.flatMap((k, i): GenEntry[] => {
      switch (k) {
        case 'file': return [file(n, `v${i}`, meta)];
        case 'directory': return [dir(n), file(`${n}/child${i}`, `c${i}`)];
        case 'symlink': return [{ kind: 'symlink', name: n, target: `${CANARY}/sub`, meta }];
        case 'link': return [file(`keep${i}`, `k${i}`), { kind: 'link', name: n, target: { name: `keep${i}` }, meta }];
        case 'fifo': return [{ kind: 'fifo', name: n, meta }];
        default: return [file(`${n.includes('/') ? 'd/' : ''}.wh.${n.split('/').pop()!}`, '')];
      }
    })),
  // Hardlinks: to an earlier file, a later one, a missing one, one through a symlink, a symlink, a directory, itself.
  fc.constantFrom<GenEntry[]>(
    [file('a', 'shared'), { kind: 'link', name: 'b', target: { name: 'a' }, meta: PLAIN }, file('a', 'replaced')],
    [{ kind: 'link', name: 'b', target: { name: 'later' }, meta: PLAIN }, file('later')],
    [{ kind: 'link', name: 'b', target: { name: 'missing' }, meta: PLAIN }],
    [{ kind: 'symlink', name: 's', target: CANARY, meta: PLAIN }, { kind: 'link', name: 'h', target: { name: 's/file' }, meta: PLAIN }],
    [{ kind: 'symlink', name: 's', target: `${CANARY}/file`, meta: PLAIN }, { kind: 'link', name: 'h', target: { name: 's' }, meta: PLAIN }],
    [dir('d'), { kind: 'link', name: 'h', target: { name: 'd' }, meta: PLAIN }],
    [file('a'), { kind: 'link', name: 'a', target: { name: 'a' }, meta: PLAIN }],
    [dir('d'), file('d/f', 'in d'), { kind: 'link', name: 'd', target: { name: 'd/f' }, meta: PLAIN }],
    [file('a'), { kind: 'link', name: 'b', target: { name: './a/' }, meta: PLAIN }],
  ),
  // Whiteouts and opaque markers next to what they delete.
  fc.constantFrom<GenEntry[]>(
    [dir('d'), file('d/x'), file('d/.wh.x', ''), file('d/.wh..wh..opq', ''), file('.wh.d', '')],
    [file('.wh..wh..opq', ''), file('.wh..wh.plnk/1.2', 'x'), dir('.wh..wh.plnk'), file('x')],
    [file('a'), { kind: 'directory', name: '.wh.a', meta: PLAIN }, file('a', 'back')],
    [{ kind: 'symlink', name: 'l', target: CANARY, meta: PLAIN }, file('l/.wh.file', ''), file('l/.wh..wh..opq', '')],
  ),
);

export const entriesArb: fc.Arbitrary<GenEntry[]> = fc.array(
  fc.oneof({ weight: 5, arbitrary: entryArb.map((e) => [e]) }, { weight: 2, arbitrary: scenarioArb }),
  { maxLength: 7 },
).map((groups) => groups.flat());

const FIELD_OFFSETS = [0, 1, 99, 100, 106, 108, 116, 124, 130, 135, 136, 148, 156, 157, 257, 262, 263, 329, 337, 345];
export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(FRACTION - 1), bit: fc.nat(7), fix: fc.boolean() }),
  fc.record({
    kind: fc.constant('header-byte' as const), header: fc.nat(30), offset: fc.oneof(fc.constantFrom(...FIELD_OFFSETS), fc.nat(511)),
    value: fc.oneof(fc.constantFrom(0, 0x20, 0x2f, 0x2e, 0x30, 0x31, 0x32, 0x33, 0x35, 0x37, 0x4c, 0x4b, 0x53, 0x78, 0x67, 0x80, 0xff), fc.nat(255)),
    fix: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(FRACTION - 1) }),
  fc.record({ kind: fc.constant('dup-blocks' as const), from: fc.nat(FRACTION - 1), count: fc.integer({ min: 1, max: 4 }), to: fc.nat(FRACTION - 1) }),
  fc.record({ kind: fc.constant('zero-blocks' as const), at: fc.nat(FRACTION - 1), count: fc.integer({ min: 1, max: 3 }) }),
  fc.constant({ kind: 'drop-end-marker' as const }),
  fc.record({ kind: fc.constant('append' as const), bytes: fc.oneof(fc.uint8Array({ maxLength: 700 }), fc.constant(new Uint8Array(512))) }),
);

export const tarCaseArb: fc.Arbitrary<TarCase> = fc.record({
  entries: entriesArb,
  mutations: fc.oneof({ weight: 3, arbitrary: fc.constant([]) }, { weight: 1, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 3 }) }),
  trailing: fc.oneof({ weight: 9, arbitrary: fc.constant([]) }, { weight: 1, arbitrary: fc.array(entryArb, { minLength: 1, maxLength: 2 }) }),
});

// ---------------------------------------------------------------------------------------------
// Encoding

export function contentBytes(c: Content): Buffer {
  if ('bytes' in c) return Buffer.from(c.bytes);
  const b = Buffer.alloc(c.big);
  let x = (c.seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < b.length; i += 4) { x = (x * 1103515245 + 12345) >>> 0; b.writeUInt32LE(x, Math.min(i, b.length - 4)); }
  return b;
}

const fitsUstar = (s: string) => /^[\x01-\x7f]*$/.test(s) && s.length <= 99;

function padded(b: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(b), Buffer.alloc((512 - (b.length % 512)) % 512)]);
}

function gnuLong(type: 'L' | 'K', value: string): Buffer {
  const body = Buffer.from(`${value}\0`);
  return Buffer.concat([rawHeader('././@LongLink', type, body.length), padded(body)]);
}

export function substitute(s: string, canary: string): string {
  return s.split(CANARY).join(canary);
}

/** The link name an entry list gives a hardlink entry. */
export function linkName(entries: readonly GenEntry[], t: LinkTarget): string {
  if ('name' in t) return t.name;
  const e = entries[t.ref % entries.length]!;
  const pax = e.kind === 'raw' ? undefined : e.meta.pax['path'];
  const n = typeof pax === 'string' && pax !== '' ? pax : e.name;
  return `${n}${t.suffix}`;
}

/** One entry's blocks; names that do not fit the ustar header go to PAX or GNU long-name records. */
async function encodeEntry(e: GenEntry, all: readonly GenEntry[], canary: string): Promise<Buffer> {
  if (e.kind === 'raw') return Buffer.concat([rawHeader(Buffer.from(e.name).subarray(0, 100).toString('latin1'), e.typeflag, e.body.length), padded(e.body)]);
  const pax: Record<string, Buffer | string> = {};
  for (const [k, v] of Object.entries(e.meta.pax)) pax[k] = typeof v === 'string' ? substitute(v, canary) : Buffer.from(v);
  const pre: Buffer[] = [];
  let name = e.name;
  if (!fitsUstar(name)) {
    if (e.meta.longVia === 'gnu' && !name.includes('\0')) pre.push(gnuLong('L', name));
    else if (pax['path'] === undefined) pax['path'] = Buffer.from(name);
    name = `long-${createHash('sha1').update(name).digest('hex').slice(0, 8)}`;
  }
  let target = e.kind === 'symlink' ? substitute(e.target, canary) : e.kind === 'link' ? linkName(all, e.target) : undefined;
  if (target !== undefined && !fitsUstar(target)) {
    if (e.meta.longVia === 'gnu' && !target.includes('\0')) pre.push(gnuLong('K', target));
    else if (pax['linkpath'] === undefined) pax['linkpath'] = Buffer.from(target);
    target = 'long-target';
  }
  const common = { name, mode: e.meta.mode, uid: e.meta.uid, gid: e.meta.gid, mtime: new Date(e.meta.mtime * 1000),
    ...(Object.keys(pax).length ? { pax } : {}) };
  let spec: TarSpec;
  switch (e.kind) {
    case 'file': spec = { ...common, type: 'file', content: contentBytes(e.content) }; break;
    case 'directory': spec = { ...common, type: 'directory' }; break;
    case 'symlink': spec = { ...common, type: 'symlink', target: target! }; break;
    case 'link': spec = { ...common, type: 'link', target: target! }; break;
    case 'character-device': case 'block-device': spec = { ...common, type: e.kind, major: e.major, minor: e.minor }; break;
    case 'fifo': spec = { ...common, type: 'fifo' }; break;
  }
  return Buffer.concat([...pre, await tarOf([spec], { omitEndMarker: true })]);
}

/** The tar of an entry list (with its end-of-archive marker), before mutations. */
export async function encodeEntries(entries: readonly GenEntry[], canary: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const e of entries) parts.push(await encodeEntry(e, entries, canary));
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

/** Offsets of the header blocks of a well-formed tar (sizes read as ustar octal). */
export function headerOffsets(tarBytes: Buffer): number[] {
  const out: number[] = [];
  let off = 0;
  while (off + 512 <= tarBytes.length) {
    const block = tarBytes.subarray(off, off + 512);
    if (block.every((b) => b === 0)) { off += 512; continue; }
    out.push(off);
    const size = parseInt(block.toString('latin1', 124, 136).replace(/[\0 ]/g, ''), 8);
    off += 512 + (Number.isFinite(size) && size > 0 ? Math.ceil(size / 512) * 512 : 0);
  }
  return out;
}

export function fixChecksum(tarBytes: Buffer, off: number): void {
  if (off + 512 > tarBytes.length) return;
  tarBytes.fill(0x20, off + 148, off + 156);
  let sum = 0;
  for (let i = off; i < off + 512; i++) sum += tarBytes[i]!;
  tarBytes.write(`${sum.toString(8).padStart(6, '0')}\0 `, off + 148, 'latin1');
}

export function mutate(input: Buffer, mutations: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of mutations) {
    if (b.length === 0) break;
    switch (m.kind) {
      case 'flip': {
        const i = at(m.at, b.length);
        b[i] = b[i]! ^ (1 << m.bit);
        if (m.fix) fixChecksum(b, i - (i % 512));
        break;
      }
      case 'header-byte': {
        const hs = headerOffsets(b);
        if (hs.length === 0) break;
        const h = hs[m.header % hs.length]!;
        b[h + m.offset] = m.value;
        if (m.fix) fixChecksum(b, h);
        break;
      }
      case 'truncate': b = b.subarray(0, at(m.at, b.length)); break;
      case 'dup-blocks': {
        const blocks = Math.ceil(b.length / 512);
        const from = Math.floor((m.from / FRACTION) * blocks) * 512;
        const to = Math.floor((m.to / FRACTION) * blocks) * 512;
        const dup = b.subarray(from, from + m.count * 512);
        b = Buffer.concat([b.subarray(0, to), dup, b.subarray(to)]);
        break;
      }
      case 'zero-blocks': {
        const to = Math.floor((m.at / FRACTION) * Math.ceil(b.length / 512)) * 512;
        b = Buffer.concat([b.subarray(0, to), Buffer.alloc(512 * m.count), b.subarray(to)]);
        break;
      }
      case 'drop-end-marker': {
        let end = b.length;
        while (end >= 512 && b.subarray(end - 512, end).every((x) => x === 0)) end -= 512;
        b = b.subarray(0, end);
        break;
      }
      case 'append': b = Buffer.concat([b, Buffer.from(m.bytes)]); break;
    }
  }
  return b;
}

/** The bytes of a case: encoded entries, any trailing entries after the end marker, then mutations. */
export async function caseBytes(c: TarCase, canary: string): Promise<Buffer> {
  let b = await encodeEntries(c.entries, canary);
  if (c.trailing.length > 0) b = Buffer.concat([b, await encodeEntries(c.trailing, canary)]);
  return mutate(b, c.mutations);
}

export function compressed(b: Buffer, how: Compression): Buffer {
  return how === 'gzip' ? gzipSync(b) : how === 'zstd' ? compress(b) : b;
}
function compress(b: Buffer): Buffer { return zstdCompress(b); }

// ---------------------------------------------------------------------------------------------
// The model: what an unmutated entry list must give

export type MNode =
  | { readonly type: 'dir' }
  | { readonly type: 'file'; readonly content: Buffer }
  | { readonly type: 'symlink'; readonly target: string }
  | { readonly type: 'char'; readonly whiteout?: boolean }
  | { readonly type: 'block' | 'fifo' };

export type Verdict =
  /** Must be accepted, with exactly this tree (relative paths joined by '/'). */
  | { readonly kind: 'ok'; readonly tree: ReadonlyMap<string, MNode> }
  /** Must be refused. */
  | { readonly kind: 'fail'; readonly why: string }
  /** The model cannot say whether it is accepted; if it is and `tree` is set, the tree must be this one. */
  | { readonly kind: 'unknown'; readonly why: string; readonly tree: ReadonlyMap<string, MNode> | null };

class Refused extends Error {}
/** Names as they come back from the file system or catalog: UTF-8, lone surrogates replaced. */
const utf8 = (s: string) => Buffer.from(s).toString('utf8');

const NAME_MAX = 255;
const PATH_MAX = 4096;
const bytes = (s: string) => Buffer.byteLength(s);
const validName = (n: string) => n !== '' && n !== '.' && n !== '..' && !n.includes('/') && !n.includes('\0') && bytes(n) <= NAME_MAX;

type Role = 'plain' | 'opaque' | 'aufs' | { whiteout: string };
function split(name: string, prefixBytes: number): { parts: string[]; role: Role } {
  if (name.includes('\0')) throw new Refused(`NUL in ${JSON.stringify(name)}`);
  if (name.startsWith('/')) throw new Refused('absolute');
  const parts = name.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.includes('..')) throw new Refused('..');
  if (parts.some((c) => bytes(c) > NAME_MAX)) throw new Refused('component over 255 bytes');
  if (parts.reduce((n, c) => n + 1 + bytes(c), prefixBytes) > PATH_MAX) throw new Refused('path over 4096 bytes');
  let role: Role = 'plain';
  for (const [i, c] of parts.entries()) {
    if (!c.startsWith('.wh.')) continue;
    const last = i === parts.length - 1;
    if (c === '.wh..wh..opq') { if (!last) throw new Refused('opaque marker as a directory'); role = 'opaque'; continue; }
    if (c.startsWith('.wh..wh.')) { role = 'aufs'; break; }
    if (!validName(c.slice(4))) throw new Refused(`bad whiteout ${c}`);
    if (!last) throw new Refused('whiteout as a directory');
    role = { whiteout: c.slice(4) };
  }
  return { parts, role };
}

function paxText(v: PaxValue | undefined): string | undefined {
  return v === undefined ? undefined : typeof v === 'string' ? v : Buffer.from(v).toString('utf8');
}

/**
 * The layer an unmutated entry list makes, for ApplyDiff (`apply`: overlay form, whiteouts as 0/0
 * character devices, AUFS names skipped) or the writer (`writer`: whiteouts stored as they are,
 * paths counted below `prefixBytes` of mount path). `withTrailing` also applies the entries hidden
 * after the end-of-archive marker (what the code does today: bug after-end-marker).
 */
export function modelLayer(c: TarCase, target: 'apply' | 'writer', canary: string, prefixBytes = 0, o: { withTrailing?: boolean } = {}): Verdict {
  const tree = new Map<string, MNode>();
  let unsure: string | undefined;
  const maybe = (why: string) => { unsure ??= why; };
  const removeTree = (p: string) => { for (const k of [...tree.keys()]) if (k === p || k.startsWith(`${p}/`)) tree.delete(k); };
  /** Parents of `parts` for a write: missing ones are made, symlinks and non-directories refused. */
  const parents = (parts: readonly string[], create: boolean) => {
    for (let i = 1; i < parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      const n = tree.get(p);
      if (n === undefined) { if (!create) throw new Refused(`missing parent ${p}`); tree.set(p, { type: 'dir' }); }
      else if (n.type === 'symlink') throw new Refused(`through the symlink ${p}`);
      else if (n.type !== 'dir') throw new Refused(`parent ${p} is no directory`);
    }
  };
  try {
    if (c.mutations.length > 0) return { kind: 'unknown', why: 'mutated', tree: null };
    // Go's archive/tar and we refuse a header after a zero block (cvmfs/tar/end-marker.ts).
    if (c.trailing.length > 0 && !o.withTrailing) throw new Refused('entries after the end-of-archive marker');
    // Hardlink references resolve within the list each entry was encoded with.
    const seq: [GenEntry, readonly GenEntry[]][] = [...c.entries.map((e): [GenEntry, readonly GenEntry[]] => [e, c.entries]),
      ...(o.withTrailing ? c.trailing.map((e): [GenEntry, readonly GenEntry[]] => [e, c.trailing]) : [])];
    for (const [e, list] of seq) {
      if (e.kind === 'raw') return { kind: 'unknown', why: 'raw header', tree: null };
      const pax = e.meta.pax;
      if (pax['size'] !== undefined) return { kind: 'unknown', why: 'PAX size', tree: null };
      const paxPath = paxText(pax['path']);
      const name = utf8(paxPath ? paxPath : e.name);
      // A regular file named 'x/' stays a file (tar-stream, like Go's archive/tar for type '0').
      const kind = e.kind;
      const { parts, role } = split(name, target === 'writer' ? prefixBytes : 0);
      let linkname = e.kind === 'symlink' ? substitute(e.target, canary) : e.kind === 'link' ? linkName(list, e.target) : '';
      const paxLink = paxText(pax['linkpath']);
      if (paxLink && (kind === 'symlink' || kind === 'link')) linkname = substitute(paxLink, canary);
      linkname = utf8(linkname);
      let linkParts: string[] = [];
      if (kind === 'symlink' && (linkname === '' || linkname.includes('\0') || bytes(linkname) >= PATH_MAX)) throw new Refused('bad symlink target');
      if (kind === 'link') {
        linkParts = split(linkname, 0).parts;
        if (linkParts.length === 0) throw new Refused('hardlink to the root');
      }
      for (const k of ['uid', 'gid']) {
        const v = paxText(pax[k]);
        if (v !== undefined && !(/^\d{1,10}$/.test(v) && Number(v) <= 0xffff_fffe)) throw new Refused(`bad ${k}`);
      }
      let xattrs = 0;
      for (const [k, v] of Object.entries(pax)) {
        let key: string, value: Buffer;
        if (k.startsWith('SCHILY.xattr.')) { key = k.slice(13); value = Buffer.from(typeof v === 'string' ? Buffer.from(v, 'utf8') : v); }
        else if (k.startsWith('LIBARCHIVE.xattr.')) {
          try { key = decodeURIComponent(k.slice(17)); } catch { throw new Refused('bad xattr escape'); }
          value = Buffer.from(paxText(v)!, 'base64');
        } else continue;
        if (key === '' || key.includes('\0') || bytes(key) > 255) throw new Refused('bad xattr name');
        if (value.length > 65536) throw new Refused('xattr value too long');
        if (key.startsWith('trusted.overlay.')) throw new Refused('overlay xattr');
        if (target === 'writer' && value.length > 255) throw new Refused('xattr value over the catalog limit');
        xattrs++;
        if (target === 'apply' && !((key.startsWith('user.') && (kind === 'file' || kind === 'directory')) || key.startsWith('trusted.'))) maybe(`xattr ${key} on a ${kind}`);
      }
      const mt = paxText(pax['mtime']);
      if (target === 'apply' && mt !== undefined && /^-?\d{1,15}(\.\d+)?$/.test(mt) && Math.abs(Number(mt.split('.')[0])) * 1000 > 8.64e15) maybe('mtime out of range');
      if (target === 'apply' && (kind === 'character-device' || kind === 'block-device') && 'major' in e && (e.major > 4095 || e.minor > 0xfffff)) maybe('device number');

      const key = parts.join('/');
      if (parts.length === 0) {
        if (target === 'writer' && kind !== 'directory') throw new Refused('root replaced by a non-directory');
        if (target === 'apply' && kind === 'directory' && xattrs > 0) maybe('xattrs on the layer root');
        continue;
      }
      if (target === 'apply') {
        if (role === 'aufs') continue;
        parents(parts, true);
        if (role === 'opaque') continue;
        if (typeof role === 'object') {
          const p = [...parts.slice(0, -1), role.whiteout].join('/');
          removeTree(p);
          tree.set(p, { type: 'char', whiteout: true });
          continue;
        }
        const old = tree.get(key);
        if (old && !(old.type === 'dir' && kind === 'directory')) removeTree(key);
        if (kind === 'link') {
          parents(linkParts, false);
          const t = tree.get(linkParts.join('/'));
          if (t === undefined) throw new Refused('hardlink target missing');
          if (t.type === 'dir') throw new Refused('hardlink to a directory');
          tree.set(key, t);
          continue;
        }
      } else {
        if (kind === 'link') {
          let t: MNode | undefined;
          for (let j = 1; j <= linkParts.length; j++) {
            t = tree.get(linkParts.slice(0, j).join('/'));
            if (t === undefined || (j < linkParts.length && t.type !== 'dir')) { t = undefined; break; }
          }
          if (t === undefined) throw new Refused('hardlink target missing');
          if (t.type === 'dir') throw new Refused('hardlink to a directory');
          if (linkParts.join('/') === key) continue;
          parents(parts, true);
          removeTree(key);
          tree.set(key, t);
          continue;
        }
        parents(parts, true);
        const old = tree.get(key);
        if (old && !(old.type === 'dir' && kind === 'directory')) removeTree(key);
      }
      switch (kind) {
        case 'directory': if (!tree.has(key)) tree.set(key, { type: 'dir' }); break;
        case 'file': tree.set(key, { type: 'file', content: contentBytes((e as { content: Content }).content) }); break;
        case 'symlink': tree.set(key, { type: 'symlink', target: linkname }); break;
        case 'character-device': tree.set(key, { type: 'char' }); break;
        case 'block-device': tree.set(key, { type: 'block' }); break;
        case 'fifo': tree.set(key, { type: 'fifo' }); break;
      }
    }
  } catch (err) {
    if (err instanceof Refused) return { kind: 'fail', why: err.message };
    throw err;
  }
  return unsure === undefined ? { kind: 'ok', tree } : { kind: 'unknown', why: unsure, tree };
}

/** Compares a tree read back with the model's; the first few differences, or []. */
export function treeDiff(model: ReadonlyMap<string, MNode>, got: ReadonlyMap<string, MNode>): string[] {
  const out: string[] = [];
  const show = (n: MNode | undefined) => n === undefined ? 'nothing'
    : n.type === 'file' ? `file(${n.content.length} bytes, sha1 ${createHash('sha1').update(n.content).digest('hex').slice(0, 10)})`
      : n.type === 'symlink' ? `symlink(${JSON.stringify(n.target.slice(0, 80))})` : n.type;
  for (const k of new Set([...model.keys(), ...got.keys()])) {
    const a = model.get(k), b = got.get(k);
    const same = a !== undefined && b !== undefined && a.type === b.type
      && (a.type !== 'file' || (b.type === 'file' && a.content.equals(b.content)))
      && (a.type !== 'symlink' || (b.type === 'symlink' && a.target === b.target));
    if (!same) out.push(`${JSON.stringify(k.slice(0, 120))}: expected ${show(a)}, got ${show(b)}`);
    if (out.length >= 8) break;
  }
  return out;
}

/** A compact, copy-pasteable description of a tar for failure messages. */
export function describeTar(b: Buffer): string {
  const z = gzipSync(b, { level: 9 });
  return z.length <= 48 * 1024 ? `tar (${b.length} bytes; gzip, base64 — \`base64 -d | gunzip > case.tar\`): ${z.toString('base64')}`
    : `tar of ${b.length} bytes (too large to print)`;
}
