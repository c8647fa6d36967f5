/**
 * bench/convert: `docker2cvmfs convert` of one generated layer (default 1 GiB of ~30,000 files)
 * from a real docker-registry on loopback, side by side in one run with the writer's own ingest of
 * the same compressed layer file and with this machine's physical limit, for a gzip and a zstd
 * image of the same tar. Every arm runs in a fresh child process (this script with --child), so
 * the peak RSS is per arm; repetitions interleave the arms; medians and ranges are printed.
 *   node dist/bench/convert.js [--size-mb 1024] [--files 30000] [--reps 3] [--seed 1]
 *     [--work DIR] [--keep-data] [--arms ingest,convert,limit] [--comp gzip,zstd] [--cpu-prof DIR]
 * Arms:
 *   ingest   cvmfs/writer ingest() of the compressed layer file into a fresh repository, as
 *            `cvmfs-repo ingest` does (a file read stream; the writer sniffs and inflates);
 *   convert  in the child, what `docker2cvmfs convert REF --repo R --keys K --no-thin -q` runs:
 *            openImage() (manifest + config from the registry) and convertImages() into a fresh
 *            repository (blob streamed from the registry, sha256 of blob and tar verified);
 *   limit    single-core rates of each stage of the convert pipeline (HTTP GET of the blob to
 *            nowhere, inflate, sha256 of blob + tar, zlib deflate at the writer's level of the
 *            objects the writer makes, sha1 of the deflated objects), combined as the n-core bound.
 * Data generation and the push run in a child too, so this parent stays small: on Linux a child's
 * resourceUsage().maxRSS starts at the parent's RSS at fork (exec keeps the pre-exec high-water
 * mark). The RSS figures are each child's VmHWM; maxRSS is printed beside it.
 * `--keep-data` keeps (and reuses, when the parameters match) the generated tar and blobs in
 * `--work`; `--cpu-prof DIR` runs the ingest and convert children under `node --cpu-prof`.
 */
import { spawn, execFileSync } from 'node:child_process';
import { createCipheriv, createHash, type Cipher } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Readable, Transform, Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createGunzip, createGzip, deflateSync } from 'node:zlib';
import { CompressStream, DecompressStream } from 'zstd-napi';
import { DirStorage, ingest, initRepository } from '../cvmfs/index.js';
import { ZLIB_LEVEL } from '../cvmfs/format/object.js';
import { Chunker, CHUNKING_THRESHOLD_BYTES } from '../cvmfs/writer/chunker.js';
import { convertImages } from '../docker2cvmfs/convert.js';
import { MEDIA, type Descriptor } from '../docker2cvmfs/image.js';
import { openImage, parseImageArg } from '../docker2cvmfs/images.js';
import { parseReference } from '../docker2cvmfs/reference.js';
import { hostPlatform, RegistryClient } from '../docker2cvmfs/registry/index.js';
import { startRegistry, type TestRegistry } from '../test/lib/registry.js';
import { tuneMallocForWriter, WRITER_ENV, WRITER_NODE_FLAGS } from '../cvmfs/malloc-tune.js';

const { values } = parseArgs({
  options: {
    'size-mb': { type: 'string', default: '1024' }, files: { type: 'string', default: '30000' }, reps: { type: 'string', default: '3' },
    seed: { type: 'string', default: '1' }, work: { type: 'string' }, 'keep-data': { type: 'boolean' },
    arms: { type: 'string', default: 'ingest,convert,limit' }, comp: { type: 'string', default: 'gzip,zstd' },
    'cpu-prof': { type: 'string' }, child: { type: 'string' },
  },
});

const MB = 1e6;
const MiB = 1024 * 1024;
const FQRN = 'bench.example.org';
const REPOSITORY = 'bench/layer';
const MARK = '@@bench-convert ';
const THIS_FILE = fileURLToPath(import.meta.url);
/** Gunzip output chunk of the limit's inflate: large, so stream overhead does not count. */
const LIMIT_INFLATE_CHUNK = 256 * 1024;

type Comp = 'gzip' | 'zstd';
type Arm = 'ingest' | 'convert' | 'limit';
const COMPS: readonly Comp[] = ['gzip', 'zstd'];

// -------------------------------------------------------------------------------------------------
// Deterministic content

/** mulberry32: a small seeded PRNG, plenty for sizes and content choices. */
class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0; }
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  next(): number { return this.u32() / 4294967296; }
  normal(): number {
    const u = Math.max(this.next(), 1e-12), v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}

