/**
 * The bench images, generated from seeded files (no internet pulls): gzip layers written to disk,
 * pushed as Docker v2 images to the far registry.
 *   python-1g-5pct    ~1 GiB in ~30,000 files over 5 layers (base, interpreter, numeric, ML, app);
 *                     the entrypoint cats a fixed list of ~5 % of the bytes spread over the layers:
 *                     a startup list ("imports", then `echo ready`), then a work list, then `echo done`;
 *   busybox           one layer, /bin/busybox and its applet links; `echo ready; echo done`;
 *   read-all          busybox plus a data layer, the entrypoint reads every file (the worst case);
 *   python-100m-5pct  the python-like image at ~100 MiB (the 20-workers arm).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { CHUNKING_THRESHOLD_BYTES } from '../../cvmfs/writer/chunker.js';
import { MEDIA, type Descriptor } from '../../docker2cvmfs/image.js';
import { parseReference } from '../../docker2cvmfs/reference.js';
import { RegistryClient } from '../../docker2cvmfs/registry/index.js';
import { ContentGen, HashingFileWriter, MiB, Rng, TAR_END, tarHeader, tarPadding, Vocabulary, type Kind } from '../lib/content.js';

export type ImageName = 'python-1g-5pct' | 'busybox' | 'read-all' | 'python-100m-5pct';
export const MAIN_IMAGES: readonly ImageName[] = ['python-1g-5pct', 'busybox', 'read-all'];

interface PlannedFile { readonly path: string; readonly size: number; readonly kind: Kind; readonly layer: number }

export interface GeneratedImage {
  readonly name: ImageName;
  /** Registry repository (`bench/<name>`), tag `latest`. */
  readonly repository: string;
  readonly files: number;
  readonly contentBytes: number;
  readonly layers: readonly { readonly file: string; readonly descriptor: Descriptor; readonly diffId: string; readonly tarBytes: number; readonly files: number }[];
  readonly compressedBytes: number;
  readonly configBytes: Buffer;
  readonly configDescriptor: Descriptor;
  readonly manifestBytes: Buffer;
  /** Files the entrypoint reads (paths in the image), startup list first; busybox and the script included. */
  readonly readFiles: number;
  readonly readBytes: number;
  readonly startupFiles: number;
  /** Files of the read list above the chunking threshold. */
  readonly readChunked: number;
}

const BUSYBOX = '/bin/busybox';

interface LayerShape { readonly bytesFrac: number; readonly filesFrac: number; readonly tops: readonly string[] }

const PYTHON_LAYERS: readonly LayerShape[] = [
  { bytesFrac: 0.08, filesFrac: 0.06, tops: ['usr/lib/x86_64-linux-gnu', 'etc', 'usr/share/zoneinfo'] },
  { bytesFrac: 0.15, filesFrac: 0.30, tops: ['usr/lib/python3.11', 'usr/lib/python3.11/lib-dynload'] },
  { bytesFrac: 0.35, filesFrac: 0.25, tops: ['usr/local/lib/python3.11/site-packages/numpy', 'usr/local/lib/python3.11/site-packages/scipy'] },
  { bytesFrac: 0.32, filesFrac: 0.30, tops: ['usr/local/lib/python3.11/site-packages/torch', 'usr/local/lib/python3.11/site-packages/pandas'] },
  { bytesFrac: 0.10, filesFrac: 0.09, tops: ['opt/app/lib', 'opt/app/data'] },
];

const EXT: Readonly<Record<Kind, readonly string[]>> = { text: ['py', 'py', 'txt', 'json', 'pyi'], binary: ['so', 'so', 'pyc', 'bin'], random: ['npz', 'gz', 'whl', 'png'] };

