/**
 * Output: a `docker load`-able tar in the legacy `docker save` layout that Docker 20.10 reads
 * (moby image/tarexport/load.go): `manifest.json` = [{Config, RepoTags, Layers}], the config as
 * `<config hex>.json`, each layer as `<layer id>/layer.tar` with the v1 leftovers `VERSION` and
 * `json` beside it (load ignores them when manifest.json exists; older tools look for them), and
 * `repositories`. The layer id is the layer's OCI chain ID (hex), so it is unique per position in
 * the image and shared by images with the same lower layers; each is written once.
 *
 * Every layer's tar is hashed as it is written and must equal its diffID, which must equal the
 * config's `rootfs.diff_ids`. A tar header needs the size up front: a streamed layer without a
 * `size` is spooled to a temporary file first. Written to a path, the archive goes to a temporary
 * file beside it and is renamed into place only when complete.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Transform, Writable, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { ConvertError, isConvertError } from '../errors.js';
import { SHA256_DIGEST, hexOf } from '../image.js';

export interface ArchiveLayer {
  /** `sha256:…` of the uncompressed tar. */
  readonly diffId: string;
  /** The uncompressed layer tar, whole or as a stream factory (called once). */
  readonly tar: Buffer | (() => Readable);
  /** Byte length of a streamed tar, when known: saves spooling it to a temporary file. */
  readonly size?: number;
}

export interface ArchiveImage {
  /** `name:tag` references to give the image; may be empty. */
  readonly repoTags: readonly string[];
  /** The image config, exact bytes (its sha256 is the image ID). */
  readonly config: Buffer;
  /** Base first; must match the config's `rootfs.diff_ids`. */
  readonly layers: readonly ArchiveLayer[];
}

/** Fixed mtime of the archive's own entries, for reproducible archives. */
const EPOCH = new Date(0);

const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** OCI chain IDs: chain(1) = diffID(1); chain(n) = sha256(chain(n-1) + " " + diffID(n)). */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) out.push(out.length === 0 ? d : sha256(`${out[out.length - 1]!} ${d}`));
  return out;
}

function diffIdsOf(config: Buffer, i: number): string[] {
  let v: unknown;
  try { v = JSON.parse(config.toString('utf8')); } catch (err) {
    throw new ConvertError('D2C_BAD_IMAGE', `image ${i + 1}: config is not JSON (${(err as Error).message})`, { cause: err });
  }
  const ids = (v as { rootfs?: { diff_ids?: unknown } } | null)?.rootfs?.diff_ids;
  if (!Array.isArray(ids) || ids.some((d) => typeof d !== 'string' || !SHA256_DIGEST.test(d))) {
    throw new ConvertError('D2C_BAD_IMAGE', `image ${i + 1}: config has no valid rootfs.diff_ids`);
  }
  return ids as string[];
}

/** Hashes what passes and fails at the end unless it is `diffId` and `size` bytes. */
class DiffIdCheck extends Transform {
  private readonly hash = createHash('sha256');
  private bytes = 0;
  constructor(private readonly diffId: string, private readonly size: number | undefined) { super(); }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    const got = `sha256:${this.hash.digest('hex')}`;
    if (this.size !== undefined && this.bytes !== this.size) {
      cb(new ConvertError(this.bytes < this.size ? 'D2C_TRUNCATED' : 'D2C_BAD_IMAGE', `layer ${this.diffId}: the tar is ${this.bytes} bytes, ${this.size} were announced`));
    } else if (got !== this.diffId) {
      cb(new ConvertError('D2C_DIFFID_MISMATCH', `layer ${this.diffId}: the tar written has diffID ${got}`));
    } else cb();
  }
}

interface PlannedLayer { readonly id: string; readonly layer: ArchiveLayer; readonly parent: string | undefined }

async function addEntry(pack: tar.Pack, name: string, body: Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => pack.entry({ name, size: body.length, mode: 0o644, mtime: EPOCH, uid: 0, gid: 0 }, body, (err) => (err ? reject(err) : resolve())));
}

async function addStreamEntry(pack: tar.Pack, name: string, size: number, body: Readable): Promise<void> {
  let entry!: NodeJS.WritableStream;
  const written = new Promise<void>((resolve, reject) => {
    entry = pack.entry({ name, size, mode: 0o644, mtime: EPOCH, uid: 0, gid: 0 }, (err) => (err ? reject(err) : resolve())) as unknown as NodeJS.WritableStream;
  });
  await Promise.all([pipeline(body, entry), written]);
}

