/**
 * The tree a tar stream describes, held in memory as metadata only (file bodies are already on
 * their way to storage; `content` settles to their hashes). Tar semantics: a later entry
 * replaces an earlier one at the same path, a directory entry over a directory only updates its
 * attributes, missing parents are synthesised as root-owned 0755 directories (as
 * thin-images-and-layout.md R28 asks), and nothing may be written through a symlink.
 *
 * Memory: the whole tree of a layer is held until its catalog is written, since any later entry
 * may replace, re-own or hardlink an earlier one and a directory's row needs its final subdirectory
 * count. Per entry that is the node (64 bytes), its name (an own copy, 16 + its length rounded
 * up to 8), its slot in the parent's Map (about 40) and, for a stored non-empty file, its digest
 * (40): about 130 bytes for an empty file, 190 for another. Metadata records (72 bytes) are shared
 * between entries with equal mode, owner and mtime, and sizes are plain numbers.
 */
import { CvmfsError, type CvmfsErrorCode } from '../errors.js';
import { entryPath, type TarFail, type TarViolation } from '../tar/entry-rules.js';
import type { Chunk } from '../format/catalog-statements.js';

export { NAME_MAX_BYTES, PATH_MAX_BYTES } from '../tar/entry-rules.js';

export interface NodeMeta {
  readonly mode: number;         // full st_mode, type bits included
  readonly uid: number;
  readonly gid: number;
  readonly mtime: number;
  readonly mtimens: number | null;
  readonly xattr: Buffer | null; // encoded blob (format/xattr.ts)
}

/**
 * A body once stored: the raw digest of its single object as a latin1 string (a 20–32-byte heap
 * string instead of a Buffer of ~100 bytes, for a million entries), or its chunks.
 */
export type FileContent = string | { readonly chunks: readonly Chunk[] };
export const digestBytes = (c: string): Buffer => Buffer.from(c, 'latin1');
export const contentOfDigest = (digest: Uint8Array): string => Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength).toString('latin1');

/** Identity shared by the members of one hardlink group; link counts are derived from the final tree. */
export type HardlinkGroup = object;

export interface DirNode { readonly kind: 'dir'; meta: NodeMeta; readonly children: Map<string, TreeNode> }
/** `content` is a promise until the body is stored, then the stored content itself (or the promise, if storing failed). */
export interface FileNode { readonly kind: 'file'; readonly meta: NodeMeta; readonly size: number; content: FileContent | Promise<FileContent>; group: HardlinkGroup | undefined }
export interface SymlinkNode { readonly kind: 'symlink'; readonly meta: NodeMeta; readonly target: string; group: HardlinkGroup | undefined }
export interface SpecialNode { readonly kind: 'special'; readonly meta: NodeMeta; readonly rdev: bigint; group: HardlinkGroup | undefined }
export type LeafNode = FileNode | SymlinkNode | SpecialNode;
export type TreeNode = DirNode | LeafNode;

const TAR_CODES: Readonly<Record<TarViolation, CvmfsErrorCode>> = {
  'path-escape': 'CVMFS_TAR_PATH_ESCAPE', 'bad-name': 'CVMFS_TAR_BAD_NAME', 'name-too-long': 'CVMFS_TAR_NAME_TOO_LONG',
  'path-too-long': 'CVMFS_TAR_PATH_TOO_LONG', 'bad-whiteout': 'CVMFS_TAR_BAD_WHITEOUT', 'bad-owner': 'CVMFS_TAR_BAD_OWNER',
  'bad-xattr': 'CVMFS_BAD_XATTR', 'bad-time': 'CVMFS_TAR_CORRUPT', 'unsupported-type': 'CVMFS_TAR_UNSUPPORTED_ENTRY',
};
/** The writer's codes for the shared tar entry rules (cvmfs/tar). */
export const tarFail: TarFail = (v, message) => new CvmfsError(TAR_CODES[v], message);

/** Splits a tar entry name into components, rejecting anything that could leave the tree. */
export function entryComponents(name: string, mountPath: string, what = 'entry'): string[] {
  return entryPath(name, tarFail, { what, prefixBytes: Buffer.byteLength(mountPath) }).parts;
}

/** Distinct metadata records kept for sharing; past this many the table starts afresh. */
const META_INTERN_LIMIT = 4096;

/**
 * An own copy of a name. `split` hands out slices (V8 SlicedString, from 13 characters) that keep
 * the whole entry name alive for as long as the tree lives; the copy holds the name only. The JSON
 * round trip copies every string exactly, lone surrogates included.
 */
function ownName(s: string): string {
  return JSON.parse(JSON.stringify(s)) as string;
}

export class LayerTree {
  readonly root: DirNode;
  /** Shared metadata records by mtime: most entries of a layer repeat a few (mode, owner, mtime) tuples. */
  private readonly metas = new Map<number, NodeMeta[]>();
  private metaCount = 0;

