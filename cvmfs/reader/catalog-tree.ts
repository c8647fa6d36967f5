/**
 * The catalogs of one revision, attached lazily (docs/cvmfs-format.md §11.9, §13.7), after
 * CernVM-FS's AbstractCatalogManager: the tree logic is generic, and where a catalog comes from is
 * the one injected function. Lookup starts in the deepest attached catalog whose mountpoint is a
 * prefix of the path; a miss there attaches the nested catalog that covers the path and retries.
 * A mountpoint's own attributes come from the parent's row, without loading the child.
 *
 * Inodes: each catalog gets the range [offset + 1, offset + max rowid] in attach order, the first
 * offset being `inodeBase` (255 for a fresh mount, so the root is 256); hardlink group members
 * share the inode of the first member resolved.
 *
 * A tree is one revision and never changes, so resolved entries, misses included, are kept in a
 * bounded map for the tree's lifetime: a path-based FUSE call then costs a map lookup, not a
 * search of the attached catalogs and an SQLite query (and a miss, as an interpreter's import
 * path scan makes by the thousand, not one query per catalog on the way).
 */
import { isValidName } from '../tar/entry-rules.js';
import { CvmfsError } from '../errors.js';
import { FLAG, isCompressedFlags, kindOfMode, type EntryKind } from '../format/catalog-schema.js';
import { CatalogDatabase, type Chunk, type StoredEntry } from '../format/catalog-statements.js';
import { algoOfFlags, textualHash, type HashAlgo } from '../format/hash.js';
import { isPathWithin } from '../format/path-key.js';

export interface Dirent {
  readonly path: string;
  readonly name: string;
  readonly inode: number;
  readonly kind: EntryKind;
  readonly mode: number;
  /** File size; 0 for devices (their number is `rdev`). */
  readonly size: bigint;
  readonly rdev: bigint;
  readonly mtime: number;
  readonly mtimens: number | null;
  readonly uid: number;
  readonly gid: number;
  readonly linkcount: number;
  readonly symlink: string;
  /** Textual content hash of a whole-file object; null for chunked files and non-files. */
  readonly hash: string | null;
  readonly algo: HashAlgo;
  readonly compressed: boolean;
  readonly chunked: boolean;
  readonly xattr: Buffer | null;
  readonly flags: number;
  /** Mount path of the catalog holding this entry's row. */
  readonly catalog: string;
}

interface Attached {
  readonly mountPath: string;
  readonly hash: string;
  readonly db: CatalogDatabase;
  readonly offset: number;
  readonly nested: readonly { path: string; hash: string; size: bigint }[];
  readonly children: Map<string, Promise<Attached>>;
  readonly hardlinkInodes: Map<number, number>;
  readonly release: () => void;
}

export interface LoadedCatalog { readonly file: string; readonly release: () => void }
export type CatalogLoader = (hash: string, mountPath: string, size?: bigint) => Promise<LoadedCatalog>;

/** Entries (and misses) kept per tree; about 1 KiB each. */
export const DEFAULT_DIRENT_CACHE_ENTRIES = 200_000;

export class CatalogTree {
  private root!: Attached;
  private nextOffset: number;
  private readonly byMount = new Map<string, Attached>();
  /** path → entry, null for a path known not to exist; oldest insertions leave first. */
  private readonly dirents = new Map<string, Dirent | null>();

  private constructor(private readonly load: CatalogLoader, inodeBase: number, private readonly direntCacheEntries: number) {
    this.nextOffset = inodeBase;
  }

  static async open(load: CatalogLoader, rootHash: string, inodeBase = 255, rootSize?: bigint,
    direntCacheEntries = DEFAULT_DIRENT_CACHE_ENTRIES): Promise<CatalogTree> {
    const t = new CatalogTree(load, inodeBase, direntCacheEntries);
    t.root = await t.attach(rootHash, '', rootSize);
    return t;
  }

  /** First inode number past every range handed out so far (the next revision starts there). */
  get inodeHighWater(): number { return this.nextOffset; }
  get attachedCount(): number { return this.byMount.size; }
  get rootCatalog(): CatalogDatabase { return this.root.db; }

  private async attach(hash: string, mountPath: string, size?: bigint): Promise<Attached> {
    const loaded = await this.load(hash, mountPath, size);
    let db: CatalogDatabase;
    try { db = CatalogDatabase.open(loaded.file, { readonly: true }); } catch (err) { loaded.release(); throw err; }
    const a: Attached = {
      mountPath, hash, db, offset: this.nextOffset, nested: db.nestedCatalogs(), children: new Map(),
      hardlinkInodes: new Map(), release: loaded.release,
    };
    this.nextOffset += db.maxRowid();
    this.byMount.set(mountPath, a);
    return a;
  }

  private child(parent: Attached, ref: { path: string; hash: string; size: bigint }): Promise<Attached> {
    let p = parent.children.get(ref.path);
    if (!p) {
      p = this.attach(ref.hash, ref.path, ref.size > 0n ? ref.size : undefined); // 0: size not recorded (§11.3a)
      p.catch(() => parent.children.delete(ref.path));
      parent.children.set(ref.path, p);
    }
    return p;
  }