/** Incompressible bytes: an AES-128-CTR key stream keyed by (seed, stream): deterministic and fast. */
function keyStream(seed: number, stream: string): Cipher {
  const key = createHash('sha256').update(`bench-convert:${seed}:${stream}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
}
const ZEROS = Buffer.alloc(MiB);

/** A vocabulary of identifier-like words, drawn with a skewed (Zipf-like) frequency: text compresses ~3×. */
class Vocabulary {
  readonly bytes: Uint8Array;
  readonly offsets: Uint32Array;
  readonly count: number;
  private readonly seps: Uint8Array[];
  constructor(rng: Rng, count = 4096) {
    const alphabet = 'abcdefghijklmnopqrstuvwxyz_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ';
    const parts: string[] = [];
    for (let i = 0; i < count; i++) {
      const len = 2 + (rng.u32() % 11);
      let w = '';
      for (let k = 0; k < len; k++) w += alphabet[(rng.u32() % (k === 0 ? 26 : alphabet.length))]!;
      parts.push(w);
    }
    this.count = count;
    this.offsets = new Uint32Array(count + 1);
    const all = Buffer.from(parts.join(''), 'latin1');
    let off = 0;
    parts.forEach((w, i) => { this.offsets[i] = off; off += w.length; });
    this.offsets[count] = off;
    this.bytes = all;
    this.seps = [' ', ' ', ' ', ' ', ' ', ' ', '\n', '\n    ', '\n        ', '(', ')', ', ', '.', ' = ', ': ', '"']
      .map((s) => Buffer.from(s, 'latin1'));
  }

  /** Words and separators, with a quarter of the tokens a repeat of 16–79 bytes from the last 8 KiB (code repeats itself). */
  fill(out: Uint8Array, from: number, to: number, rng: Rng): void {
    const { bytes, offsets, count, seps } = this;
    let p = from;
    while (p < to) {
      const r = rng.u32();
      if ((r & 3) === 0 && p - from > 256) {
        const len = 16 + ((r >>> 2) & 63);
        const dist = len + ((r >>> 8) % Math.min(p - from - len, 8192));
        for (let e = Math.min(to, p + len); p < e; p++) out[p] = out[p - dist]!;
        continue;
      }
      const u = ((r >>> 2) & 0xffff) / 65536;
      const w = Math.floor(count * u * u * u * u);
      for (let i = offsets[w]!, e = offsets[w + 1]!; i < e && p < to; i++) out[p++] = bytes[i]!;
      const s = seps[(r >>> 18) & 15]!;
      for (let i = 0; i < s.length && p < to; i++) out[p++] = s[i]!;
    }
  }
}

/** Frequent x86-64 opcode / ModRM / immediate bytes, most frequent first (drawn with a skew). */
const CODE_BYTES = Uint8Array.from([0x00, 0x48, 0x89, 0x8b, 0xe8, 0xff, 0x0f, 0x85, 0x84, 0xc3, 0x24, 0x44, 0x83, 0xc7, 0x01, 0x74,
  0x45, 0x31, 0xc0, 0x4c, 0x8d, 0x05, 0x10, 0x20, 0x08, 0xe9, 0x5d, 0x41, 0x55, 0x53, 0x90, 0xcc]);

type Kind = 'text' | 'binary' | 'random';

/** One file's content, produced in pieces of at most 1 MiB. */
class ContentGen {
  private readonly rng: Rng;
  private readonly cipher: Cipher;
  constructor(private readonly kind: Kind, private readonly vocab: Vocabulary, seed: number, index: number) {
    this.rng = new Rng((seed * 0x9e3779b1) ^ (index * 0x85ebca6b) ^ 0x5bd1e995);
    this.cipher = keyStream(seed, `file-${index}`);
  }

  private random(out: Uint8Array, from: number, n: number): void {
    out.set(this.cipher.update(ZEROS.subarray(0, n)), from);
  }

  /** ELF-like runs (by count): 20 % random data, 40 % machine-code-like bytes, 15 % zero padding, 25 % string tables. */
  private binary(out: Uint8Array, from: number, to: number): void {
    let p = from;
    while (p < to) {
      const r = this.rng.u32();
      const n = Math.min(to - p, 64 + (r & 2047));
      const k = (r >>> 11) % 20;
      if (k < 4) this.random(out, p, n);
      else if (k < 12) {
        // Machine-code-like: skewed byte frequencies, and repeats of 8–39 bytes from the last 4 KiB.
        for (let i = 0; i < n;) {
          const x = this.rng.u32();
          if ((x & 7) === 0 && p + i - from > 64) {
            const len = Math.min(n - i, 8 + ((x >>> 3) & 31));
            const dist = len + ((x >>> 8) % Math.min(p + i - from - len, 4096));
            for (let j = 0; j < len; j++, i++) out[p + i] = out[p + i - dist]!;
            continue;
          }
          for (let j = 8; j < 32 && i < n; j += 8, i++) { const b = (x >>> j) & 255; out[p + i] = CODE_BYTES[(b * b) >>> 11]!; }
        }
      } else if (k < 15) out.fill(0, p, p + n);
      else this.vocab.fill(out, p, p + n, this.rng);
      p += n;
    }
  }

  piece(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    if (this.kind === 'random') this.random(out, 0, n);
    else if (this.kind === 'text') this.vocab.fill(out, 0, n, this.rng);
    else this.binary(out, 0, n);
    return out;
  }
}

interface FilePlan { readonly size: number; readonly kind: Kind }

/**
 * Sizes: `files - large` small and medium files, log-normal (median ≈ 8 KB at 1 GiB / 30,000),
 * at most the chunking threshold, 1 % empty, 70 % of the bytes; `large` files above the chunking
 * threshold (5 MiB and up), 30 % of the bytes. Kinds by count: text 50 %, binary 40 %, random
 * (already compressed: archives, images) 10 %; large ones binary (75 %) or random.
 */
function planFiles(total: number, files: number, rng: Rng): FilePlan[] {
  const large = Math.max(2, Math.round(files / 1500));
  const smallN = Math.max(0, files - large);
  const largeBytes = total * 0.3;
  const smallBytes = total - largeBytes;
  const minLarge = CHUNKING_THRESHOLD_BYTES + MiB;
  const scaleTo = (w: number[], target: number, lo: number, hi: number): number[] => {
    let out = w;
    for (let iter = 0; iter < 20; iter++) {
      const sum = out.reduce((a, b) => a + b, 0);
      if (sum === 0) break;
      const f = target / sum;
      out = out.map((x) => (x === 0 ? 0 : Math.min(hi, Math.max(lo, x * f))));
    }
    return out.map((x) => Math.round(x));
  };
  const smallW = Array.from({ length: smallN }, () => (rng.next() < 0.01 ? 0 : Math.exp(1.5 * rng.normal())));
  const largeW = Array.from({ length: large }, () => Math.exp(0.6 * rng.normal()));
  const small = scaleTo(smallW, smallBytes, 1, CHUNKING_THRESHOLD_BYTES);
  const big = scaleTo(largeW, largeBytes, minLarge, 512 * MiB);
  const plans: FilePlan[] = small.map((size) => {
    const r = rng.next();
    return { size, kind: r < 0.5 ? 'text' : r < 0.9 ? 'binary' : 'random' };
  });
  for (const size of big) plans.splice(rng.u32() % (plans.length + 1), 0, { size, kind: rng.next() < 0.75 ? 'binary' : 'random' });
  return plans;
}

// -------------------------------------------------------------------------------------------------
// The tar (ustar headers written here, names below 100 bytes)

const BLOCK = 512;
const MTIME = 1_700_000_000;

function octal(h: Buffer, off: number, len: number, v: number): void {
  h.write(v.toString(8).padStart(len - 1, '0'), off, len - 1, 'ascii');
}

function header(name: string, type: '0' | '2' | '5', size: number, mode: number, linkname = ''): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, 'utf8');
  octal(h, 100, 8, mode);
  octal(h, 108, 8, 0);
  octal(h, 116, 8, 0);
  octal(h, 124, 12, size);
  octal(h, 136, 12, MTIME);
  h.fill(0x20, 148, 156);
  h.write(type, 156, 1, 'ascii');
  if (linkname) h.write(linkname, 157, 100, 'utf8');
  h.write('ustar\0' + '00', 257, 8, 'ascii');
  h.write('root', 265, 32, 'ascii');
  h.write('root', 297, 32, 'ascii');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  return h;
}

/** Buffered file writer that hashes what it writes. */
class TarOut {
  private readonly fd: number;
  private readonly buf = Buffer.allocUnsafe(8 * MiB);
  private at = 0;
  private readonly hash = createHash('sha256');
  bytes = 0;
  constructor(file: string) { this.fd = fs.openSync(file, 'w'); }
  write(b: Uint8Array): void {
    this.hash.update(b);
    this.bytes += b.length;
    if (this.at + b.length > this.buf.length) this.flush();
    if (b.length >= this.buf.length) { fs.writeSync(this.fd, b); return; }
    this.buf.set(b, this.at);
    this.at += b.length;
  }
  private flush(): void {
    if (this.at > 0) fs.writeSync(this.fd, this.buf.subarray(0, this.at));
    this.at = 0;
  }
  close(): string {
    this.flush();
    fs.closeSync(this.fd);
    return `sha256:${this.hash.digest('hex')}`;
  }
}

const EXT: Readonly<Record<Kind, readonly string[]>> = { text: ['py', 'txt', 'h', 'js', 'json'], binary: ['so', 'bin', 'o', 'pyc'], random: ['gz', 'png', 'jar', 'whl'] };
const TOPS = ['usr/lib/x86_64-linux-gnu', 'usr/share/doc', 'usr/lib/python3/dist-packages', 'opt/app/node_modules', 'usr/include'];

interface TarStats { readonly tarBytes: number; readonly contentBytes: number; readonly files: number; readonly largeFiles: number; readonly entries: number; readonly diffId: string }

/** The layer: directories as they begin, ~40 files per package directory over 3 subdirectories, a symlink per package. */
function writeTar(file: string, total: number, files: number, seed: number): TarStats {
  const rng = new Rng(seed);
  const vocab = new Vocabulary(rng);
  const plans = planFiles(total, files, rng);
  const out = new TarOut(file);
  const dirsDone = new Set<string>();
  let entries = 0, contentBytes = 0;
  const dir = (d: string) => {
    const parts = d.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      if (!dirsDone.has(p)) { dirsDone.add(p); out.write(header(`${p}/`, '5', 0, 0o755)); entries++; }
    }
  };
  const perPkg = 40;
  for (let pkg = 0; pkg * perPkg < plans.length; pkg++) {
    const base = `${TOPS[pkg % TOPS.length]!}/pkg${pkg}`;
    const members = plans.slice(pkg * perPkg, (pkg + 1) * perPkg).map((p, k) => ({ ...p, index: pkg * perPkg + k, sub: (pkg * 7 + k * 13) % 3 }));
    for (let sub = 0; sub < 3; sub++) {
      const d = sub === 0 ? base : `${base}/sub${sub}`;
      const mine = members.filter((m) => m.sub === sub);
      if (mine.length === 0) continue;
      dir(d);
      const fileName = (m: { kind: Kind; index: number }) => `f${m.index}.${EXT[m.kind][m.index % EXT[m.kind].length]!}`;
      for (const m of mine) {
        const name = `${d}/${fileName(m)}`;
        out.write(header(name, '0', m.size, m.kind === 'binary' ? 0o755 : 0o644));
        const gen = new ContentGen(m.kind, vocab, seed, m.index);
        for (let left = m.size; left > 0;) {
          const n = Math.min(MiB, left);
          out.write(gen.piece(n));
          left -= n;
        }
        const pad = (BLOCK - (m.size % BLOCK)) % BLOCK;
        if (pad) out.write(ZEROS.subarray(0, pad));
        entries++;
        contentBytes += m.size;
      }
      if (sub === 0 && mine[0]) { out.write(header(`${d}/current`, '2', 0, 0o777, fileName(mine[0]))); entries++; }
    }
  }
  out.write(ZEROS.subarray(0, 2 * BLOCK));
  const diffId = out.close();
  return { tarBytes: out.bytes, contentBytes, files: plans.length, largeFiles: plans.filter((p) => p.size > CHUNKING_THRESHOLD_BYTES).length, entries, diffId };
}

/** Counts and hashes bytes passing through. */
class HashTap extends Transform {
  private readonly hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void { this.hash.update(chunk); this.bytes += chunk.length; cb(null, chunk); }
  digest(): string { return `sha256:${this.hash.digest('hex')}`; }
}

async function compressFile(src: string, dst: string, comp: Comp): Promise<{ digest: string; size: number }> {
  const tap = new HashTap();
  const z: Transform = comp === 'gzip' ? createGzip({ level: 6 }) : new CompressStream({ compressionLevel: 3 });
  await pipeline(fs.createReadStream(src, { highWaterMark: MiB }), z, tap, fs.createWriteStream(dst));
  return { digest: tap.digest(), size: tap.bytes };
}

interface DataMeta {
  readonly version: 1;
  readonly sizeMb: number;
  readonly files: number;
  readonly seed: number;
  readonly tar: TarStats;
  readonly blobs: Readonly<Record<Comp, { readonly digest: string; readonly size: number }>>;
}

const blobFile = (work: string, c: Comp) => path.join(work, c === 'gzip' ? 'layer.tar.gz' : 'layer.tar.zst');

async function prepareData(work: string, sizeMb: number, files: number, seed: number): Promise<DataMeta> {
  const metaFile = path.join(work, 'data.json');
  const tarFile = path.join(work, 'layer.tar');
  try {
    const m = JSON.parse(fs.readFileSync(metaFile, 'utf8')) as DataMeta;
    const ok = m.version === 1 && m.sizeMb === sizeMb && m.files === files && m.seed === seed
      && fs.statSync(tarFile).size === m.tar.tarBytes && COMPS.every((c) => fs.statSync(blobFile(work, c)).size === m.blobs[c].size);
    if (ok) { console.log(`reusing the generated data in ${work} (--keep-data)`); return m; }
  } catch { /* none yet */ }
  fs.rmSync(metaFile, { force: true });
  console.log(`generating ${sizeMb} MiB in ${files} files (seed ${seed}) in ${work} …`);
  let t0 = performance.now();
  const tar = writeTar(tarFile, sizeMb * MiB, files, seed);
  console.log(`  tar: ${(tar.tarBytes / MB).toFixed(0)} MB in ${((performance.now() - t0) / 1000).toFixed(0)} s; compressing (gzip -6, zstd -3, in parallel) …`);
  t0 = performance.now();
  const [gzip, zstd] = await Promise.all([compressFile(tarFile, blobFile(work, 'gzip'), 'gzip'), compressFile(tarFile, blobFile(work, 'zstd'), 'zstd')]);
  console.log(`  compressed in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  const meta: DataMeta = { version: 1, sizeMb, files, seed, tar, blobs: { gzip: gzip!, zstd: zstd! } };
  fs.writeFileSync(metaFile, JSON.stringify(meta, null, 2));
  return meta;
}

/** One image per compression, `bench/layer:<comp>`: docker v2 manifest, config with the tar's diff_id. */
async function pushImages(registryHost: string, work: string, meta: DataMeta): Promise<void> {
  const client = new RegistryClient({ timeoutMs: 600_000 });
  const platform = hostPlatform();
  for (const c of COMPS) {
    const ref = parseReference(`${registryHost}/${REPOSITORY}:${c}`);
    const config = {
      architecture: platform.architecture, os: platform.os, created: '2024-01-01T00:00:00Z',
      config: { Env: ['PATH=/usr/bin:/bin'], Cmd: ['/bin/sh'], Labels: { 'bench.compression': c } },
      rootfs: { type: 'layers', diff_ids: [meta.tar.diffId] },
      history: [{ created: '2024-01-01T00:00:00Z', created_by: 'bench/convert generated layer' }],
    };
    const configBytes = Buffer.from(JSON.stringify(config));
    const configDesc: Descriptor = { mediaType: MEDIA.dockerConfig, digest: `sha256:${createHash('sha256').update(configBytes).digest('hex')}`, size: configBytes.length };
    const layerDesc: Descriptor = { mediaType: c === 'gzip' ? MEDIA.dockerLayerGzip : MEDIA.dockerLayerZstd, ...meta.blobs[c] };
    await client.pushBlob(ref, configDesc, () => Readable.from([configBytes]));
    await client.pushBlob(ref, layerDesc, () => fs.createReadStream(blobFile(work, c), { highWaterMark: MiB }));
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.dockerManifest, config: configDesc, layers: [layerDesc] }, null, 3));
    await client.pushManifest(ref, manifest, MEDIA.dockerManifest);
  }
}

