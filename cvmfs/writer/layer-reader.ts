/**
 * Reads one tar stream into a LayerTree. Model: entries are pulled one at a time; a file body is
 * copied into fresh buffers (whole file up to the chunking threshold, else one buffer per
 * content-defined chunk) and handed to the encoder pool, and the loop moves on while workers
 * compress. Before each body, `waitForCapacity` bounds the bytes in flight and MAX_BODIES_IN_FLIGHT
 * their number (a million tiny files would otherwise queue a million jobs under the byte budget).
 * A body's hashes arrive later: the node holds a promise until they do, then the content itself;
 * the catalog builder awaits the few still pending.
 */
import type { Readable } from 'node:stream';
import { CvmfsError } from '../errors.js';
import { makedev, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG } from '../format/catalog-schema.js';
import type { Chunk } from '../format/catalog-statements.js';
import { textualHash, type HashAlgo } from '../format/hash.js';
import { encodeObject, objectPath, type ObjectSuffix } from '../format/object.js';
import { encodeXattrs } from '../format/xattr.js';
import { Chunker, CHUNKING_THRESHOLD_BYTES } from './chunker.js';
import type { Encoded, ZlibPool } from '../zlib-pool.js';
import type { ObjectSink } from './object-sink.js';
import { checkEntry, type CheckedEntry } from '../tar/entry-rules.js';
import { openTar, type TarCompression } from './tar-input.js';
import { contentOfDigest, LayerTree, tarFail, type FileContent, type NodeMeta } from './tree.js';

/** Bodies handed to the encoder pool and not yet stored: bounds the pool's queue and pending writes by count. */
export const MAX_BODIES_IN_FLIGHT = 1024;

export interface LayerReadStats {
  entries: number;
  files: number;
  /** Hardlinks into a lower layer stored as copies / left out (missingHardlink). */
  hardlinksCopied: number;
  hardlinksSkipped: number;
  /** Uncompressed bytes of regular file content. */
  contentBytes: number;
  compression: TarCompression;
}

export interface LayerReadContext {
  readonly mountPath: string;
  readonly algo: HashAlgo;
  readonly pool: ZlibPool;
  readonly sink: ObjectSink;
  readonly now: Date;
  /** A hardlink to a name not in this tar: its content to store instead, or undefined to leave it out (transaction.ts IngestOptions). */
  readonly missingHardlink?: (name: string, target: string) => Promise<Buffer | undefined>;
}

function metaOf(e: CheckedEntry, typeBits: number): NodeMeta {
  let xattr: Buffer | null;
  try { xattr = encodeXattrs(e.xattrs as Map<string, Buffer>); } catch (err) {
    throw new CvmfsError('CVMFS_BAD_XATTR', `entry "${e.name}": ${(err as Error).message}`, { cause: err });
  }
  return { mode: typeBits | e.mode, uid: e.uid, gid: e.gid, mtime: e.mtimeSeconds, mtimens: e.mtimeNanos, xattr };
}