async function writeLayer(pack: tar.Pack, p: PlannedLayer, spoolDir: string): Promise<void> {
  const hex = hexOf(p.id);
  await new Promise<void>((resolve, reject) => pack.entry({ name: `${hex}/`, type: 'directory', mode: 0o755, mtime: EPOCH }, (err) => (err ? reject(err) : resolve())));
  await addEntry(pack, `${hex}/VERSION`, Buffer.from('1.0'));
  const v1 = { id: hex, ...(p.parent ? { parent: hexOf(p.parent) } : {}), created: EPOCH.toISOString(), container_config: { Cmd: null } };
  await addEntry(pack, `${hex}/json`, Buffer.from(JSON.stringify(v1)));
  const { layer } = p;
  if (Buffer.isBuffer(layer.tar)) {
    const got = sha256(layer.tar);
    if (got !== layer.diffId) throw new ConvertError('D2C_DIFFID_MISMATCH', `layer ${layer.diffId}: the tar given has diffID ${got}`);
    await addEntry(pack, `${hex}/layer.tar`, layer.tar);
    return;
  }
  if (layer.size !== undefined) {
    await addStreamEntry(pack, `${hex}/layer.tar`, layer.size, layer.tar().pipe(new DiffIdCheck(layer.diffId, layer.size)));
    return;
  }
  // Unknown size: spool (and verify) first, then copy with a known size.
  const spool = path.join(spoolDir, `layer-${randomBytes(6).toString('hex')}.tar`);
  try {
    await pipeline(layer.tar(), new DiffIdCheck(layer.diffId, undefined), fs.createWriteStream(spool, { flags: 'wx', mode: 0o600 }));
    const { size } = await fs.promises.stat(spool);
    await addStreamEntry(pack, `${hex}/layer.tar`, size, fs.createReadStream(spool));
  } finally {
    await fs.promises.rm(spool, { force: true });
  }
}

async function writeEntries(pack: tar.Pack, images: readonly ArchiveImage[], spoolDir: string): Promise<void> {
  const manifest: { Config: string; RepoTags: string[]; Layers: string[] }[] = [];
  const repositories: Record<string, Record<string, string>> = {};
  const written = new Set<string>();
  const configsWritten = new Set<string>();
  for (const [i, img] of images.entries()) {
    const diffIds = diffIdsOf(img.config, i);
    if (diffIds.length !== img.layers.length) {
      throw new ConvertError('D2C_BAD_IMAGE', `image ${i + 1} (${img.repoTags.join(', ') || 'untagged'}): config lists ${diffIds.length} diff_ids, ${img.layers.length} layers given`);
    }
    img.layers.forEach((l, j) => {
      if (l.diffId !== diffIds[j]) {
        throw new ConvertError('D2C_DIFFID_MISMATCH', `image ${i + 1}: layer ${j + 1} has diffID ${l.diffId}, the config says ${diffIds[j]}`);
      }
    });
    const chain = chainIds(diffIds);
    for (const [j, layer] of img.layers.entries()) {
      const id = chain[j]!;
      if (written.has(id)) continue;
      written.add(id);
      await writeLayer(pack, { id, layer, parent: j > 0 ? chain[j - 1] : undefined }, spoolDir);
    }
    const configName = `${hexOf(sha256(img.config))}.json`;
    if (!configsWritten.has(configName)) { configsWritten.add(configName); await addEntry(pack, configName, img.config); }
    manifest.push({ Config: configName, RepoTags: [...img.repoTags], Layers: chain.map((c) => `${hexOf(c)}/layer.tar`) });
    const top = chain[chain.length - 1];
    for (const tag of img.repoTags) {
      const at = tag.lastIndexOf(':');
      if (at <= tag.lastIndexOf('/') || !top) continue;
      (repositories[tag.slice(0, at)] ??= {})[tag.slice(at + 1)] = hexOf(top);
    }
  }
  await addEntry(pack, 'manifest.json', Buffer.from(JSON.stringify(manifest)));
  await addEntry(pack, 'repositories', Buffer.from(JSON.stringify(repositories)));
}

function ioError(err: unknown, where: string): ConvertError {
  if (isConvertError(err)) return err;
  return new ConvertError('D2C_IO_FAILED', `writing the docker archive ${where} failed (${(err as Error).message})`, { cause: err });
}

/**
 * Writes the archive to `out` (a stream: ended on success, destroyed on failure) or to a file path
 * (via a temporary file renamed into place; nothing is left behind on failure).
 */
export async function writeDockerArchive(out: Writable | string, images: readonly ArchiveImage[],
  opts: { readonly tmpDir?: string } = {}): Promise<void> {
  if (images.length === 0) throw new ConvertError('D2C_USAGE', 'a docker archive needs at least one image');
  const target = typeof out === 'string' ? out : undefined;
  const spoolDir = opts.tmpDir ?? (target ? path.dirname(path.resolve(target)) : os.tmpdir());
  const tmp = target ? path.join(path.dirname(path.resolve(target)), `.${path.basename(target)}.tmp-${randomBytes(6).toString('hex')}`) : undefined;
  const sink: Writable = tmp ? fs.createWriteStream(tmp, { flags: 'wx', mode: 0o644 }) : (out as Writable);
  const pack = tar.pack();
  const where = target ?? 'stream';
  // The pack's output pipes into the sink while entries are added (backpressure through the pack).
  const piped = pipeline(pack as unknown as Readable, new PassThrough(), sink);
  piped.catch(() => {});
  try {
    await writeEntries(pack, images, spoolDir);
    pack.finalize();
    await piped;
    if (tmp && target) {
      const fh = await fs.promises.open(tmp, 'r');
      try { await fh.sync(); } finally { await fh.close(); }
      await fs.promises.rename(tmp, target);
    }
  } catch (err) {
    const e = ioError(err, where);
    pack.destroy(e);
    await piped.catch(() => {});
    if (tmp) await fs.promises.rm(tmp, { force: true });
    else if (!sink.destroyed) sink.destroy(e);
    throw e;
  }
}
