/**
 * Image source: a `docker save` tar. Two layouts:
 *
 * - legacy (Docker ≤ 24, e.g. Debian's 20.10): `manifest.json` = [{Config, RepoTags, Layers}],
 *   `<hex>.json` configs, `<v1 id>/layer.tar` uncompressed layers. Docker writes a repeated layer
 *   (same diffID at another chain position) once and makes the other `layer.tar` a relative
 *   symlink to it (moby image/tarexport/save.go), so in-archive symlinks are followed.
 *   There is no manifest: we synthesise a Docker v2 one. An uncompressed layer's digest *is* its
 *   diffID, so the layer digests are the config's diff_ids, verified when the layer is read
 *   (layer-stream.ts); a `layer.tar` that is in fact gzip or zstd (`docker load` accepts those)
 *   is hashed once here and described by its compressed media type.
 * - OCI-in-tar (Docker ≥ 25): `oci-layout`, `index.json`, `blobs/sha256/…`, plus `manifest.json`;
 *   the real manifest is found through the index and verified.
 *
 * The tar is indexed once (entry name → data offset and size, PAX and GNU long names honoured)
 * by reading headers only; blobs are then served as range reads of the file. Entry names must
 * stay inside the archive: absolute names, `..` components, duplicates, links leaving the
 * archive or sizes past its end are refused as D2C_BAD_IMAGE naming the entry.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Readable } from 'node:stream';
import { ConvertError } from '../errors.js';
import { MEDIA, SHA256_DIGEST, type Descriptor, type ImageManifest, type Platform, type ResolvedImage } from '../image.js';
import { MAX_CONFIG_BYTES, MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES, checkDigest, isIndexType, isManifestType, parseConfig, parseDescribed,
  parseIndex, readAll, sha256 } from '../manifest.js';
import { hostPlatform } from '../platform.js';
import { checkReference, formatReference } from '../reference.js';
import { MAX_LAYOUT_FILE_BYTES, checkLayoutFile, chooseManifest, loadImage, readDescribed, resolveTop, type BlobReader } from './oci-layout.js';

/** Longest PAX or GNU long-name body we accept. */
const MAX_META_ENTRY_BYTES = 1024 * 1024;
/** Most symlink/hardlink hops we follow inside the archive. */
const MAX_LINK_HOPS = 8;
const BLOCK = 512;

interface TarHeaders {
  decode(buf: Buffer, filenameEncoding: string, allowUnknownFormat: boolean): RawHeader | null;
  decodePax(buf: Buffer): Record<string, string>;
  decodeLongPath(buf: Buffer, encoding: string): string;
}
interface RawHeader { name: string; type: string | null; size: number | null; linkname: string | null }

const require = createRequire(import.meta.url);
// tar-stream's pure header codec (the same module cvmfs/tar/pax.ts reaches into).
const headers = require(path.join(path.dirname(require.resolve('tar-stream')), 'headers.js')) as TarHeaders;

type EntryType = 'file' | 'directory' | 'symlink' | 'link' | 'other';
interface Entry { readonly name: string; readonly type: EntryType; readonly offset: number; readonly size: number; readonly linkname?: string }

const bad = (why: string): ConvertError => new ConvertError('D2C_BAD_IMAGE', why);

/** `./a/b/` → `a/b`; refuses what could leave the archive root. */
function entryName(raw: string, file: string): string {
  if (raw.includes('\0')) throw bad(`docker archive ${file}: entry name ${JSON.stringify(raw)} holds a NUL byte`);
  if (raw.startsWith('/')) throw bad(`docker archive ${file}: entry ${JSON.stringify(raw)} has an absolute name`);
  const parts = raw.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.includes('..')) throw bad(`docker archive ${file}: entry ${JSON.stringify(raw)} has a ".." component`);
  return parts.join('/');
}