// -------------------------------------------------------------------------------------------------
// Children

type ChildSpec =
  | { readonly arm: 'setup'; readonly work: string; readonly sizeMb: number; readonly files: number; readonly seed: number; readonly registryHost: string }
  | { readonly arm: 'ingest'; readonly comp: Comp; readonly file: string; readonly dir: string }
  | { readonly arm: 'convert'; readonly comp: Comp; readonly ref: string; readonly dir: string }
  | { readonly arm: 'limit'; readonly registryUrl: string; readonly tarFile: string; readonly tarBytes: number; readonly comps: readonly Comp[];
      readonly blobs: Readonly<Record<Comp, { readonly digest: string; readonly file: string; readonly size: number }>> };

interface LimitSeconds {
  readonly download: Partial<Record<Comp, number>>;
  readonly inflate: Partial<Record<Comp, number>>;
  readonly sha256Blob: Partial<Record<Comp, number>>;
  readonly sha256Tar: number;
  readonly deflate: number;
  readonly sha1: number;
  readonly objects: number;
  readonly deflatedBytes: number;
}

interface ChildResult {
  readonly wallSeconds: number;
  /**
   * Peak resident set of the child's own address space: VmHWM of /proc/self/status (the whole
   * process, worker threads included). This is what the RSS figures and the target use.
   */
  readonly hwmBytes: number;
  /**
   * process.resourceUsage().maxRSS in bytes. On Linux it is not the child's own peak alone: exec
   * keeps the high-water mark of the forked copy of the parent, so it is at least the parent's
   * RSS at spawn time (here the parent has generated and pushed the data). Printed for reference.
   */
  readonly maxRssBytes: number;
  /** RSS when the timed work began (after start-up and repository init). */
  readonly startRssBytes: number;
  readonly note: string;
  /** process.memoryUsage() of the main thread at the sample (every 100 ms) with the highest RSS. */
  readonly atPeak?: NodeJS.MemoryUsage;
  readonly limit?: LimitSeconds;
  readonly setup?: DataMeta;
}