/** Sizes as bench/convert plans them: log-normal small files (70 % of bytes), a few large chunked ones (30 %). */
function planSizes(total: number, files: number, rng: Rng): { size: number; kind: Kind }[] {
  const large = Math.max(1, Math.round(files / 1500));
  const smallN = Math.max(0, files - large);
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
  const small = scaleTo(Array.from({ length: smallN }, () => (rng.next() < 0.01 ? 0 : Math.exp(1.5 * rng.normal()))), total * 0.7, 1, CHUNKING_THRESHOLD_BYTES);
  const big = scaleTo(Array.from({ length: large }, () => Math.exp(0.6 * rng.normal())), total * 0.3, CHUNKING_THRESHOLD_BYTES + MiB, 512 * MiB);
  const out: { size: number; kind: Kind }[] = small.map((size) => { const r = rng.next(); return { size, kind: r < 0.5 ? 'text' : r < 0.9 ? 'binary' : 'random' }; });
  for (const size of big) out.splice(rng.u32() % (out.length + 1), 0, { size, kind: rng.next() < 0.75 ? 'binary' : 'random' });
  return out;
}

function planLayers(shapes: readonly LayerShape[], total: number, files: number, rng: Rng): PlannedFile[] {
  const out: PlannedFile[] = [];
  shapes.forEach((s, layer) => {
    const sizes = planSizes(total * s.bytesFrac, Math.max(4, Math.round(files * s.filesFrac)), rng);
    sizes.forEach((f, i) => {
      const pkg = Math.floor(i / 40);
      const top = s.tops[pkg % s.tops.length]!;
      const sub = (pkg * 7 + i * 13) % 3;
      const dir = `${top}/m${layer}_${pkg}${sub ? `/sub${sub}` : ''}`;
      const ext = EXT[f.kind][i % EXT[f.kind].length]!;
      out.push({ path: `${dir}/f${layer}_${i}.${ext}`, size: f.size, kind: f.kind, layer });
    });
  });
  return out;
}

/**
 * The read list: ~`pct` % of the bytes, spread over the layers round-robin: at most 40 % of it in
 * large (chunked) files, 100 small modules, then medium files (16 KiB … 4 MiB, extension modules).
 */
function pickReads(files: readonly PlannedFile[], total: number, pct: number, layers: number, rng: Rng): PlannedFile[] {
  const target = (total * pct) / 100;
  const picked: PlannedFile[] = [];
  const taken = new Set<string>();
  let bytes = 0;
  const take = (f: PlannedFile) => { picked.push(f); taken.add(f.path); bytes += f.size; };
  const byLayer = (pred: (f: PlannedFile) => boolean) => Array.from({ length: layers }, (_, l) => rng.shuffle(files.filter((f) => f.layer === l && pred(f))));
  for (const f of rng.shuffle(files.filter((f) => f.size > CHUNKING_THRESHOLD_BYTES))) if (bytes + f.size <= 0.4 * target) take(f);
  const small = byLayer((f) => f.size > 0 && f.size < 16 * 1024 && f.kind === 'text');
  for (let k = 0; k < 100; k++) { const f = small[k % layers]!.pop(); if (f) take(f); }
  const mid = byLayer((f) => f.size >= 16 * 1024 && f.size <= CHUNKING_THRESHOLD_BYTES && f.kind !== 'random');
  for (let k = 0; bytes < target && mid.some((m) => m.length > 0); k++) {
    const f = mid[k % layers]!.pop();
    if (f && !taken.has(f.path)) take(f);
  }
  // Interleave the layers in the order of reading (imports jump between packages).
  return rng.shuffle(picked);
}

class Hasher extends Transform {
  private readonly h = createHash('sha256');
  bytes = 0;
  override _transform(c: Buffer, _e: BufferEncoding, cb: TransformCallback): void { this.h.update(c); this.bytes += c.length; cb(null, c); }
  digest(): string { return `sha256:${this.h.digest('hex')}`; }
}

interface TarEntry { readonly path: string; readonly type: 'file' | 'dir' | 'symlink'; readonly size?: number; readonly kind?: Kind; readonly body?: Buffer; readonly target?: string; readonly mode?: number }

