/**
 * Reads one tar stream into a LayerTree. Model: entries are pulled one at a time; a file body is
 * copied into fresh buffers (whole file up to the chunking threshold, else one buffer per
 * content-defined chunk) and handed to the encoder pool, and the loop moves on while workers
 * compress. A body (or chunk) counts against MAX_BODY_BYTES_IN_FLIGHT and MAX_BODIES_IN_FLIGHT
 * from its read until its object is stored, so neither the pool's queue nor the compressed objects
 * waiting for storage grow past them (a million tiny files would otherwise queue a million jobs).
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
import { Chunker, CHUNK_MAX_BYTES, CHUNKING_THRESHOLD_BYTES } from './chunker.js';
import type { Encoded, ZlibPool } from '../zlib-pool.js';
import type { ObjectSink } from './object-sink.js';
import { checkEntry, type CheckedEntry } from '../tar/entry-rules.js';
import { openTar, type TarCompression } from './tar-input.js';
import { contentOfDigest, LayerTree, tarFail, type FileContent, type NodeMeta } from './tree.js';

/** Bodies read and not yet stored: bounds the pool's queue and pending writes by count. */
export const MAX_BODIES_IN_FLIGHT = 256;
/** Their bytes (uncompressed): room for both workers' chunks and the next, whatever the storage's pace. */
export const MAX_BODY_BYTES_IN_FLIGHT = 24 * 1024 * 1024;

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
  let bytesInFlight = 0;
  let scratch: Uint8Array | undefined;
  const waiting: (() => void)[] = [];
  /**
   * Waits until `bytes` more fit (one body always fits when nothing is in flight, so a 16 MiB
   * chunk never waits forever), counts them, and returns their release.
   */
  async function reserve(bytes: number, counted: boolean): Promise<() => void> {
    const full = () => (counted && bodiesInFlight >= MAX_BODIES_IN_FLIGHT)
      || (bytesInFlight > 0 && bytesInFlight + bytes > MAX_BODY_BYTES_IN_FLIGHT);
    while (full()) await new Promise<void>((r) => waiting.push(r));
    if (counted) bodiesInFlight++;
    bytesInFlight += bytes;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (counted) bodiesInFlight--;
      bytesInFlight -= bytes;
      for (const wake of waiting.splice(0)) wake();
    };
  }
  const releasedWhenSettled = <T>(p: Promise<T>, release: () => void): Promise<T> => { p.then(release, release); return p; };

  /** Reads a body; resolves once it was read, with `content` settling once it is stored. */
  type Pending = { readonly content: Promise<FileContent> };

  async function readWhole(body: AsyncIterable<Buffer>, size: number, name: string): Promise<Pending> {
    const release = await reserve(size, true);
    await pool.waitForCapacity();
    const buf = new Uint8Array(size);
    let off = 0;
    try {
      for await (const c of body) {
        if (off + c.length > size) throw new CvmfsError('CVMFS_TAR_CORRUPT', `entry "${name}" has more data than its header says`);
        buf.set(c, off);
        off += c.length;
      }
      if (off !== size) throw new CvmfsError('CVMFS_TAR_CORRUPT', `entry "${name}" is truncated (${off} of ${size} bytes)`);
    } catch (err) { release(); throw err; }
    return { content: releasedWhenSettled(store(pool.encode(buf, algo), '').then(contentOfDigest), release) };
  }

  async function readChunked(body: AsyncIterable<Buffer>, size: number, name: string): Promise<Pending> {
    const releaseFile = await reserve(0, true);
    const chunker = new Chunker();
    // A file that yields a single chunk is stored as a normal file, as cvmfs_server does: the first
    // chunk waits (encoded, its bytes still counted) until a second one shows it is one of many.
    let first: { offset: number; size: number; enc: Promise<Encoded>; release: () => void } | undefined;
    const chunks: Promise<Chunk>[] = [];
    const storeChunk = (c: { offset: number; size: number; enc: Promise<Encoded>; release: () => void }) => {
      chunks.push(releasedWhenSettled(store(c.enc, 'P').then((hash): Chunk => ({ offset: BigInt(c.offset), size: BigInt(c.size), hash })), c.release));
    };
    const held: (() => void)[] = [releaseFile];
    // The chunk being cut is copied here as it arrives, never kept as stream buffers: a decompressor's
    // output slices pin parents up to twice their size (zstd-napi's are 128 KiB each).
    scratch ??= new Uint8Array(CHUNK_MAX_BYTES);
    const buf = scratch;
    let partBytes = 0;
    let offset = 0;
    const cut = async (n: number) => {
      // A second chunk: the first is one of many, and is stored before this one waits for room
      // (held, it could keep the budget full for good).
      if (first !== undefined) { storeChunk(first); first = undefined; }
      const release = await reserve(n, false);
      held.push(release);
      await pool.waitForCapacity();
      const c = { offset, size: n, enc: pool.encode(buf.slice(0, n), algo), release };
      c.enc.catch(() => {});
      if (offset === 0) first = c; else storeChunk(c);
      offset += n;
      partBytes = 0;
    };
    const append = (b: Buffer) => {
      if (partBytes + b.length > buf.length) throw new CvmfsError('CVMFS_INTERNAL', `entry "${name}": a chunk above ${buf.length} bytes`);
      buf.set(b, partBytes);
      partBytes += b.length;
    };
    try {
      for await (const c of body) {
        let rest = c;
        for (const end of chunker.cuts(c)) {
          const consumed = end - (c.length - rest.length);
          append(rest.subarray(0, consumed));
          rest = rest.subarray(consumed);
          await cut(partBytes);
        }
        if (rest.length > 0) append(rest);
      }
      if (partBytes > 0) await cut(partBytes);
      if (offset !== size) throw new CvmfsError('CVMFS_TAR_CORRUPT', `entry "${name}" is truncated (${offset} of ${size} bytes)`);
    } catch (err) {
      // The layer fails: what this file holds is freed at once (a release runs once).
      for (const r of held) r();
      throw err;
    }
    if (first !== undefined) {
      const f = first;
      return { content: releasedWhenSettled(releasedWhenSettled(store(f.enc, '').then(contentOfDigest), f.release), releaseFile) };
    }
    return { content: releasedWhenSettled(Promise.all(chunks).then((cs): FileContent => ({ chunks: cs })), releaseFile) };
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