/** Samples process.memoryUsage() every 100 ms; keeps the sample of highest RSS (worker heaps show only in rss). */
function peakSampler(): () => NodeJS.MemoryUsage {
  let peak = process.memoryUsage();
  const timer = setInterval(() => { const m = process.memoryUsage(); if (m.rss > peak.rss) peak = m; }, 100);
  return () => { clearInterval(timer); return peak; };
}

function vmHwmBytes(): number {
  const m = /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.resourceUsage().maxRSS * 1024;
}

async function freshRepo(dir: string): Promise<{ storage: DirStorage; keys: string; repo: string }> {
  const repo = path.join(dir, 'repo');
  const keys = path.join(dir, 'keys');
  const storage = new DirStorage(repo);
  await initRepository({ storage, keysDir: keys, fqrn: FQRN });
  return { storage, keys, repo };
}

async function httpDiscard(url: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    http.get(url, { headers: { 'Accept-Encoding': 'identity' } }, (res) => {
      if (res.statusCode !== 200) { res.resume(); reject(new Error(`GET ${url}: HTTP ${res.statusCode}`)); return; }
      let n = 0;
      res.on('data', (c: Buffer) => { n += c.length; });
      res.on('end', () => resolve(n));
      res.on('error', reject);
    }).on('error', reject);
  });
}