/** Writes one layer tar (parents before children), gzips it (level 6, as docker push), returns digests. */
async function writeLayer(dir: string, index: number, entries: readonly TarEntry[], vocab: Vocabulary, seed: number):
  Promise<{ file: string; descriptor: Descriptor; diffId: string; tarBytes: number; files: number }> {
  const tarFile = path.join(dir, `layer${index}.tar`);
  const out = new HashingFileWriter(tarFile);
  const dirs = new Set<string>();
  const mkdirs = (p: string) => {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!dirs.has(d)) { dirs.add(d); out.write(tarHeader(`${d}/`, '5', 0, 0o755)); }
    }
  };
  let files = 0;
  for (const e of entries) {
    mkdirs(e.path);
    if (e.type === 'dir') { if (!dirs.has(e.path)) { dirs.add(e.path); out.write(tarHeader(`${e.path}/`, '5', 0, 0o755)); } continue; }
    if (e.type === 'symlink') { out.write(tarHeader(e.path, '2', 0, 0o777, e.target)); continue; }
    files++;
    if (e.body) {
      out.write(tarHeader(e.path, '0', e.body.length, e.mode ?? 0o644));
      out.write(e.body);
      out.write(tarPadding(e.body.length));
      continue;
    }
    const size = e.size ?? 0;
    out.write(tarHeader(e.path, '0', size, e.kind === 'binary' ? 0o755 : 0o644));
    const gen = new ContentGen(e.kind ?? 'text', vocab, seed, e.path);
    for (let left = size; left > 0;) { const n = Math.min(MiB, left); out.write(gen.piece(n)); left -= n; }
    out.write(tarPadding(size));
  }
  out.write(TAR_END);
  const diffId = out.close();
  const tarBytes = out.bytes;
  const gzFile = `${tarFile}.gz`;
  const h = new Hasher();
  await pipeline(fs.createReadStream(tarFile, { highWaterMark: MiB }), createGzip({ level: 6 }), h, fs.createWriteStream(gzFile));
  fs.rmSync(tarFile);
  return { file: gzFile, descriptor: { mediaType: MEDIA.dockerLayerGzip, digest: h.digest(), size: h.bytes }, diffId, tarBytes, files };
}

function busyboxEntries(): TarEntry[] {
  const applets = execFileSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => a && a !== 'busybox');
  return [
    { path: 'bin/busybox', type: 'file', body: fs.readFileSync(BUSYBOX), mode: 0o755 },
    ...applets.map((a): TarEntry => ({ path: `bin/${a}`, type: 'symlink', target: 'busybox' })),
    { path: 'tmp', type: 'dir' }, { path: 'etc', type: 'dir' },
  ];
}

function script(startup: readonly string[], work: readonly string[]): TarEntry[] {
  const run = ['#!/bin/sh', 'cat $(cat /app/startup.list) > /dev/null', 'echo ready',
    ...(work.length ? ['cat $(cat /app/work.list) > /dev/null'] : []), 'echo done', ''].join('\n');
  return [
    { path: 'app/run.sh', type: 'file', body: Buffer.from(run), mode: 0o755 },
    { path: 'app/startup.list', type: 'file', body: Buffer.from(startup.map((p) => `/${p}`).join('\n') + '\n') },
    { path: 'app/work.list', type: 'file', body: Buffer.from(work.map((p) => `/${p}`).join('\n') + '\n') },
  ];
}

export interface ImageParams { readonly sizeMb: number; readonly readAllMb: number; readonly workersMb: number; readonly readPct: number; readonly seed: number }

