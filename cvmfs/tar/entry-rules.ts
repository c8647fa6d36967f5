/**
 * The safety rules of a layer tar entry, in one place for every reader of untrusted tars: the
 * writer's ingest, the driver's ApplyDiff and the converter. A header goes in; a checked entry
 * comes out, or the caller's coded error naming the entry:
 *   - names: no NUL, not absolute, no `..`, at most NAME_MAX_BYTES per component and
 *     PATH_MAX_BYTES in all (counting the caller's prefix);
 *   - whiteouts (OCI image-spec layer.md): `.wh.<name>` deletes `<name>`, `.wh..wh..opq` makes its
 *     directory opaque, other `.wh..wh.*` names are AUFS bookkeeping. `<name>` must itself be a
 *     valid name: `.wh.`, `.wh..` and `.wh...` would delete the directory itself or its parent.
 *     A whiteout is never a directory with children;
 *   - links: a symlink target is kept verbatim but must be non-empty, NUL-free and fit PATH_MAX;
 *     a hardlink target obeys the name rules;
 *   - modes: permission bits only (the type comes from the tar type); owners: 0 … 2^32-2, the
 *     PAX `uid`/`gid` records winning over the header;
 *   - PAX: times with nanoseconds, xattrs (SCHILY and LIBARCHIVE forms) with bounded names and
 *     values; overlayfs' own `trusted.overlay.*` attributes are refused, since a layer could
 *     otherwise forge redirects or opacity that only whiteout markers may express.
 */
import type tar from 'tar-stream';
import { paxBytes, paxString } from './pax.js';

export const NAME_MAX_BYTES = 255;
export const PATH_MAX_BYTES = 4096;
export const WHITEOUT_PREFIX = '.wh.';
export const WHITEOUT_META_PREFIX = '.wh..wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';
export const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';
/** Linux's XATTR_NAME_MAX and XATTR_SIZE_MAX. */
export const XATTR_NAME_MAX_BYTES = 255;
export const XATTR_VALUE_MAX_BYTES = 65536;
/** Times a file system and a JavaScript Date can both hold (±8.64e12 s is Date's range). */
const MTIME_MAX_SECONDS = 8_640_000_000_000;
/** (uid_t)-1 means "unchanged" to chown(2): never a real owner. */
const ID_MAX = 0xffff_fffe;

export type TarViolation = 'path-escape' | 'bad-name' | 'name-too-long' | 'path-too-long' | 'bad-whiteout' | 'bad-owner' | 'bad-xattr'
  | 'bad-time' | 'unsupported-type';
/** Makes the caller's coded error: each folder keeps its own codes, the rules stay here. */
export type TarFail = (violation: TarViolation, message: string) => Error;

/** What a final name means in a layer. */
export type NameRole =
  | { readonly kind: 'plain' }
  | { readonly kind: 'opaque' }
  | { readonly kind: 'whiteout'; readonly target: string }
  | { readonly kind: 'aufs-meta' };

export type EntryType = 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
const ENTRY_TYPES: ReadonlySet<string> = new Set<EntryType>(['file', 'directory', 'symlink', 'link', 'character-device', 'block-device', 'fifo']);

export interface CheckedEntry {
  /** The name as the tar gives it, for messages. */
  readonly name: string;
  readonly parts: readonly string[];
  readonly role: NameRole;
  readonly type: EntryType;
  /** Permission bits (0o7777). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtimeSeconds: number;
  readonly mtimeNanos: number | null;
  readonly size: number;
  /** Symlink target, verbatim. */
  readonly symlinkTarget: string;
  /** Hardlink target, checked like a name. */
  readonly linkParts: readonly string[] | null;
  readonly devMajor: number;
  readonly devMinor: number;
  readonly xattrs: ReadonlyMap<string, Buffer>;
}

const quoted = (s: string) => JSON.stringify(s.length > 120 ? `${s.slice(0, 120)}…` : s).replace(/\\u0000/g, '\\0');

/** A single directory entry name as readers may show it: never '', '.', '..', '/' or NUL. */
export function isValidName(name: string): boolean {
  return name !== '' && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\0')
    && Buffer.byteLength(name) <= NAME_MAX_BYTES;
}

/** The role of a final name component; `undefined` for a whiteout of an invalid name. */
export function nameRole(base: string): NameRole | undefined {
  if (!base.startsWith(WHITEOUT_PREFIX)) return { kind: 'plain' };
  if (base === OPAQUE_MARKER) return { kind: 'opaque' };
  if (base.startsWith(WHITEOUT_META_PREFIX)) return { kind: 'aufs-meta' };
  const target = base.slice(WHITEOUT_PREFIX.length);
  return isValidName(target) ? { kind: 'whiteout', target } : undefined;
}

/**
 * Splits an entry name into components (`.` and empty ones dropped) and gives its role.
 * `prefixBytes` is the length of the path the entry lands below, for the PATH_MAX check.
 */