/** Seconds of hash.update over the file's bytes (reads from the page cache not counted). */
function hashSeconds(file: string, algo: 'sha256'): number {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(4 * MiB);
  const h = createHash(algo);
  let t = 0;
  for (;;) {
    const n = fs.readSync(fd, buf, 0, buf.length, null);
    if (n === 0) break;
    const t0 = performance.now();
    h.update(buf.subarray(0, n));
    t += performance.now() - t0;
  }
  h.digest();
  fs.closeSync(fd);
  return t / 1000;
}

/** The objects the writer makes of the tar's regular files: whole files up to the threshold, content-defined chunks above. */
function objectSlices(file: string): [number, number][] {
  const fd = fs.openSync(file, 'r');
  const h = Buffer.alloc(BLOCK);
  const slices: [number, number][] = [];
  const big = Buffer.allocUnsafe(4 * MiB);
  for (let off = 0; ;) {
    if (fs.readSync(fd, h, 0, BLOCK, off) < BLOCK || h.every((b) => b === 0)) break;
    const size = parseInt(h.toString('ascii', 124, 136).replace(/\0.*$/, '').trim() || '0', 8);
    const type = String.fromCharCode(h[156]!);
    const start = off + BLOCK;
    if ((type === '0' || type === '\0') && size > 0) {
      if (size <= CHUNKING_THRESHOLD_BYTES) slices.push([start, size]);
      else {
        const chunker = new Chunker();
        let last = 0;
        for (let p = 0; p < size;) {
          const n = fs.readSync(fd, big, 0, Math.min(big.length, size - p), start + p);
          for (const cut of chunker.cuts(big.subarray(0, n))) { slices.push([start + last, p + cut - last]); last = p + cut; }
          p += n;
        }
        if (last < size) slices.push([start + last, size - last]);
      }
    }
    off = start + Math.ceil(size / BLOCK) * BLOCK;
  }
  fs.closeSync(fd);
  return slices;
}

async function runLimit(spec: Extract<ChildSpec, { arm: 'limit' }>): Promise<LimitSeconds> {
  const download: Partial<Record<Comp, number>> = {}, inflate: Partial<Record<Comp, number>> = {}, sha256Blob: Partial<Record<Comp, number>> = {};
  for (const c of spec.comps) {
    const b = spec.blobs[c];
    let t0 = performance.now();
    const got = await httpDiscard(`${spec.registryUrl}/v2/${REPOSITORY}/blobs/${b.digest}`);
    download[c] = (performance.now() - t0) / 1000;
    if (got !== b.size) throw new Error(`download of the ${c} blob: ${got} of ${b.size} bytes`);
    let out = 0;
    t0 = performance.now();
    await pipeline(fs.createReadStream(b.file, { highWaterMark: MiB }),
      c === 'gzip' ? createGunzip({ chunkSize: LIMIT_INFLATE_CHUNK }) : new DecompressStream(),
      new Writable({ write(chunk: Buffer, _e, cb) { out += chunk.length; cb(); } }));
    inflate[c] = (performance.now() - t0) / 1000;
    if (out !== spec.tarBytes) throw new Error(`inflating the ${c} blob gave ${out} bytes, not ${spec.tarBytes}`);
    sha256Blob[c] = hashSeconds(b.file, 'sha256');
  }
  const sha256Tar = hashSeconds(spec.tarFile, 'sha256');
  const slices = objectSlices(spec.tarFile);
  const fd = fs.openSync(spec.tarFile, 'r');
  let deflate = 0, sha1 = 0, deflatedBytes = 0;
  for (const [off, len] of slices) {
    const buf = Buffer.allocUnsafe(len);
    fs.readSync(fd, buf, 0, len, off);
    const t0 = performance.now();
    const z = deflateSync(buf, { level: ZLIB_LEVEL });
    const t1 = performance.now();
    createHash('sha1').update(z).digest();
    const t2 = performance.now();
    deflate += t1 - t0;
    sha1 += t2 - t1;
    deflatedBytes += z.length;
  }
  fs.closeSync(fd);
  return { download, inflate, sha256Blob, sha256Tar, deflate: deflate / 1000, sha1: sha1 / 1000, objects: slices.length, deflatedBytes };
}