/** Generates `name` under `dir` (gzip layer files); deterministic for the same parameters. */
export async function generateImage(name: ImageName, dir: string, p: ImageParams): Promise<GeneratedImage> {
  fs.mkdirSync(dir, { recursive: true });
  const seed = p.seed * 1000 + MAIN_IMAGES.indexOf(name) + 7;
  const rng = new Rng(seed);
  const vocab = new Vocabulary(rng);
  const bb = busyboxEntries();
  const bbSize = fs.statSync(BUSYBOX).size;
  let layerEntries: TarEntry[][];
  let reads: PlannedFile[] = [];
  let cmd: string[];
  let planned: PlannedFile[] = [];
  if (name === 'busybox') {
    layerEntries = [bb];
    cmd = ['/bin/sh', '-c', 'echo ready; echo done'];
  } else {
    const total = (name === 'python-1g-5pct' ? p.sizeMb : name === 'read-all' ? p.readAllMb : p.workersMb) * MiB;
    const shapes: readonly LayerShape[] = name === 'read-all'
      ? [{ bytesFrac: 1, filesFrac: 1, tops: ['data/set'] }]
      : PYTHON_LAYERS;
    const fileCount = name === 'read-all' ? Math.max(20, Math.round((500 * total) / (128 * MiB))) : Math.max(100, Math.round((30_000 * total) / (1024 * MiB)));
    planned = planLayers(shapes, total, fileCount, rng);
    reads = name === 'read-all' ? rng.shuffle(planned.filter((f) => f.size > 0)) : pickReads(planned, total, p.readPct, shapes.length, rng);
    const cut = Math.round(reads.length * 0.8);
    const startup = reads.slice(0, cut).map((f) => f.path), work = reads.slice(cut).map((f) => f.path);
    const top = shapes.length - 1;
    layerEntries = shapes.map((_, l) => [
      ...(l === 0 ? bb : []),
      ...planned.filter((f) => f.layer === l).map((f): TarEntry => ({ path: f.path, type: 'file', size: f.size, kind: f.kind })),
      ...(l === top ? script(startup, work) : []),
    ]);
    if (name === 'read-all') layerEntries = [bb, ...layerEntries];
    cmd = ['/bin/sh', '/app/run.sh'];
  }
  const layers = await Promise.all(layerEntries.map((e, i) => writeLayer(dir, i, e, vocab, seed)));
  const scriptBytes = reads.length ? layerEntries.flat().filter((e) => e.path.startsWith('app/')).reduce((a, e) => a + (e.body?.length ?? 0), 0) : 0;
  const readBytes = reads.reduce((a, f) => a + f.size, 0) + bbSize + scriptBytes;
  const config = {
    architecture: 'amd64', os: 'linux', created: '2024-01-01T00:00:00Z',
    config: { Env: ['PATH=/bin'], Cmd: cmd, WorkingDir: '/', Labels: { 'bench.image': name } },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({ created: '2024-01-01T00:00:00Z', created_by: `bench/startup ${name} layer ${i}` })),
  };
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDescriptor: Descriptor = { mediaType: MEDIA.dockerConfig, digest: `sha256:${createHash('sha256').update(configBytes).digest('hex')}`, size: configBytes.length };
  const manifestBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.dockerManifest, config: configDescriptor, layers: layers.map((l) => l.descriptor) }, null, 3));
  return {
    name, repository: `bench/${name}`, files: layers.reduce((a, l) => a + l.files, 0),
    contentBytes: planned.reduce((a, f) => a + f.size, 0) + bbSize,
    layers, compressedBytes: layers.reduce((a, l) => a + l.descriptor.size, 0), configBytes, configDescriptor, manifestBytes,
    readFiles: reads.length + (reads.length ? 4 : 1), readBytes, startupFiles: Math.round(reads.length * 0.8),
    readChunked: reads.filter((f) => f.size > CHUNKING_THRESHOLD_BYTES).length,
  };
}

/** Pushes the image to `<host>/<repository>:latest` (plain HTTP). */
export async function pushImage(host: string, img: GeneratedImage): Promise<string> {
  const client = new RegistryClient({ insecure: [host], timeoutMs: 600_000 });
  const ref = parseReference(`${host}/${img.repository}:latest`);
  await client.pushBlob(ref, img.configDescriptor, () => Readable.from([img.configBytes]));
  for (const l of img.layers) await client.pushBlob(ref, l.descriptor, () => fs.createReadStream(l.file, { highWaterMark: MiB }));
  await client.pushManifest(ref, img.manifestBytes, MEDIA.dockerManifest);
  return `${host}/${img.repository}:latest`;
}
