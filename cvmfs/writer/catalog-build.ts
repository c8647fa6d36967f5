/** Writes a LayerTree as one nested catalog rooted at its mount path (docs/cvmfs-format.md §11). */
import { catalogFlags, DIR_SIZE, S_IFREG, type Counters } from '../format/catalog-schema.js';
import { CatalogDatabase, type CatalogEntry } from '../format/catalog-statements.js';
import type { HashAlgo } from '../format/hash.js';
import { encodeObject } from '../format/object.js';
import { baseNameOf } from '../format/path-key.js';
import type { DirNode, FileContent, HardlinkGroup, LeafNode, NodeMeta, TreeNode } from './tree.js';

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

function base(meta: NodeMeta, name: string): Omit<CatalogEntry, 'size' | 'flags' | 'linkcount' | 'hardlinkGroup' | 'hash' | 'symlink'> {
  return { name, mode: meta.mode, mtime: meta.mtime, mtimens: meta.mtimens, uid: meta.uid, gid: meta.gid, xattr: meta.xattr };
}

export async function buildLayerCatalog(file: string, root: DirNode, mountPath: string, opts: BuildOptions): Promise<BuiltCatalog> {
  const nowSeconds = Math.floor(opts.now.getTime() / 1000);
  if (opts.catalogMarker && !root.children.has(CATALOG_MARKER)) {
    // Shares the empty-file object, which readLayer always stores.
    const empty: FileContent = { kind: 'whole', digest: encodeObject(new Uint8Array(0), '', opts.algo).digest };
    root.children.set(CATALOG_MARKER, { kind: 'file', size: 0n, content: Promise.resolve(empty),
      meta: { mode: S_IFREG | 0o644, uid: 0, gid: 0, mtime: nowSeconds, mtimens: null, xattr: null } });
  }

  // One pass to settle every body and count live hardlink members.
  const contents = new Map<LeafNode, FileContent>();
  const groupSize = new Map<HardlinkGroup, number>();
  const pending: Promise<void>[] = [];
  const visit = (n: TreeNode) => {
    if (n.kind === 'dir') { for (const c of n.children.values()) visit(c); return; }
    if (n.group) groupSize.set(n.group, (groupSize.get(n.group) ?? 0) + 1);
    if (n.kind === 'file') pending.push(n.content.then((c) => { contents.set(n, c); }));
  };
  visit(root);
  await Promise.all(pending);
  const groupIds = new Map<HardlinkGroup, number>();
  for (const [g, size] of groupSize) if (size > 1) groupIds.set(g, groupIds.size + 1);

  const db = CatalogDatabase.create(file, { rootPrefix: mountPath, revision: opts.revision, lastModified: nowSeconds });
  try {
    let rootEntry!: CatalogEntry;
    db.transaction(() => {
      rootEntry = {
        ...base(root.meta, baseNameOf(mountPath)), size: DIR_SIZE, flags: catalogFlags({ kind: 'dir', nestedRoot: true }),
        linkcount: 2 + subdirCount(root), hardlinkGroup: 0, hash: null, symlink: '',
      };
      db.upsert(mountPath, rootEntry); // first insert: rowid 1 (§11.7, pitfall 11)
      const write = (dir: DirNode, dirPath: string) => {
        const names = [...dir.children.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
        for (const name of names) {
          const node = dir.children.get(name)!;
          const p = `${dirPath}/${name}`;
          if (node.kind === 'dir') {
            db.upsert(p, { ...base(node.meta, name), size: DIR_SIZE, flags: catalogFlags({ kind: 'dir' }),
              linkcount: 2 + subdirCount(node), hardlinkGroup: 0, hash: null, symlink: '' });
            write(node, p);
            continue;
          }
          const group = node.group ? groupIds.get(node.group) ?? 0 : 0;
          const link = group ? { linkcount: groupSize.get(node.group!)!, hardlinkGroup: group } : { linkcount: 1, hardlinkGroup: 0 };
          if (node.kind === 'symlink') {
            db.upsert(p, { ...base(node.meta, name), ...link, size: BigInt(Buffer.byteLength(node.target)),
              flags: catalogFlags({ kind: 'symlink' }), hash: null, symlink: node.target });
          } else if (node.kind === 'special') {
            db.upsert(p, { ...base(node.meta, name), ...link, size: node.rdev, flags: catalogFlags({ kind: 'special' }), hash: null, symlink: '' });
          } else {
            const c = contents.get(node)!;
            const digest = c.kind === 'whole' ? c.digest : null;
            db.upsert(p, { ...base(node.meta, name), ...link, size: node.size, symlink: '',
              flags: catalogFlags({ kind: 'file', chunked: c.kind === 'chunked', hasHash: digest !== null, algo: opts.algo }),
              hash: digest });
            if (c.kind === 'chunked') for (const ch of c.chunks) db.insertChunk(p, ch);
          }
        }
      };
      write(root, mountPath);
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