async function child(spec: ChildSpec): Promise<ChildResult> {
  if (spec.arm === 'setup') {
    // In a child, so that the parent stays small: a child's maxRSS starts at the parent's RSS at fork.
    const t0 = performance.now();
    const meta = await prepareData(spec.work, spec.sizeMb, spec.files, spec.seed);
    const t1 = performance.now();
    await pushImages(spec.registryHost, spec.work, meta);
    console.log(`pushed ${REPOSITORY}:gzip and :zstd to docker-registry at ${spec.registryHost} in ${((performance.now() - t1) / 1000).toFixed(0)} s`);
    return { wallSeconds: (performance.now() - t0) / 1000, hwmBytes: vmHwmBytes(), maxRssBytes: process.resourceUsage().maxRSS * 1024, startRssBytes: 0, note: '', setup: meta };
  }
  if (spec.arm === 'limit') {
    const startRssBytes = process.memoryUsage().rss;
    const t0 = performance.now();
    const limit = await runLimit(spec);
    return { wallSeconds: (performance.now() - t0) / 1000, hwmBytes: vmHwmBytes(), maxRssBytes: process.resourceUsage().maxRSS * 1024, startRssBytes, note: '', limit };
  }
  const { storage, keys } = await freshRepo(spec.dir);
  const startRssBytes = process.memoryUsage().rss;
  const stopSampler = peakSampler();
  const t0 = performance.now();
  let note: string;
  if (spec.arm === 'ingest') {
    // As cvmfs-repo ingest: a read stream of the file; the writer sniffs gzip / zstd itself.
    const input = (await fs.promises.open(spec.file, 'r')).createReadStream();
    const r = await ingest({ storage, keysDir: keys, path: '/layers/bench', input });
    note = `${r.layer.entries} entries, ${r.objects.written} objects written (${(r.objects.bytesWritten / MB).toFixed(0)} MB)`;
  } else {
    // As runConvert in docker2cvmfs/cli.ts with --no-thin -q: open the image, convertImages(), no thin image.
    const client = new RegistryClient({});
    const opened = await openImage(parseImageArg(spec.ref), { registry: client, platform: hostPlatform(), allowForeign: false });
    const s = await convertImages([{ image: opened.image, metadataFile: opened.metadataFile }], { storage, keysDir: keys, parallel: 3 });
    note = `revision ${s.revision}, ${s.newLayers} new layer, ${(s.bytesRead / MB).toFixed(0)} MB read, ${(s.bytesIngested / MB).toFixed(0)} MB ingested`;
  }
  const wallSeconds = (performance.now() - t0) / 1000;
  return { wallSeconds, hwmBytes: vmHwmBytes(), maxRssBytes: process.resourceUsage().maxRSS * 1024, startRssBytes, note, atPeak: stopSampler() };
}

let running: ReturnType<typeof spawn> | undefined;

function runChild(spec: ChildSpec, nodeArgs: readonly string[] = []): Promise<ChildResult> {
  return new Promise<ChildResult>((resolve, reject) => {
    const env = spec.arm === 'ingest' || spec.arm === 'convert' ? { ...process.env, ...WRITER_ENV } : process.env;
    const c = spawn(process.execPath, [...nodeArgs, THIS_FILE, '--child', JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'inherit'], env });
    running = c;
    let partial = '';
    let result: string | undefined;
    // Lines other than the result line are the child's own messages: passed on as they come.
    const onLine = (l: string) => { if (l.startsWith(MARK)) result = l.slice(MARK.length); else console.log(l); };
    c.stdout.on('data', (d: Buffer) => {
      const lines = (partial + d.toString('utf8')).split('\n');
      partial = lines.pop()!;
      lines.forEach(onLine);
    });
    c.on('error', reject);
    c.on('close', (code, signal) => {
      running = undefined;
      if (partial) onLine(partial);
      if (code !== 0 || result === undefined) { reject(new Error(`${spec.arm} child exited with ${code ?? signal}`)); return; }
      resolve(JSON.parse(result) as ChildResult);
    });
  });
}

// -------------------------------------------------------------------------------------------------
// Statistics and printing

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmtRange = (xs: readonly number[], digits: number, width = 0): string => {
  const s = xs.length > 1 ? `${median(xs).toFixed(digits)} [${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}]` : median(xs).toFixed(digits);
  return s.padStart(width);
};

interface LimitRates {
  readonly stages: readonly { readonly name: string; readonly rate: number }[];
  /** U / Σt: one core doing every stage. */
  readonly oneCore: number;
  readonly twoCore: number;
  /** The stages the writer's ingest of the same blob does (inflate, deflate, sha1), on 2 cores. */
  readonly ingestTwoCore: number;
}

function limitRates(l: LimitSeconds, c: Comp, tarBytes: number): LimitRates {
  const t = {
    download: l.download[c]!, inflate: l.inflate[c]!, sha256: l.sha256Blob[c]! + l.sha256Tar, deflate: l.deflate, sha1: l.sha1,
  };
  const U = tarBytes / MB;
  const stages = [
    { name: 'download: HTTP GET of the blob → nowhere', rate: U / t.download },
    { name: `inflate: ${c === 'gzip' ? 'gunzip' : 'zstd decompress'}`, rate: U / t.inflate },
    { name: 'sha256 of blob + tar', rate: U / t.sha256 },
    { name: `deflate (zlib level ${ZLIB_LEVEL === -1 ? '6, Z_DEFAULT' : ZLIB_LEVEL}) of the objects`, rate: U / t.deflate },
    { name: 'sha1 of the deflated objects', rate: U / t.sha1 },
  ];
  const sum = t.download + t.inflate + t.sha256 + t.deflate + t.sha1;
  return { stages, oneCore: U / sum, twoCore: (2 * U) / sum, ingestTwoCore: (2 * U) / (t.inflate + t.deflate + t.sha1) };
}