export function entryPath(name: string, fail: TarFail, o: { what?: string; prefixBytes?: number } = {}): { parts: string[]; role: NameRole } {
  const what = o.what ?? 'entry';
  if (name.includes('\0')) throw fail('bad-name', `${what} ${quoted(name)} contains a NUL byte`);
  if (name.startsWith('/')) throw fail('path-escape', `${what} ${quoted(name)} is an absolute path`);
  const parts: string[] = [];
  let bytes = o.prefixBytes ?? 0;
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') throw fail('path-escape', `${what} ${quoted(name)} contains "..": it would escape the layer`);
    const n = Buffer.byteLength(c);
    if (n > NAME_MAX_BYTES) throw fail('name-too-long', `${what} ${quoted(name)}: the name ${quoted(c.slice(0, 40))} is ${n} bytes; at most ${NAME_MAX_BYTES}`);
    bytes += 1 + n;
    parts.push(c);
  }
  if (bytes > PATH_MAX_BYTES) throw fail('path-too-long', `${what} ${quoted(name)} makes a ${bytes}-byte path; at most ${PATH_MAX_BYTES}`);
  let role: NameRole = { kind: 'plain' };
  for (let i = 0; i < parts.length; i++) {
    const c = parts[i]!;
    if (!c.startsWith(WHITEOUT_PREFIX)) continue;
    const r = nameRole(c);
    if (r === undefined) throw fail('bad-whiteout', `${what} ${quoted(name)}: the whiteout ${quoted(c)} names no valid file (it would delete "${c.slice(WHITEOUT_PREFIX.length)}")`);
    if (r.kind === 'aufs-meta') { role = r; break; }
    if (i < parts.length - 1) throw fail('bad-whiteout', `${what} ${quoted(name)}: the whiteout ${quoted(c)} cannot be a directory`);
    role = r;
  }
  return { parts, role };
}

function idOf(pax: Record<string, string>, key: 'uid' | 'gid', header: number | undefined, name: string, fail: TarFail): number {
  const text = pax[key];
  const v = text !== undefined ? (/^\d{1,10}$/.test(text) ? Number(text) : NaN) : (header ?? 0);
  if (!Number.isSafeInteger(v) || v < 0 || v > ID_MAX) throw fail('bad-owner', `entry ${quoted(name)} has the invalid ${key} ${quoted(String(text ?? header))}`);
  return v;
}

function xattrsOf(pax: Record<string, string>, name: string, fail: TarFail): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const [k, v] of Object.entries(pax)) {
    let key: string, value: Buffer;
    if (k.startsWith('SCHILY.xattr.')) { key = k.slice('SCHILY.xattr.'.length); value = paxBytes(v); }
    else if (k.startsWith('LIBARCHIVE.xattr.')) {
      try { key = decodeURIComponent(k.slice('LIBARCHIVE.xattr.'.length)); } catch {
        throw fail('bad-xattr', `entry ${quoted(name)} has a badly escaped xattr name ${quoted(k)}`);
      }
      value = Buffer.from(paxString(v), 'base64');
    } else continue;
    if (key === '' || key.includes('\0') || Buffer.byteLength(key) > XATTR_NAME_MAX_BYTES) {
      throw fail('bad-xattr', `entry ${quoted(name)} has an empty, NUL-containing or over-long xattr name ${quoted(key)}`);
    }
    if (value.length > XATTR_VALUE_MAX_BYTES) throw fail('bad-xattr', `entry ${quoted(name)}: xattr ${quoted(key)} has a ${value.length}-byte value; at most ${XATTR_VALUE_MAX_BYTES}`);
    if (key.startsWith(OVERLAY_XATTR_PREFIX)) {
      throw fail('bad-xattr', `entry ${quoted(name)} sets the overlayfs attribute ${quoted(key)}: deletions and opaque directories come only from whiteout entries`);
    }
    out.set(key, value);
  }
  return out;
}

function mtimeOf(h: tar.Header, pax: Record<string, string>): { s: number; ns: number | null } {
  const t = pax['mtime'];
  if (t !== undefined && /^-?\d{1,15}(\.\d+)?$/.test(t)) {
    const [s, frac = ''] = t.split('.');
    return { s: Number(s), ns: frac ? Number((frac + '000000000').slice(0, 9)) : null };
  }
  const ms = h.mtime?.getTime();
  return { s: ms !== undefined && Number.isFinite(ms) ? Math.floor(ms / 1000) : 0, ns: null };
}

/** Checks one header against every rule; `prefixBytes` as for entryPath. */
export function checkEntry(h: tar.Header, fail: TarFail, o: { prefixBytes?: number } = {}): CheckedEntry {
  const name = h.name;
  const type = h.type === 'contiguous-file' ? 'file' : String(h.type);
  if (!ENTRY_TYPES.has(type)) throw fail('unsupported-type', `entry ${quoted(name)} has the unsupported tar type "${type}"`);
  const { parts, role } = entryPath(name, fail, o);
  const pax = (h.pax ?? {}) as Record<string, string>;
  let symlinkTarget = '';
  let linkParts: string[] | null = null;
  if (type === 'symlink') {
    symlinkTarget = h.linkname ?? '';
    if (symlinkTarget === '' || symlinkTarget.includes('\0') || Buffer.byteLength(symlinkTarget) >= PATH_MAX_BYTES) {
      throw fail('bad-name', `symlink ${quoted(name)} has an empty, over-long or NUL-containing target`);
    }
  } else if (type === 'link') {
    linkParts = entryPath(h.linkname ?? '', fail, { what: `hardlink target of ${quoted(name)}` }).parts;
    if (linkParts.length === 0) throw fail('bad-name', `hardlink ${quoted(name)} points to the layer root`);
  }
  const size = type === 'file' ? h.size ?? 0 : 0;
  const time = mtimeOf(h, pax);
  if (!(Math.abs(time.s) <= MTIME_MAX_SECONDS)) throw fail('bad-time', `entry ${quoted(name)} has the impossible mtime ${quoted(String(pax['mtime'] ?? time.s))}`);
  return {
    name, parts, role, type: type as EntryType,
    mode: (h.mode ?? (type === 'directory' ? 0o755 : 0o644)) & 0o7777,
    uid: idOf(pax, 'uid', h.uid, name, fail), gid: idOf(pax, 'gid', h.gid, name, fail),
    mtimeSeconds: time.s, mtimeNanos: time.ns, size, symlinkTarget, linkParts,
    devMajor: h.devmajor ?? 0, devMinor: h.devminor ?? 0, xattrs: xattrsOf(pax, name, fail),
  };
}
