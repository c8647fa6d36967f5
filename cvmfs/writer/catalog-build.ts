/** Writes a LayerTree as one nested catalog rooted at its mount path (docs/cvmfs-format.md §11). */
import { catalogFlags, DIR_SIZE, S_IFREG, type Counters } from '../format/catalog-schema.js';
import { CatalogDatabase, type CatalogEntry } from '../format/catalog-statements.js';
import type { HashAlgo } from '../format/hash.js';
import { encodeObject } from '../format/object.js';
import { baseNameOf } from '../format/path-key.js';
import { contentOfDigest, digestBytes, type DirNode, type FileContent, type HardlinkGroup, type NodeMeta, type TreeNode } from './tree.js';

/** cvmfs_server's marker of a nested catalog root; clients ignore it (§11.9). */
export const CATALOG_MARKER = '.cvmfscatalog';

export interface BuiltCatalog {
  readonly rootEntry: CatalogEntry;
  readonly self: Counters;
}

export interface BuildOptions {
  readonly algo: HashAlgo;
  readonly revision: number;
  readonly previousRevision: string | null;
  readonly now: Date;
  /** Adds an empty `.cvmfscatalog` at the root unless the tree has one. */
  readonly catalogMarker: boolean;
}

function subdirCount(d: DirNode): number {
  let n = 0;
  for (const c of d.children.values()) if (c.kind === 'dir') n++;
  return n;
}

/** Code units from U+D800 up: only there does UTF-16 order differ from the order of UTF-8 bytes. */
const ORDER_MAY_DIFFER = /[\uD800-\uFFFF]/;

/** A directory's names in the order of their UTF-8 bytes, the order rows are written in. Without
 *  code units from U+D800 up, the default (UTF-16) order is that order, with no bytes to encode. */
function sortedNames(dir: DirNode): string[] {
  const names = [...dir.children.keys()];
  if (!names.some((n) => ORDER_MAY_DIFFER.test(n))) return names.sort();
  const bytes = new Map(names.map((n) => [n, Buffer.from(n)]));
  return names.sort((a, b) => Buffer.compare(bytes.get(a)!, bytes.get(b)!));
}

type RowFields = Pick<CatalogEntry, 'size' | 'flags' | 'linkcount' | 'hardlinkGroup' | 'hash' | 'symlink'>;

function row(meta: NodeMeta, name: string, f: RowFields): CatalogEntry {
  return {
    name, mode: meta.mode, mtime: meta.mtime, mtimens: meta.mtimens, uid: meta.uid, gid: meta.gid, xattr: meta.xattr,
    size: f.size, flags: f.flags, linkcount: f.linkcount, hardlinkGroup: f.hardlinkGroup, hash: f.hash, symlink: f.symlink,
  };
}

/**
 * Writes the rows depth first, each directory's children in the order of their UTF-8 bytes, the
 * root entry first (rowid 1). The tree is consumed: a directory is emptied once its rows are
 * written, so the tree's memory (most of an ingest's, about 130 bytes an entry) is free for what
 * follows, such as reading the catalog file whole to compress it. Rows go straight to SQLite, whose
 * page cache (16 MB, better-sqlite3's default) spills to the file; nothing per entry is kept.
 */
export async function buildLayerCatalog(file: string, root: DirNode, mountPath: string, opts: BuildOptions): Promise<BuiltCatalog> {
  const nowSeconds = Math.floor(opts.now.getTime() / 1000);
  if (opts.catalogMarker && !root.children.has(CATALOG_MARKER)) {
    // Shares the empty-file object, which readLayer always stores.
    const empty: FileContent = contentOfDigest(encodeObject(new Uint8Array(0), '', opts.algo).digest);
    root.children.set(CATALOG_MARKER, { kind: 'file', size: 0, content: empty, group: undefined,
      meta: { mode: S_IFREG | 0o644, uid: 0, gid: 0, mtime: nowSeconds, mtimens: null, xattr: null } });
  }

  // One pass to await the bodies still being stored and to count live hardlink members.
  const groupSize = new Map<HardlinkGroup, number>();
  const pending: Promise<void>[] = [];
  const visit = (n: TreeNode) => {
    if (n.kind === 'dir') { for (const c of n.children.values()) visit(c); return; }
    if (n.group) groupSize.set(n.group, (groupSize.get(n.group) ?? 0) + 1);
    if (n.kind === 'file' && n.content instanceof Promise) pending.push(n.content.then((c) => { n.content = c; }));
  };
  visit(root);
  await Promise.all(pending);
  pending.length = 0;
  const groupIds = new Map<HardlinkGroup, number>();
  for (const [g, size] of groupSize) if (size > 1) groupIds.set(g, groupIds.size + 1);

  const db = CatalogDatabase.create(file, { rootPrefix: mountPath, revision: opts.revision, lastModified: nowSeconds });
  try {
    let rootEntry!: CatalogEntry;
    db.transaction(() => {
      rootEntry = row(root.meta, baseNameOf(mountPath), {
        size: DIR_SIZE, flags: catalogFlags({ kind: 'dir', nestedRoot: true }), linkcount: 2 + subdirCount(root), hardlinkGroup: 0, hash: null, symlink: '',
      });
      db.upsert(mountPath, rootEntry); // first insert: rowid 1 (§11.7, pitfall 11)
      const dirFlags = catalogFlags({ kind: 'dir' });
      const write = (dir: DirNode, dirPath: string) => {
        for (const name of sortedNames(dir)) {
          const node = dir.children.get(name)!;
          const p = `${dirPath}/${name}`;
          if (node.kind === 'dir') {
            db.upsert(p, row(node.meta, name, { size: DIR_SIZE, flags: dirFlags, linkcount: 2 + subdirCount(node), hardlinkGroup: 0, hash: null, symlink: '' }));
            write(node, p);
            node.children.clear(); // written: its memory is free for what follows
            continue;
          }
          const group = node.group ? groupIds.get(node.group) ?? 0 : 0;
          const linkcount = group ? groupSize.get(node.group!)! : 1;
          if (node.kind === 'symlink') {
            db.upsert(p, row(node.meta, name, { linkcount, hardlinkGroup: group, size: BigInt(Buffer.byteLength(node.target)),
              flags: catalogFlags({ kind: 'symlink' }), hash: null, symlink: node.target }));
          } else if (node.kind === 'special') {
            db.upsert(p, row(node.meta, name, { linkcount, hardlinkGroup: group, size: node.rdev, flags: catalogFlags({ kind: 'special' }), hash: null, symlink: '' }));
          } else {
            const c = node.content as FileContent; // settled above
            const whole = typeof c === 'string';
            db.upsert(p, row(node.meta, name, { linkcount, hardlinkGroup: group, size: BigInt(node.size), symlink: '',
              flags: catalogFlags({ kind: 'file', chunked: !whole, hasHash: whole, algo: opts.algo }),
              hash: whole ? digestBytes(c) : null }));
            if (!whole) for (const ch of c.chunks) db.insertChunk(p, ch);
          }
        }
      };
      write(root, mountPath);
      root.children.clear();
      if (opts.previousRevision) db.setProperty('previous_revision', opts.previousRevision);
      db.setCounters('self', db.computeSelfCounters());
    });
    const self = db.counters('self');
    db.finalize();
    return { rootEntry, self };
  } finally {
    db.close();
  }
}