  private dirent(cat: Attached, path: string, e: StoredEntry): Dirent {
    let inode = e.rowid + cat.offset;
    if (e.hardlinkGroup > 0) {
      const first = cat.hardlinkInodes.get(e.hardlinkGroup);
      if (first === undefined) cat.hardlinkInodes.set(e.hardlinkGroup, inode); else inode = first;
    }
    const kind = kindOfMode(e.mode);
    const isDev = kind === 'special' && ((e.mode & 0o170000) === 0o020000 || (e.mode & 0o170000) === 0o060000);
    const chunked = (e.flags & FLAG.CHUNKED) !== 0;
    const algo = kind === 'file' && (e.hash !== null || chunked) ? algoOfFlags(e.flags) : 'sha1';
    return {
      path, name: path.slice(path.lastIndexOf('/') + 1), inode, kind, mode: e.mode,
      size: kind === 'file' ? e.size : kind === 'symlink' ? BigInt(Buffer.byteLength(e.symlink)) : kind === 'dir' ? e.size : 0n,
      rdev: isDev ? e.size : 0n, mtime: e.mtime, mtimens: e.mtimens, uid: e.uid, gid: e.gid, linkcount: e.linkcount,
      symlink: e.symlink, hash: e.hash ? textualHash(algo, e.hash) : null, algo, compressed: isCompressedFlags(e.flags),
      chunked, xattr: e.xattr, flags: e.flags, catalog: cat.mountPath,
    };
  }

  /** The attached catalog with the longest mount path that is a proper prefix of `path`. */
  private deepestAttached(path: string): Attached {
    let best = this.root;
    for (const a of this.byMount.values()) {
      if (a.mountPath.length > best.mountPath.length && a.mountPath !== path && isPathWithin(path, a.mountPath)) best = a;
    }
    return best;
  }

  private remember(path: string, d: Dirent | null): void {
    if (this.direntCacheEntries <= 0) return;
    if (this.dirents.size >= this.direntCacheEntries) {
      // Drop the oldest tenth at once, so that a scan of a huge tree does not pay one eviction per entry.
      let n = Math.ceil(this.direntCacheEntries / 10);
      for (const k of this.dirents.keys()) { this.dirents.delete(k); if (--n === 0) break; }
    }
    this.dirents.set(path, d);
  }

  /** The entry at `path` ("" is the root), or undefined. */
  lookup(path: string): Promise<Dirent | undefined> | Dirent | undefined {
    const known = this.dirents.get(path);
    if (known !== undefined) return known ?? undefined;
    return this.resolve(path);
  }

  private async resolve(path: string): Promise<Dirent | undefined> {
    let cat = this.deepestAttached(path);
    for (;;) {
      const e = cat.db.lookup(path);
      if (e) { const d = this.dirent(cat, path, e); this.remember(path, d); return d; }
      const ref = cat.nested.find((n) => path.startsWith(n.path + '/'));
      if (!ref) { this.remember(path, null); return undefined; }
      cat = await this.child(cat, ref);
    }
  }

  /** Attaches the nested catalog mounted at a mountpoint entry. */
  private async catalogOfChildren(d: Dirent): Promise<Attached> {
    const holder = this.byMount.get(d.catalog);
    if (!holder) throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${d.catalog || '/'} is not attached`);
    if ((d.flags & FLAG.NESTED_MOUNTPOINT) === 0) return holder;
    const ref = holder.nested.find((n) => n.path === d.path);
    if (!ref) throw new CvmfsError('CVMFS_BAD_CATALOG', `mountpoint ${d.path} has no nested catalog reference in catalog ${holder.hash}`);
    return this.child(holder, ref);
  }

  /** The visible children of the directory at `path`. */
  async list(path: string): Promise<Dirent[]> {
    const d = await this.lookup(path);
    if (!d) throw new CvmfsError('CVMFS_PATH_NOT_FOUND', `${path || '/'} does not exist`);
    if (d.kind !== 'dir') throw new CvmfsError('CVMFS_NOT_A_DIRECTORY', `${path} is not a directory`);
    const cat = await this.catalogOfChildren(d);
    // A hostile catalog may hold names no directory can ('', '.', '..', with '/' or NUL): never shown.
    return cat.db.list(path).filter((e) => (e.flags & FLAG.HIDDEN) === 0 && isValidName(e.name))
      .map((e) => {
        const p = `${path}/${e.name}`;
        const known = this.dirents.get(p);
        if (known) return known;
        const child = this.dirent(cat, p, e);
        // A nested mountpoint's row is the parent's view; lookup() answers the same row first.
        this.remember(p, child);
        return child;
      });
  }

  /** The entry as its own catalog sees it: a mountpoint resolves to the nested root (same inode). */
  async resolveMountpoint(d: Dirent): Promise<Dirent> {
    if ((d.flags & FLAG.NESTED_MOUNTPOINT) === 0) return d;
    const cat = await this.catalogOfChildren(d);
    const e = cat.db.lookup(d.path);
    return e ? { ...this.dirent(cat, d.path, e), inode: d.inode } : d;
  }

  chunks(d: Dirent): Chunk[] {
    const cat = this.byMount.get(d.catalog);
    if (!cat) throw new CvmfsError('CVMFS_BAD_CATALOG', `catalog ${d.catalog} is not attached`);
    return cat.db.chunks(d.path);
  }

  close(): void {
    this.dirents.clear();
    for (const a of this.byMount.values()) { a.db.close(); a.release(); }
    this.byMount.clear();
  }
}