// -------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const sizeMb = Number(values['size-mb']);
  const files = Number(values.files);
  const reps = Number(values.reps);
  const seed = Number(values.seed);
  const arms = (values.arms ?? '').split(',').filter((a): a is Arm => a === 'ingest' || a === 'convert' || a === 'limit');
  const comps = (values.comp ?? '').split(',').filter((c): c is Comp => c === 'gzip' || c === 'zstd');
  if (!(sizeMb > 0) || !(files > 0) || !(reps >= 1) || arms.length === 0 || comps.length === 0) throw new Error('bad arguments');
  const ownWork = values.work === undefined;
  const work = ownWork ? fs.mkdtempSync(path.join(os.tmpdir(), 'bench-convert-')) : path.resolve(values.work!);
  fs.mkdirSync(work, { recursive: true });
  const runs = fs.mkdtempSync(path.join(work, 'runs-'));
  const profArgs = values['cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(values['cpu-prof'])] : [];
  let reg: TestRegistry | undefined;
  const cleanup = async () => {
    running?.kill('SIGKILL');
    await reg?.close();
    fs.rmSync(runs, { recursive: true, force: true });
    if (!values['keep-data']) {
      if (ownWork) fs.rmSync(work, { recursive: true, force: true });
      else for (const f of ['layer.tar', 'data.json', ...COMPS.map((c) => path.basename(blobFile(work, c)))]) fs.rmSync(path.join(work, f), { force: true });
    }
  };
  process.once('SIGINT', () => { void cleanup().finally(() => process.exit(130)); });
  try {
    reg = await startRegistry('open');
    const meta = (await runChild({ arm: 'setup', work, sizeMb, files, seed, registryHost: reg.host })).setup!;
    const tarFile = path.join(work, 'layer.tar');
    execFileSync('sh', ['-c', `cat ${tarFile} ${COMPS.map((c) => blobFile(work, c)).join(' ')} > /dev/null`]);

    const U = meta.tar.tarBytes;
    const cores = os.availableParallelism();
    console.log(`\nlayer: ${meta.tar.files} files (${meta.tar.largeFiles} above the ${CHUNKING_THRESHOLD_BYTES / MiB} MiB chunking threshold), ${meta.tar.entries} entries; `
      + `tar ${(U / MB).toFixed(0)} MB (content ${(meta.tar.contentBytes / MB).toFixed(0)} MB)`);
    for (const c of COMPS) console.log(`  ${c === 'gzip' ? 'gzip -6 ' : 'zstd -3 '} blob ${(meta.blobs[c].size / MB).toFixed(0)} MB (${(U / meta.blobs[c].size).toFixed(2)}×)`);
    console.log(`${cores} cores, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}; ${reps} repetition(s), arms interleaved, each in a fresh process`);
    console.log(`peak RSS of a child = VmHWM of /proc/self/status; process.resourceUsage().maxRSS in parentheses (on Linux it is at least `
      + `this parent's RSS at fork, ${(process.memoryUsage().rss / MB).toFixed(0)} MB now: exec keeps the pre-exec high-water mark)`);
    console.log(`children: ingest = cvmfs/writer ingest() of the blob file; convert = openImage() + convertImages() as \`docker2cvmfs convert REF --no-thin -q\`; limit = single-core stage timings; `
      + `ingest and convert run as the CLIs do, with ${Object.entries(WRITER_ENV).map(([k, v]) => `${k}=${v}`).join(' ')} node ${WRITER_NODE_FLAGS.join(' ')}\n`);

    const res = new Map<string, ChildResult[]>();
    const add = (k: string, r: ChildResult) => res.set(k, [...(res.get(k) ?? []), r]);
    const plan: { arm: Arm; comp?: Comp }[] = [];
    for (const c of comps) for (const a of arms) if (a !== 'limit') plan.push({ arm: a, comp: c });
    if (arms.includes('limit')) plan.push({ arm: 'limit' });
    const t0 = performance.now();
    for (let rep = 0; rep < reps; rep++) {
      // Interleaved: forward on even repetitions, backward on odd ones, so no arm always runs first.
      const order = rep % 2 === 0 ? plan : [...plan].reverse();
      for (const p of order) {
        const dir = fs.mkdtempSync(path.join(runs, `${p.arm}-${p.comp ?? 'all'}-`));
        execFileSync('sync');
        let spec: ChildSpec;
        if (p.arm === 'ingest') spec = { arm: 'ingest', comp: p.comp!, file: blobFile(work, p.comp!), dir };
        else if (p.arm === 'convert') spec = { arm: 'convert', comp: p.comp!, ref: reg.name(`${REPOSITORY}:${p.comp!}`), dir };
        else {
          spec = { arm: 'limit', registryUrl: reg.url, tarFile, tarBytes: U, comps,
            blobs: { gzip: { ...meta.blobs.gzip, file: blobFile(work, 'gzip') }, zstd: { ...meta.blobs.zstd, file: blobFile(work, 'zstd') } } };
        }
        const r = await runChild(spec, p.arm === 'limit' ? [] : [...WRITER_NODE_FLAGS, ...profArgs]);
        fs.rmSync(dir, { recursive: true, force: true });
        add(`${p.arm}:${p.comp ?? ''}`, r);
        const rate = p.arm === 'limit' ? '' : ` ${(U / MB / r.wallSeconds).toFixed(1)} MB/s,`;
        console.log(`  rep ${rep + 1} ${p.arm.padEnd(7)} ${(p.comp ?? 'gzip+zstd').padEnd(9)} ${r.wallSeconds.toFixed(1).padStart(6)} s,${rate} peak RSS ${(r.hwmBytes / MB).toFixed(0)} MB (maxRSS ${(r.maxRssBytes / MB).toFixed(0)})${r.note ? `  (${r.note})` : ''}`);
        const a = r.atPeak;
        if (a) {
          console.log(`${''.padStart(29)}sampled peak ${(a.rss / MB).toFixed(0)} MB: V8 heap ${(a.heapUsed / MB).toFixed(0)}/${(a.heapTotal / MB).toFixed(0)} MB, `
            + `ArrayBuffers ${(a.arrayBuffers / MB).toFixed(0)} MB, other (workers, native) ${((a.rss - a.heapTotal - a.external) / MB).toFixed(0)} MB; ${(r.startRssBytes / MB).toFixed(0)} MB at start`);
        }
      }
    }
    console.log(`  (all arms: ${((performance.now() - t0) / 60000).toFixed(1)} min; load average now ${os.loadavg().map((x) => x.toFixed(2)).join(' ')})`);

    // ---- limit
    const limits = res.get('limit:') ?? [];
    const lim = new Map<Comp, LimitRates[]>();
    for (const c of comps) lim.set(c, limits.map((l) => limitRates(l.limit!, c, U)));
    if (limits.length) {
      const l0 = limits[0]!.limit!;
      console.log(`\nphysical limit, single-core stage rates in MB/s of uncompressed tar (r_i = U / t_i, U = ${(U / MB).toFixed(0)} MB), median [min–max]`);
      console.log(`  ${'stage'.padEnd(50)} ${comps.map((c) => c.padStart(22)).join(' ')}`);
      for (let i = 0; i < 5; i++) {
        const name = lim.get(comps[0]!)![0]!.stages[i]!.name.replace(/gunzip|zstd decompress/, 'gunzip / unzstd');
        console.log(`  ${name.padEnd(50)} ${comps.map((c) => fmtRange(lim.get(c)!.map((x) => x.stages[i]!.rate), 1, 22)).join(' ')}`);
      }
      console.log(`  ${'1-core bound = 1 / Σ(1/r_i) = U / Σt_i'.padEnd(50)} ${comps.map((c) => fmtRange(lim.get(c)!.map((x) => x.oneCore), 1, 22)).join(' ')}`);
      console.log(`  ${'2-core bound = 2 / Σ(1/r_i)'.padEnd(50)} ${comps.map((c) => fmtRange(lim.get(c)!.map((x) => x.twoCore), 1, 22)).join(' ')}`);
      console.log(`  ${"  ingest's stages only (inflate+deflate+sha1)".padEnd(50)} ${comps.map((c) => fmtRange(lim.get(c)!.map((x) => x.ingestTwoCore), 1, 22)).join(' ')}`);
      console.log(`  (the n-core bound spreads the CPU time of every stage over n cores with no overhead; the download's rate is wall time of`);
      console.log(`   a node:http GET from the registry process, whose own CPU is not counted; ${l0.objects} objects, deflated to ${(l0.deflatedBytes / MB).toFixed(0)} MB)`);
    }

    // ---- arms
    console.log(`\narms, MB/s = uncompressed tar MB / wall time of the arm's work (MB = 10^6 B), median [min–max]`);
    console.log(`  ${'layer'.padEnd(6)}${'arm'.padEnd(9)}${'MB/s'.padStart(24)}${'peak RSS MB'.padStart(20)}${'× 2-core limit'.padStart(24)}`);
    const verdicts: string[] = [];
    for (const c of comps) {
      const l2 = lim.get(c)?.map((x) => x.twoCore) ?? [];
      const rates: Partial<Record<Arm, number[]>> = {};
      for (const a of arms) {
        if (a === 'limit') continue;
        const rs = res.get(`${a}:${c}`) ?? [];
        const mbs = rs.map((r) => U / MB / r.wallSeconds);
        rates[a] = mbs;
        const vsLimit = l2.length ? fmtRange(mbs.map((x, i) => x / (l2[i] ?? median(l2))), 2, 24) : ''.padStart(24);
        console.log(`  ${c.padEnd(6)}${a.padEnd(9)}${fmtRange(mbs, 1, 24)}${fmtRange(rs.map((r) => r.hwmBytes / MB), 0, 20)}${vsLimit}`);
      }
      if (arms.includes('limit')) console.log(`  ${c.padEnd(6)}${'limit'.padEnd(9)}${fmtRange(l2, 1, 24)}${fmtRange(limits.map((r) => r.hwmBytes / MB), 0, 20)}${'1.00'.padStart(24)}`);
      const ing = rates.ingest, conv = rates.convert;
      if (ing?.length && conv?.length) {
        const perRep = conv.map((x, i) => x / ing[i]!);
        const ratio = median(conv) / median(ing);
        verdicts.push(`${c}: convert / ingest = ${ratio.toFixed(3)} (medians; per repetition ${fmtRange(perRep, 2)}) `
          + `→ ${ratio >= 0.8 ? 'PASS' : 'FAIL'} (target ≥ 0.80)`);
      }
      if (conv?.length) {
        const worst = Math.max(...(res.get(`convert:${c}`) ?? []).map((r) => r.hwmBytes));
        verdicts.push(`${c}: convert peak RSS ${(worst / MB).toFixed(0)} MB (VmHWM, worst repetition) → ${worst < 300 * MB ? 'PASS' : 'FAIL'} (target < 300 MB)`);
      }
      const ingestStages = lim.get(c)?.map((x) => x.ingestTwoCore);
      if (ing?.length && ingestStages?.length) console.log(`  ${''.padEnd(6)}(ingest vs the 2-core bound of its own stages, inflate+deflate+sha1: ${fmtRange(ing.map((x, i) => x / (ingestStages[i] ?? median(ingestStages))), 2)})`);
    }
    if (verdicts.length) console.log(`\ntargets:\n  ${verdicts.join('\n  ')}`);
  } finally {
    await cleanup();
  }
}

if (values.child !== undefined) {
  // As the CLIs (cvmfs-repo, docker2cvmfs) do before they run the writer: both arms alike.
  tuneMallocForWriter();
  const r = await child(JSON.parse(values.child) as ChildSpec);
  process.stdout.write(`${MARK}${JSON.stringify(r)}\n`);
  // The writer's and the converter's handles are closed; exit at once rather than wait for idle sockets.
  process.exit(0);
} else {
  await main();
}