/** Reads every header once; data is skipped, not read. */
async function indexTar(file: string): Promise<Map<string, Entry>> {
  const fh = await fs.promises.open(file, 'r').catch((err: unknown) => {
    throw new ConvertError((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'D2C_IMAGE_NOT_FOUND' : 'D2C_IO_FAILED',
      `docker archive ${file}: ${(err as Error).message}`, { cause: err });
  });
  try {
    const total = (await fh.stat()).size;
    const entries = new Map<string, Entry>();
    const block = Buffer.alloc(BLOCK);
    let pos = 0;
    let pax: Record<string, string> = {};
    let longName: string | undefined;
    let longLink: string | undefined;
    const readBody = async (size: number, at: number, what: string): Promise<Buffer> => {
      if (size > MAX_META_ENTRY_BYTES) throw bad(`docker archive ${file}: ${what} at offset ${at} is ${size} bytes`);
      const b = Buffer.alloc(size);
      await fh.read(b, 0, size, at + BLOCK);
      return b;
    };
    for (;;) {
      if (pos + BLOCK > total) {
        // No end-of-archive blocks: accepted (GNU tar reads such archives), but only at a boundary.
        if (pos === total) break;
        throw new ConvertError('D2C_TRUNCATED', `docker archive ${file}: ends inside a header at offset ${pos}`);
      }
      await fh.read(block, 0, BLOCK, pos);
      let h: RawHeader | null;
      try { h = headers.decode(block, 'utf-8', false); } catch (err) {
        throw new ConvertError('D2C_BAD_IMAGE', `docker archive ${file}: invalid tar header at offset ${pos} (${(err as Error).message})`, { cause: err });
      }
      if (h === null) break; // zero block: end of archive
      const rawName = longName ?? pax.path ?? h.name;
      const size = pax.size !== undefined ? Number(pax.size) : (h.size ?? 0);
      if (!Number.isSafeInteger(size) || size < 0) throw bad(`docker archive ${file}: entry ${JSON.stringify(rawName)} has an invalid size`);
      const dataEnd = pos + BLOCK + size;
      if (dataEnd > total) {
        throw bad(`docker archive ${file}: entry ${JSON.stringify(rawName)} claims ${size} bytes, past the end of the archive (${total} bytes)`);
      }
      const next = pos + BLOCK + Math.ceil(size / BLOCK) * BLOCK;
      switch (h.type) {
        case 'pax-header': pax = { ...pax, ...headers.decodePax(await readBody(size, pos, 'a PAX header')) }; pos = next; continue;
        case 'pax-global-header': pos = next; continue;
        case 'gnu-long-path': longName = headers.decodeLongPath(await readBody(size, pos, 'a GNU long name'), 'utf-8'); pos = next; continue;
        case 'gnu-long-link-path': longLink = headers.decodeLongPath(await readBody(size, pos, 'a GNU long link name'), 'utf-8'); pos = next; continue;
        default: break;
      }
      const name = entryName(rawName, file);
      const type: EntryType = h.type === 'file' || h.type === 'contiguous-file' ? 'file'
        : h.type === 'directory' || h.type === 'symlink' || h.type === 'link' ? h.type : 'other';
      const linkname = longLink ?? pax.linkpath ?? h.linkname ?? undefined;
      if (name !== '' || type !== 'directory') {
        if (entries.has(name)) throw bad(`docker archive ${file}: entry ${JSON.stringify(name)} appears twice`);
        entries.set(name, { name, type, offset: pos + BLOCK, size: type === 'file' ? size : 0, ...(linkname ? { linkname } : {}) });
      }
      pax = {}; longName = undefined; longLink = undefined;
      pos = next;
    }
    return entries;
  } finally { await fh.close(); }
}

class ArchiveBlobs implements BlobReader {
  /** digest → archive entry name, for the blobs this image may ask for. */
  private readonly byDigest = new Map<string, string>();

  constructor(readonly file: string, private readonly entries: Map<string, Entry>) {}

  /** The regular file `name` names, following in-archive symlinks and hardlinks. */
  resolve(name: string, referrer: string): Entry {
    let cur = entryName(name, this.file);
    for (let hop = 0; hop <= MAX_LINK_HOPS; hop++) {
      const e = this.entries.get(cur);
      if (!e) throw bad(`docker archive ${this.file}: entry ${JSON.stringify(cur)} (named by ${referrer}) is missing`);
      if (e.type === 'file') return e;
      if ((e.type !== 'symlink' && e.type !== 'link') || !e.linkname) {
        throw bad(`docker archive ${this.file}: entry ${JSON.stringify(cur)} (named by ${referrer}) is a ${e.type}, not a file`);
      }
      const target = e.type === 'symlink' ? path.posix.join(path.posix.dirname(cur), e.linkname) : e.linkname;
      if (e.linkname.startsWith('/') || target === '..' || target.startsWith('../')) {
        throw bad(`docker archive ${this.file}: entry ${JSON.stringify(cur)} links to ${JSON.stringify(e.linkname)}, outside the archive`);
      }
      cur = entryName(path.posix.normalize(target), this.file);
    }
    throw bad(`docker archive ${this.file}: entry ${JSON.stringify(name)} is a chain of more than ${MAX_LINK_HOPS} links`);
  }

  has(name: string): boolean { return this.entries.has(name); }

  register(digest: string, name: string): void { this.byDigest.set(digest, name); }

  private entryFor(d: Descriptor): Entry {
    let name = this.byDigest.get(d.digest);
    if (name === undefined && SHA256_DIGEST.test(d.digest)) {
      const blob = `blobs/sha256/${d.digest.slice('sha256:'.length)}`;
      if (this.entries.has(blob)) name = blob;
    }
    if (name === undefined) throw bad(`docker archive ${this.file}: holds no blob ${d.digest}`);
    return this.resolve(name, `blob ${d.digest}`);
  }

  range(e: Entry, length = e.size): Readable {
    if (length === 0) return Readable.from([]);
    return fs.createReadStream(this.file, { start: e.offset, end: e.offset + length - 1 });
  }

  async openBlob(d: Descriptor): Promise<Readable> {
    return this.range(this.entryFor(d));
  }

  async readSmall(d: Descriptor, limit: number, what: string): Promise<Buffer> {
    if (d.size > limit) throw bad(`${what} ${d.digest} declares ${d.size} bytes, more than the ${limit} we read`);
    const e = this.entryFor(d);
    if (e.size > d.size) throw new ConvertError('D2C_DIGEST_MISMATCH', `${what} ${d.digest} is ${e.size} bytes, its descriptor says ${d.size}`);
    return readAll(this.range(e), limit, () => bad(`${what} ${d.digest} is larger than ${limit} bytes`));
  }

  async readEntry(name: string, limit: number, referrer: string): Promise<Buffer> {
    const e = this.resolve(name, referrer);
    if (e.size > limit) throw bad(`docker archive ${this.file}: entry ${JSON.stringify(name)} is ${e.size} bytes, more than the ${limit} we read`);
    return readAll(this.range(e), limit, () => bad(`docker archive ${this.file}: entry ${JSON.stringify(name)} grew while read`));
  }

  async head(e: Entry, n: number): Promise<Buffer> {
    return readAll(this.range(e, Math.min(n, e.size)), n, () => bad('unreachable'));
  }

  async hashEntry(e: Entry): Promise<string> {
    const h = createHash('sha256');
    for await (const chunk of this.range(e)) h.update(chunk as Buffer);
    return `sha256:${h.digest('hex')}`;
  }
}

interface LegacyEntry { readonly Config: string; readonly RepoTags: readonly string[]; readonly Layers: readonly string[] }

function parseLegacyManifest(bytes: Buffer, file: string): LegacyEntry[] {
  let v: unknown;
  try { v = JSON.parse(bytes.toString('utf8')); } catch (err) {
    throw new ConvertError('D2C_BAD_IMAGE', `docker archive ${file}: manifest.json is not JSON (${(err as Error).message})`, { cause: err });
  }
  if (!Array.isArray(v)) throw bad(`docker archive ${file}: manifest.json is not a list`);
  return v.map((x: unknown, i): LegacyEntry => {
    const o = x as Record<string, unknown> | null;
    const what = `docker archive ${file}: manifest.json entry ${i}`;
    if (!o || typeof o !== 'object') throw bad(`${what} is not an object`);
    if (typeof o.Config !== 'string') throw bad(`${what} has no Config`);
    if (!Array.isArray(o.Layers) || o.Layers.some((l) => typeof l !== 'string')) throw bad(`${what} has no Layers list`);
    const tags = o.RepoTags === null || o.RepoTags === undefined ? [] : o.RepoTags;
    if (!Array.isArray(tags) || tags.some((t) => typeof t !== 'string')) throw bad(`${what} has invalid RepoTags`);
    return { Config: o.Config, RepoTags: tags as string[], Layers: o.Layers as string[] };
  });
}

/**
 * `docker.io/library/busybox` and `busybox:latest` name the same tag: the familiar form of the
 * parsed reference (Docker Hub's aliases are reference.ts's). A RepoTag that is not a reference
 * stays as it is, so it can still match itself.
 */
export function normalizeTag(ref: string): string {
  const r = checkReference(ref);
  return r.ok ? formatReference(r.reference, { familiar: true }) : ref;
}

function pickLegacy(entries: LegacyEntry[], ref: string | undefined, file: string): { entry: LegacyEntry; tag: string | undefined } {
  const all = entries.flatMap((e) => e.RepoTags);
  if (ref !== undefined) {
    const want = normalizeTag(ref);
    for (const e of entries) {
      const tag = e.RepoTags.find((t) => normalizeTag(t) === want);
      if (tag) return { entry: e, tag };
    }
    throw new ConvertError('D2C_IMAGE_NOT_FOUND', `docker archive ${file}: no image tagged ${ref} (tags: ${all.join(', ') || 'none'})`);
  }
  if (entries.length === 1) return { entry: entries[0]!, tag: entries[0]!.RepoTags[0] };
  if (entries.length === 0) throw new ConvertError('D2C_IMAGE_NOT_FOUND', `docker archive ${file}: manifest.json lists no image`);
  throw new ConvertError('D2C_USAGE',
    `docker archive ${file} holds ${entries.length} images: choose one by ref (tags: ${entries.map((e) => e.RepoTags.join(' ') || `<untagged ${e.Config}>`).join(', ')})`);
}

/** The config digest a Config path implies (`<hex>.json` or `blobs/sha256/<hex>`), if any. */
function configDigestOfName(name: string): string | undefined {
  const m = /^(?:blobs\/sha256\/([0-9a-f]{64})|([0-9a-f]{64})\.json)$/.exec(name);
  return m ? `sha256:${m[1] ?? m[2]}` : undefined;
}

/** In an OCI-in-tar archive, the manifest (through index.json) whose config is `configDigest`. */
async function findOciManifest(store: ArchiveBlobs, configDigest: string, file: string): Promise<Descriptor | undefined> {
  const index = parseIndex(await store.readEntry('index.json', MAX_MANIFEST_BYTES, 'the archive'), `docker archive ${file}: index.json`);
  const walk = async (ds: readonly Descriptor[], indexes: number): Promise<Descriptor | undefined> => {
    for (const d of ds) {
      if (isIndexType(d.mediaType) && indexes < MAX_INDEX_DEPTH) {
        const { parsed } = await readDescribed(store, d, `docker archive ${file}:`);
        const found = parsed.kind === 'index' ? await walk(parsed.index.manifests, indexes + 1) : undefined;
        if (found) return found;
      } else if (isManifestType(d.mediaType)) {
        const bytes = await store.readSmall(d, MAX_MANIFEST_BYTES, `docker archive ${file}: manifest`).catch(() => undefined);
        if (!bytes) continue; // not in this archive (another platform of a partial save)
        checkDigest(bytes, d, `docker archive ${file}: manifest`);
        const parsed = parseDescribed(bytes, d, `docker archive ${file}: manifest ${d.digest}`);
        if (parsed.kind === 'manifest' && parsed.manifest.config.digest === configDigest) return d;
      }
    }
    return undefined;
  };
  return walk(index.manifests, 1);
}

const GZIP = Buffer.from([0x1f, 0x8b]);
const ZSTD = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** The legacy layout has no manifest: one is made from manifest.json's entry and the config. */
async function synthesise(store: ArchiveBlobs, entry: LegacyEntry, file: string) {
  const configBytes = await store.readEntry(entry.Config, MAX_CONFIG_BYTES, 'manifest.json');
  const configDigest = sha256(configBytes);
  const named = configDigestOfName(entry.Config);
  if (named && named !== configDigest) {
    throw new ConvertError('D2C_DIGEST_MISMATCH', `docker archive ${file}: config ${entry.Config} has sha256 ${configDigest}`);
  }
  const config = parseConfig(configBytes, `docker archive ${file}: config ${entry.Config}`, entry.Layers.length);
  store.register(configDigest, entry.Config);
  const layers: Descriptor[] = [];
  for (const [i, name] of entry.Layers.entries()) {
    const e = store.resolve(name, 'manifest.json');
    const head = await store.head(e, ZSTD.length);
    const gz = head.subarray(0, 2).equals(GZIP);
    const zst = head.subarray(0, 4).equals(ZSTD);
    // Uncompressed: the blob digest is the diffID by definition; checked when the layer is read.
    const digest = gz || zst ? await store.hashEntry(e) : config.rootfs.diff_ids[i]!;
    store.register(digest, e.name);
    layers.push({ mediaType: gz ? MEDIA.dockerLayerGzip : zst ? MEDIA.dockerLayerZstd : MEDIA.dockerLayer, digest, size: e.size });
  }
  const manifest: ImageManifest = {
    schemaVersion: 2, mediaType: MEDIA.dockerManifest,
    config: { mediaType: MEDIA.dockerConfig, digest: configDigest, size: configBytes.length }, layers,
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 3));
  return { manifest, manifestBytes, manifestDigest: sha256(manifestBytes), config, configBytes };
}