export async function readLayer(input: Readable, ctx: LayerReadContext): Promise<{ tree: LayerTree; stats: LayerReadStats }> {
  const { mountPath, algo, pool, sink, now } = ctx;
  const nowSeconds = Math.floor(now.getTime() / 1000);
  const tree = new LayerTree({ mode: S_IFDIR | 0o755, uid: 0, gid: 0, mtime: nowSeconds, mtimens: null, xattr: null });
  const tarIn = await openTar(input);
  const stats: LayerReadStats = { entries: 0, files: 0, hardlinksCopied: 0, hardlinksSkipped: 0, contentBytes: 0, compression: tarIn.compression };

  // Every empty file shares one content, known at once; readLayer returns only once the empty object is stored.
  const empty = encodeObject(new Uint8Array(0), '', algo);
  const emptyStored = sink.put(empty.path, empty.stored);
  emptyStored.catch(() => {});
  const emptyContent: FileContent = contentOfDigest(empty.digest);

  const store = (enc: Promise<Encoded>, suffix: ObjectSuffix): Promise<Buffer> =>
    enc.then(async (e) => { await sink.put(objectPath(textualHash(algo, e.digest), suffix), e.stored); return e.digest; });

  let bodiesInFlight = 0;
  const bodyDone: (() => void)[] = [];
  /** Waits for a free body slot and counts `content` in flight until it settles. */
  async function bodySlot(): Promise<(content: Promise<FileContent>) => Promise<FileContent>> {
    while (bodiesInFlight >= MAX_BODIES_IN_FLIGHT) await new Promise<void>((r) => bodyDone.push(r));
    bodiesInFlight++;
    const settled = () => { bodiesInFlight--; bodyDone.shift()?.(); };
    return (content) => { content.then(settled, settled); return content; };
  }

  /** Reads a body; resolves once it was read, with `content` settling once it is stored. */
  type Pending = { readonly content: Promise<FileContent> };

  async function readWhole(body: AsyncIterable<Buffer>, size: number, name: string): Promise<Pending> {
    const track = await bodySlot();
    await pool.waitForCapacity();
    const buf = new Uint8Array(size);
    let off = 0;
    for await (const c of body) {
      if (off + c.length > size) throw new CvmfsError('CVMFS_TAR_CORRUPT', `entry "${name}" has more data than its header says`);
      buf.set(c, off);
      off += c.length;
    }
    if (off !== size) throw new CvmfsError('CVMFS_TAR_CORRUPT', `entry "${name}" is truncated (${off} of ${size} bytes)`);
    return { content: track(store(pool.encode(buf, algo), '').then(contentOfDigest)) };
  }

  async function readChunked(body: AsyncIterable<Buffer>, size: number, name: string): Promise<Pending> {
    const track = await bodySlot();
    const chunker = new Chunker();
    const encoded: { offset: number; size: number; enc: Promise<Encoded> }[] = [];
    let parts: Buffer[] = [];
    let partBytes = 0;
    let offset = 0;
    const cut = (n: number) => {
      const data = new Uint8Array(n);
      let pos = 0;
      for (const p of parts) { data.set(p, pos); pos += p.length; }
      encoded.push({ offset, size: n, enc: pool.encode(data, algo) });
      encoded[encoded.length - 1]!.enc.catch(() => {});
      offset += n;
      parts = [];
      partBytes = 0;
    };
    for await (const c of body) {
      let rest = c;
      for (const end of chunker.cuts(c)) {
        const consumed = end - (c.length - rest.length);
        parts.push(rest.subarray(0, consumed));
        partBytes += consumed;
        cut(partBytes);
        rest = rest.subarray(consumed);
        await pool.waitForCapacity();
      }
      if (rest.length > 0) { parts.push(rest); partBytes += rest.length; }
    }
    if (partBytes > 0) cut(partBytes);
    if (offset !== size) throw new CvmfsError('CVMFS_TAR_CORRUPT', `entry "${name}" is truncated (${offset} of ${size} bytes)`);
    // A file that yields a single chunk is stored as a normal file, as cvmfs_server does.
    if (encoded.length === 1) return { content: track(store(encoded[0]!.enc, '').then(contentOfDigest)) };
    const chunks = encoded.map((e) => store(e.enc, 'P').then((hash): Chunk => ({ offset: BigInt(e.offset), size: BigInt(e.size), hash })));
    return { content: track(Promise.all(chunks).then((cs): FileContent => ({ chunks: cs }))) };
  }

  try {
    for await (const entry of tarIn.entries) {
      const e = checkEntry(entry.header, tarFail, { prefixBytes: Buffer.byteLength(mountPath) });
      const { name, parts } = e;
      stats.entries++;
      switch (e.type) {
        case 'directory':
          tree.addDir(parts, name, metaOf(e, S_IFDIR));
          break;
        case 'file': {
          const size = e.size;
          const meta = metaOf(e, S_IFREG);
          const body = entry as AsyncIterable<Buffer>;
          // A pending content is awaited by the catalog builder; the tree observes it, so never an unhandled rejection.
          const content = size === 0 ? emptyContent
            : (size > CHUNKING_THRESHOLD_BYTES ? await readChunked(body, size, name) : await readWhole(body, size, name)).content;
          stats.files++;
          stats.contentBytes += size;
          tree.addFile(parts, name, meta, size, content);
          break;
        }
        case 'symlink':
          tree.addSymlink(parts, name, metaOf(e, S_IFLNK), e.symlinkTarget);
          break;
        case 'link': {
          if (ctx.missingHardlink === undefined || tree.find(e.linkParts!) !== undefined) {
            tree.addHardlink(parts, name, e.linkParts!, entry.header.linkname ?? '');
            break;
          }
          const bytes = await ctx.missingHardlink(name, e.linkParts!.join('/'));
          if (bytes === undefined) { stats.hardlinksSkipped++; break; }
          const size = bytes.length;
          const body = (async function* () { yield bytes; })();
          const content = size === 0 ? emptyContent
            : (size > CHUNKING_THRESHOLD_BYTES ? await readChunked(body, size, name) : await readWhole(body, size, name)).content;
          tree.addFile(parts, name, metaOf(e, S_IFREG), size, content);
          stats.hardlinksCopied++;
          break;
        }
        case 'character-device':
        case 'block-device':
          tree.addSpecial(parts, name, metaOf(e, e.type === 'character-device' ? S_IFCHR : S_IFBLK), makedev(e.devMajor, e.devMinor));
          break;
        case 'fifo':
          tree.addSpecial(parts, name, metaOf(e, S_IFIFO), 0n);
          break;
      }
      entry.resume();
    }
  } catch (err) {
    tarIn.entries.destroy();
    throw err instanceof CvmfsError ? err : tarIn.wrapError(err);
  }
  await tarIn.done;
  await emptyStored;
  return { tree, stats };
}