  constructor(private readonly synthesizedDirMeta: NodeMeta) {
    this.root = { kind: 'dir', meta: synthesizedDirMeta, children: new Map() };
  }

  /** An equal record seen before, or `m` (kept for the next ones). Records with xattrs are not shared. */
  private intern(m: NodeMeta): NodeMeta {
    if (m.xattr !== null) return m;
    let same = this.metas.get(m.mtime);
    if (same === undefined) {
      if (this.metaCount >= META_INTERN_LIMIT) { this.metas.clear(); this.metaCount = 0; }
      same = [];
      this.metas.set(m.mtime, same);
    }
    for (const s of same) if (s.mode === m.mode && s.uid === m.uid && s.gid === m.gid && s.mtimens === m.mtimens) return s;
    if (this.metaCount < META_INTERN_LIMIT) { same.push(m); this.metaCount++; }
    return m;
  }

  private parentDir(parts: readonly string[], name: string): DirNode {
    let dir = this.root;
    for (let i = 0; i < parts.length - 1; i++) {
      const c = parts[i]!;
      const child = dir.children.get(c);
      if (child === undefined) {
        const made: DirNode = { kind: 'dir', meta: this.synthesizedDirMeta, children: new Map() };
        dir.children.set(ownName(c), made);
        dir = made;
      } else if (child.kind === 'dir') {
        dir = child;
      } else if (child.kind === 'symlink') {
        throw new CvmfsError('CVMFS_TAR_PATH_ESCAPE',
          `entry "${name}": its parent "${parts.slice(0, i + 1).join('/')}" is a symlink; writing through it could escape the ingest directory`);
      } else {
        throw new CvmfsError('CVMFS_PATH_CONFLICT', `entry "${name}": its parent "${parts.slice(0, i + 1).join('/')}" is not a directory`);
      }
    }
    return dir;
  }

  find(parts: readonly string[]): TreeNode | undefined {
    let node: TreeNode = this.root;
    for (const c of parts) {
      if (node.kind !== 'dir') return undefined;
      const next: TreeNode | undefined = node.children.get(c);
      if (next === undefined) return undefined;
      node = next;
    }
    return node;
  }

  private place(parts: readonly string[], name: string, node: TreeNode): void {
    if (parts.length === 0) {
      if (node.kind !== 'dir') throw new CvmfsError('CVMFS_PATH_CONFLICT', `entry "${name}" would replace the ingest directory itself with a non-directory`);
      this.root.meta = node.meta;
      return;
    }
    const dir = this.parentDir(parts, name);
    const base = parts[parts.length - 1]!;
    const old = dir.children.get(base);
    if (old?.kind === 'dir' && node.kind === 'dir') {
      old.meta = node.meta;
      return;
    }
    // Replacing keeps the key already stored; a new key is an own copy.
    dir.children.set(old === undefined ? ownName(base) : base, node);
  }

  addDir(parts: readonly string[], name: string, meta: NodeMeta): void {
    this.place(parts, name, { kind: 'dir', meta: this.intern(meta), children: new Map() });
  }
  /** `content` is stored content or a promise of it; once the promise settles, the node keeps the content only. */
  addFile(parts: readonly string[], name: string, meta: NodeMeta, size: number, content: FileContent | Promise<FileContent>): void {
    const node: FileNode = { kind: 'file', meta: this.intern(meta), size, content, group: undefined };
    this.place(parts, name, node);
    if (content instanceof Promise) content.then((c) => { node.content = c; }, () => { /* the catalog builder awaits it and fails */ });
  }
  addSymlink(parts: readonly string[], name: string, meta: NodeMeta, target: string): void {
    this.place(parts, name, { kind: 'symlink', meta: this.intern(meta), target, group: undefined });
  }
  addSpecial(parts: readonly string[], name: string, meta: NodeMeta, rdev: bigint): void {
    this.place(parts, name, { kind: 'special', meta: this.intern(meta), rdev, group: undefined });
  }

  /** A tar hardlink: a new name for an earlier entry of the same stream. */
  addHardlink(parts: readonly string[], name: string, targetParts: readonly string[], targetName: string): void {
    const target = this.find(targetParts);
    if (target === undefined) {
      throw new CvmfsError('CVMFS_TAR_HARDLINK_MISSING',
        `hardlink "${name}" points to "${targetName}", which is not an earlier entry of this tar`);
    }
    if (target.kind === 'dir') throw new CvmfsError('CVMFS_TAR_HARDLINK_MISSING', `hardlink "${name}" points to the directory "${targetName}"`);
    if (parts.join('/') === targetParts.join('/')) return;
    const group = target.group ?? {};
    target.group = group;
    const member: LeafNode = { ...target, group };
    this.place(parts, name, member);
    if (member.kind === 'file' && member.content instanceof Promise) {
      member.content.then((c) => { member.content = c; }, () => { /* the catalog builder awaits it and fails */ });
    }
  }
}