export interface DockerArchiveOptions {
  /** A RepoTag (`busybox:latest`; `docker.io/library/` and `:latest` may be left out). */
  readonly ref?: string;
  /** For an archive whose index.json holds a multi-platform index (default: this host's). */
  readonly platform?: Platform;
}

export async function openDockerArchive(file: string, opts: DockerArchiveOptions = {}): Promise<ResolvedImage> {
  const store = new ArchiveBlobs(file, await indexTar(file));
  const isOci = store.has('index.json') && store.has('oci-layout');
  if (store.has('manifest.json')) {
    const entries = parseLegacyManifest(await store.readEntry('manifest.json', MAX_MANIFEST_BYTES, 'the archive'), file);
    const { entry, tag } = pickLegacy(entries, opts.ref, file);
    const name = `docker-archive:${file}${tag ? `:${tag}` : ''}`;
    const configDigest = configDigestOfName(entry.Config);
    const ociManifest = isOci && configDigest ? await findOciManifest(store, configDigest, file) : undefined;
    if (ociManifest) return { name, ...(await loadImage(store, ociManifest, `docker archive ${file}`)), source: store };
    return { name, ...(await synthesise(store, entry, file)), source: store };
  }
  if (isOci) {
    const what = `docker archive ${file}`;
    const index = parseIndex(await store.readEntry('index.json', MAX_MANIFEST_BYTES, 'the archive'), `${what}: index.json`);
    checkLayoutFile(await store.readEntry('oci-layout', MAX_LAYOUT_FILE_BYTES, 'the archive'), what);
    const d = await chooseManifest(store, resolveTop(index.manifests, opts.ref, what), opts.platform ?? hostPlatform(), what);
    return { name: `docker-archive:${file}${opts.ref ? `:${opts.ref}` : ''}`, ...(await loadImage(store, d, what)), source: store };
  }
  throw bad(`docker archive ${file}: holds neither manifest.json nor index.json: not a docker save archive`);
}
