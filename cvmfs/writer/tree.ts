/**
 * The tree a tar stream describes, held in memory as metadata only (file bodies are already on
 * their way to storage; `content` resolves to their hashes). Tar semantics: a later entry
 * replaces an earlier one at the same path, a directory entry over a directory only updates its
 * attributes, missing parents are synthesised as root-owned 0755 directories (as
 * thin-images-and-layout.md R28 asks), and nothing may be written through a symlink.
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

export type FileContent =
  | { readonly kind: 'whole'; readonly digest: Buffer }
  | { readonly kind: 'chunked'; readonly chunks: readonly Chunk[] };

/** Identity shared by the members of one hardlink group; link counts are derived from the final tree. */
export type HardlinkGroup = object;

export interface DirNode { readonly kind: 'dir'; meta: NodeMeta; readonly children: Map<string, TreeNode> }
export interface FileNode { readonly kind: 'file'; readonly meta: NodeMeta; readonly size: bigint; readonly content: Promise<FileContent>; group?: HardlinkGroup }
export interface SymlinkNode { readonly kind: 'symlink'; readonly meta: NodeMeta; readonly target: string; group?: HardlinkGroup }
export interface SpecialNode { readonly kind: 'special'; readonly meta: NodeMeta; readonly rdev: bigint; group?: HardlinkGroup }
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

export class LayerTree {
  readonly root: DirNode;

  constructor(private readonly synthesizedDirMeta: NodeMeta) {
    this.root = { kind: 'dir', meta: synthesizedDirMeta, children: new Map() };
  }

  private parentDir(parts: readonly string[], name: string): DirNode {
    let dir = this.root;
    for (let i = 0; i < parts.length - 1; i++) {
      const c = parts[i]!;
      const child = dir.children.get(c);
      if (child === undefined) {
        const made: DirNode = { kind: 'dir', meta: this.synthesizedDirMeta, children: new Map() };
        dir.children.set(c, made);
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
    dir.children.set(base, node);
  }

  addDir(parts: readonly string[], name: string, meta: NodeMeta): void {
    this.place(parts, name, { kind: 'dir', meta, children: new Map() });
  }
  addFile(parts: readonly string[], name: string, meta: NodeMeta, size: bigint, content: Promise<FileContent>): void {
    this.place(parts, name, { kind: 'file', meta, size, content });
  }
  addSymlink(parts: readonly string[], name: string, meta: NodeMeta, target: string): void {
    this.place(parts, name, { kind: 'symlink', meta, target });
  }
  addSpecial(parts: readonly string[], name: string, meta: NodeMeta, rdev: bigint): void {
    this.place(parts, name, { kind: 'special', meta, rdev });
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
    this.place(parts, name, { ...target, group });
  }
}
