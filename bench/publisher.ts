/**
 * bench/publisher: the S3-webhook publisher under a CI pipeline's load, side by side in one run
 * with the writer's raw ingest of the same layers and with this machine's physical limit.
 *   node dist/bench/publisher.js [--layers 50] [--mb 20] [--reps 2] [--seed 1] [--parallel 4]
 *     [--limit-layers 10] [--work DIR] [--keep-data] [--cpu-prof DIR]
 * Data: `--layers` distinct, deterministic (seeded) gzip layers of about `--mb` MiB each (the size
 * of the upload): tars of mixed files (text, machine-code-like, incompressible; many small files,
 * one large chunked one), gzip -6. Arms, interleaved per repetition (forward, then backward):
 *   publisher  a child process running the CLI, `node dist/publisher/cli.js --repo R --keys K
 *              --name FQRN --s3-endpoint E --bucket B --token-file T --port 0 --state S`, on a fresh
 *              repository, against s3rver (in this process, as the bucket's MinIO). All layers are
 *              uploaded with the SDK, `--parallel` at a time (PutObject, as a CI pipeline would);
 *              one MinIO event is POSTed per upload as soon as its upload is answered (as MinIO
 *              does); the status API is polled until all are done. Rate = layers / (last job's
 *              finishedAt − first event); latency = finishedAt − that layer's event.
 *   ingest     a child: cvmfs/writer ingest() of each .tar.gz file from disk (a read stream, as
 *              `cvmfs-repo ingest` does), one revision per layer, at the path the publisher uses.
 *   ingest-one-transaction  a child: all layers in one writer transaction(), one revision (the fair
 *              comparison for the publisher's batching).
 *   limit      a child: single-core seconds per layer of each stage of the publisher's pipeline.
 * `--keep-data` keeps (and reuses, when the parameters match) the generated layers in `--work`;
 * `--cpu-prof DIR` runs the publisher child under `node --cpu-prof`.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash, type Cipher } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { deflateSync, gunzipSync, gzip as gzipCb } from 'node:zlib';
import { DeleteBucketCommand, DeleteObjectsCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { DirStorage, ingest, initRepository, loadState, transaction } from '../cvmfs/index.js';
import { ZLIB_LEVEL } from '../cvmfs/format/object.js';
import { Chunker, CHUNKING_THRESHOLD_BYTES } from '../cvmfs/writer/chunker.js';
import { layerFs } from '../docker2cvmfs/layout.js';
import type { JobStatus } from '../publisher/index.js';
import { s3ClientFor, startS3, type S3Server } from '../test/lib/s3.js';
import { minioEvent, postEvent, statusJson, upload } from '../test/lib/publisher.js';

const { values } = parseArgs({
  options: {
    layers: { type: 'string', default: '50' }, mb: { type: 'string', default: '20' }, reps: { type: 'string', default: '2' },
    seed: { type: 'string', default: '1' }, parallel: { type: 'string', default: '4' }, 'limit-layers': { type: 'string', default: '10' },
    work: { type: 'string' }, 'keep-data': { type: 'boolean' }, 'cpu-prof': { type: 'string' }, child: { type: 'string' },
  },
});

const MB = 1e6;
const MiB = 1024 * 1024;
const FQRN = 'bench.example.org';
const MARK = '@@bench-publisher ';
const THIS_FILE = fileURLToPath(import.meta.url);
const PUBLISHER_CLI = path.resolve(path.dirname(THIS_FILE), '../publisher/cli.js');
const KEY_PREFIX = 'ci/layers';
const gzip = promisify(gzipCb);

// -------------------------------------------------------------------------------------------------
// Deterministic content

/** mulberry32: a small seeded PRNG. */
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

const ZEROS = Buffer.alloc(MiB);

/** Incompressible bytes: AES-128-CTR keyed by (seed, layer, file). */
function keyStream(seed: number, what: string): Cipher {
  const key = createHash('sha256').update(`bench-publisher:${seed}:${what}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
}

/** Identifier-like words drawn with a skew, separators, and repeats from the last 4 KiB: text compresses ~3×. */
class Vocabulary {
  private readonly words: Buffer[];
  private readonly seps = [' ', ' ', ' ', '\n', '\n    ', '(', ')', ', ', '.', ' = ', ': ', '"'].map((s) => Buffer.from(s, 'latin1'));
  constructor(rng: Rng, count = 4096) {
    const alphabet = 'abcdefghijklmnopqrstuvwxyz_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ';
    this.words = Array.from({ length: count }, () => {
      let w = '';
      for (let k = 0, len = 2 + (rng.u32() % 11); k < len; k++) w += alphabet[rng.u32() % (k === 0 ? 26 : alphabet.length)]!;
      return Buffer.from(w, 'latin1');
    });
  }
  fill(out: Buffer, from: number, to: number, rng: Rng): void {
    let p = from;
    while (p < to) {
      const r = rng.u32();
      if ((r & 3) === 0 && p - from > 256) {
        const len = 16 + ((r >>> 2) & 63);
        const dist = len + ((r >>> 8) % Math.min(p - from - len, 4096));
        for (const e = Math.min(to, p + len); p < e; p++) out[p] = out[p - dist]!;
        continue;
      }
      const u = ((r >>> 2) & 0xffff) / 65536;
      const w = this.words[Math.floor(this.words.length * u * u * u)]!;
      p += w.copy(out, p, 0, Math.min(w.length, to - p));
      const s = this.seps[(r >>> 18) % this.seps.length]!;
      if (p < to) p += s.copy(out, p, 0, Math.min(s.length, to - p));
    }
  }
}

type Kind = 'text' | 'binary' | 'random';

/** One file's bytes: text, random, or binary (runs of zeros, random, skewed "opcode" bytes and text). */
function fileContent(kind: Kind, size: number, vocab: Vocabulary, rng: Rng, cipher: Cipher): Buffer {
  const out = Buffer.allocUnsafe(size);
  const random = (from: number, n: number) => {
    for (let k = 0; k < n; k += MiB) cipher.update(ZEROS.subarray(0, Math.min(MiB, n - k))).copy(out, from + k);
  };
  if (kind === 'random') random(0, size);
  else if (kind === 'text') vocab.fill(out, 0, size, rng);
  else {
    for (let p = 0; p < size;) {
      const r = rng.u32();
      const n = Math.min(size - p, 64 + (r & 4095));
      const k = (r >>> 12) % 10;
      if (k < 3) random(p, n);
      else if (k < 5) out.fill(0, p, p + n);
      else if (k < 8) for (let i = 0; i < n; i++) { const b = rng.u32() & 255; out[p + i] = (b * b) >>> 11; }
      else vocab.fill(out, p, p + n, rng);
      p += n;
    }
  }
  return out;
}

const BLOCK = 512;
function header(name: string, type: '0' | '2' | '5', size: number, mode: number, linkname = ''): Buffer {
  const h = Buffer.alloc(BLOCK);
  const octal = (off: number, len: number, v: number) => h.write(v.toString(8).padStart(len - 1, '0'), off, len - 1, 'ascii');
  h.write(name, 0, 100, 'utf8');
  octal(100, 8, mode); octal(108, 8, 0); octal(116, 8, 0); octal(124, 12, size); octal(136, 12, 1_700_000_000);
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

interface TarBuilt { readonly tar: Buffer; readonly files: number; readonly chunked: number }

/**
 * Layer `index`: 30 % of `tarBytes` in one large file (chunked when above the threshold), the rest
 * in small files (log-normal, median ≈ 8 KiB, at most 1 MiB, 1 % empty), 40 per directory, a
 * symlink per directory. Kinds by count: text 50 %, binary 30 %, random 20 %; the large one binary.
 */
function buildTar(seed: number, index: number, tarBytes: number): TarBuilt {
  const rng = new Rng((seed * 0x9e3779b1) ^ (index * 0x85ebca6b) ^ 0x5bd1e995);
  const vocab = new Vocabulary(rng);
  const parts: Buffer[] = [];
  const tops = ['usr/lib/x86_64-linux-gnu', 'usr/share/doc', 'usr/lib/python3/dist-packages', 'opt/app/node_modules', 'usr/include'];
  const dirs = new Set<string>();
  const dir = (d: string) => {
    const segs = d.split('/');
    for (let i = 1; i <= segs.length; i++) {
      const p = segs.slice(0, i).join('/');
      if (!dirs.has(p)) { dirs.add(p); parts.push(header(`${p}/`, '5', 0, 0o755)); }
    }
  };
  const addFile = (name: string, kind: Kind, size: number, n: number) => {
    parts.push(header(name, '0', size, kind === 'binary' ? 0o755 : 0o644));
    if (size > 0) parts.push(fileContent(kind, size, vocab, rng, keyStream(seed, `${index}/${n}`)));
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad) parts.push(ZEROS.subarray(0, pad));
  };
  const large = Math.round(tarBytes * 0.3);
  let left = tarBytes - large, n = 0, chunked = 0;
  dir(`opt/layer${index}`);
  addFile(`opt/layer${index}/bundle.bin`, 'binary', large, n++);
  if (large > CHUNKING_THRESHOLD_BYTES) chunked++;
  while (left > 0) {
    const pkg = Math.floor(n / 40);
    const d = `${tops[pkg % tops.length]!}/pkg${index}-${pkg}`;
    if (!dirs.has(d)) { dir(d); parts.push(header(`${d}/current`, '2', 0, 0o777, `f${n}`)); }
    const r = rng.next();
    const kind: Kind = r < 0.5 ? 'text' : r < 0.8 ? 'binary' : 'random';
    const size = Math.min(left, rng.next() < 0.01 ? 0 : Math.min(MiB, Math.max(1, Math.round(8192 * Math.exp(1.5 * rng.normal())))));
    addFile(`${d}/f${n}.${kind === 'text' ? 'py' : kind === 'binary' ? 'so' : 'gz'}`, kind, size, n++);
    left -= Math.max(size, 1);
  }
  parts.push(ZEROS.subarray(0, 2 * BLOCK));
  return { tar: Buffer.concat(parts), files: n, chunked };
}

interface LayerMeta {
  readonly index: number;
  readonly file: string;
  /** sha256 of the gzip blob, hex: the object key names it. */
  readonly hex: string;
  readonly size: number;
  readonly tarBytes: number;
  readonly files: number;
  readonly chunked: number;
}
interface DataMeta { readonly version: 1; readonly layers: number; readonly mb: number; readonly seed: number; readonly items: readonly LayerMeta[] }

async function prepareData(work: string, layers: number, mb: number, seed: number): Promise<DataMeta> {
  const metaFile = path.join(work, 'data.json');
  try {
    const m = JSON.parse(fs.readFileSync(metaFile, 'utf8')) as DataMeta;
    if (m.version === 1 && m.layers === layers && m.mb === mb && m.seed === seed && m.items.every((l) => fs.statSync(l.file).size === l.size)) {
      console.log(`reusing the generated layers in ${work} (--keep-data)`);
      return m;
    }
  } catch { /* none yet */ }
  fs.rmSync(metaFile, { force: true });
  const t0 = performance.now();
  // Calibration: the tar size that gzips to about `mb` MiB, from layer 0 at a first guess.
  const guess = Math.round(mb * MiB * 1.6);
  const probe = buildTar(seed, 0, guess);
  const ratio = probe.tar.length / (await gzip(probe.tar, { level: 6 })).length;
  const tarBytes = Math.round(mb * MiB * ratio);
  console.log(`generating ${layers} layers of ~${mb} MiB gzip (tar ~${(tarBytes / MiB).toFixed(1)} MiB, gzip ratio ${ratio.toFixed(2)}), seed ${seed}, in ${work} …`);
  const items: LayerMeta[] = [];
  const inFlight = new Set<Promise<void>>();
  for (let i = 0; i < layers; i++) {
    const built = buildTar(seed, i, tarBytes);
    const file = path.join(work, `layer-${String(i).padStart(3, '0')}.tar.gz`);
    // gzip in the libuv pool while the next tar is generated here; at most 2 in flight.
    const p: Promise<void> = gzip(built.tar, { level: 6 }).then((gz) => {
      fs.writeFileSync(file, gz);
      items[i] = { index: i, file, hex: createHash('sha256').update(gz).digest('hex'), size: gz.length, tarBytes: built.tar.length, files: built.files, chunked: built.chunked };
    }).finally(() => { inFlight.delete(p); });
    inFlight.add(p);
    if (inFlight.size >= 2) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  const meta: DataMeta = { version: 1, layers, mb, seed, items };
  fs.writeFileSync(metaFile, JSON.stringify(meta, null, 2));
  console.log(`  generated in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return meta;
}

const keyOf = (l: LayerMeta): string => `${KEY_PREFIX}/${l.hex}.tar.gz`;

// -------------------------------------------------------------------------------------------------
// Children: ingest, ingest-one-transaction, limit

type ChildSpec =
  | { readonly arm: 'ingest' | 'ingest-one-transaction'; readonly dir: string; readonly layers: readonly LayerMeta[] }
  | { readonly arm: 'limit'; readonly endpoint: string; readonly bucket: string; readonly layers: readonly LayerMeta[] };

/** Seconds per layer (mean over the layers measured) of each stage, on one core. */
interface LimitSeconds {
  readonly get: number; readonly inflate: number; readonly sha256: number; readonly deflate: number; readonly sha1: number;
  readonly layers: number; readonly objects: number; readonly deflatedBytes: number;
}

interface ChildResult {
  readonly wallSeconds: number;
  readonly perLayerSeconds: readonly number[];
  /** Revisions the arm published. */
  readonly revisions: number;
  readonly hwmBytes: number;
  readonly cpuSeconds: number;
  readonly limit?: LimitSeconds;
}

function vmHwmBytes(pid: number | 'self' = 'self'): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch { return 0; }
}

/** utime + stime of a process (all its threads), from /proc/<pid>/stat. */
function cpuSecondsOf(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // clock ticks; USER_HZ is 100 on Linux
  } catch { return 0; }
}

/** The objects the writer makes of the tar's regular files: whole files up to the threshold, content-defined chunks above. */
function objectSlices(tar: Buffer): Buffer[] {
  const slices: Buffer[] = [];
  for (let off = 0; off + BLOCK <= tar.length;) {
    const h = tar.subarray(off, off + BLOCK);
    if (h.every((b) => b === 0)) break;
    const size = parseInt(h.toString('ascii', 124, 136).replace(/\0.*$/, '').trim() || '0', 8);
    const type = String.fromCharCode(h[156]!);
    const start = off + BLOCK;
    if ((type === '0' || type === '\0') && size > 0) {
      const body = tar.subarray(start, start + size);
      if (size <= CHUNKING_THRESHOLD_BYTES) slices.push(body);
      else {
        let last = 0;
        for (const cut of new Chunker().cuts(body)) { slices.push(body.subarray(last, cut)); last = cut; }
        if (last < size) slices.push(body.subarray(last));
      }
    }
    off = start + Math.ceil(size / BLOCK) * BLOCK;
  }
  return slices;
}

async function runLimit(spec: Extract<ChildSpec, { arm: 'limit' }>): Promise<LimitSeconds> {
  const s3 = s3ClientFor(spec.endpoint);
  let get = 0, inflate = 0, sha256 = 0, deflate = 0, sha1 = 0, objects = 0, deflatedBytes = 0;
  for (const l of spec.layers) {
    // S3 GetObject streamed to nowhere, as the worker fetches (s3rver's own CPU is in the parent).
    let t0 = performance.now();
    const r = await s3.send(new GetObjectCommand({ Bucket: spec.bucket, Key: keyOf(l) }));
    if (!(r.Body instanceof Readable)) throw new Error('GetObject: no stream');
    let got = 0;
    await pipeline(r.Body, new Writable({ write(c: Buffer, _e, cb) { got += c.length; cb(); } }));
    get += performance.now() - t0;
    if (got !== l.size) throw new Error(`GET ${keyOf(l)}: ${got} of ${l.size} bytes`);
    const blob = fs.readFileSync(l.file);
    t0 = performance.now();
    const tar = gunzipSync(blob, { chunkSize: 256 * 1024 });
    inflate += performance.now() - t0;
    if (tar.length !== l.tarBytes) throw new Error(`gunzip of ${l.file}: ${tar.length} bytes, not ${l.tarBytes}`);
    t0 = performance.now();
    createHash('sha256').update(blob).digest();
    createHash('sha256').update(tar).digest();
    sha256 += performance.now() - t0;
    for (const s of objectSlices(tar)) {
      const a = performance.now();
      const z = deflateSync(s, { level: ZLIB_LEVEL });
      const b = performance.now();
      createHash('sha1').update(z).digest();
      sha1 += performance.now() - b;
      deflate += b - a;
      objects++;
      deflatedBytes += z.length;
    }
  }
  s3.destroy();
  const n = spec.layers.length;
  return { get: get / 1000 / n, inflate: inflate / 1000 / n, sha256: sha256 / 1000 / n, deflate: deflate / 1000 / n, sha1: sha1 / 1000 / n, layers: n, objects, deflatedBytes };
}

async function child(spec: ChildSpec): Promise<ChildResult> {
  const cpu0 = process.cpuUsage();
  const cpu = () => { const c = process.cpuUsage(cpu0); return (c.user + c.system) / 1e6; };
  if (spec.arm === 'limit') {
    const t0 = performance.now();
    const limit = await runLimit(spec);
    return { wallSeconds: (performance.now() - t0) / 1000, perLayerSeconds: [], revisions: 0, hwmBytes: vmHwmBytes(), cpuSeconds: cpu(), limit };
  }
  const storage = new DirStorage(path.join(spec.dir, 'repo'));
  const keysDir = path.join(spec.dir, 'keys');
  await initRepository({ storage, keysDir, fqrn: FQRN });
  const base = (await loadState(storage)).manifest.revision;
  const per: number[] = [];
  let revision = base;
  const t0 = performance.now();
  if (spec.arm === 'ingest') {
    // As `cvmfs-repo ingest --path P FILE`: a read stream of the .tar.gz; the writer sniffs and inflates.
    for (const l of spec.layers) {
      const a = performance.now();
      const r = await ingest({ storage, keysDir, path: layerFs(`sha256:${l.hex}`), input: fs.createReadStream(l.file) });
      per.push((performance.now() - a) / 1000);
      revision = r.revision;
    }
  } else {
    const r = await transaction({ storage, keysDir, what: 'bench ingest-one-transaction' }, async (tx) => {
      for (const l of spec.layers) {
        const a = performance.now();
        await tx.ingest(layerFs(`sha256:${l.hex}`), fs.createReadStream(l.file), { catalogMarker: true });
        per.push((performance.now() - a) / 1000);
      }
    });
    revision = r.revision;
  }
  return { wallSeconds: (performance.now() - t0) / 1000, perLayerSeconds: per, revisions: revision - base, hwmBytes: vmHwmBytes(), cpuSeconds: cpu() };
}

const running = new Set<ChildProcess>();

function runChild(spec: ChildSpec, env: Readonly<Record<string, string>> = {}): Promise<ChildResult> {
  return new Promise<ChildResult>((resolve, reject) => {
    const c = spawn(process.execPath, [THIS_FILE, '--child', JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
    running.add(c);
    let out = '';
    c.stdout.on('data', (d: Buffer) => { out += d.toString('utf8'); });
    c.on('error', reject);
    c.on('close', (code, signal) => {
      running.delete(c);
      const line = out.split('\n').find((l) => l.startsWith(MARK));
      for (const l of out.split('\n')) if (l && !l.startsWith(MARK)) console.log(`  [${spec.arm}] ${l}`);
      if (code !== 0 || line === undefined) { reject(new Error(`${spec.arm} child exited with ${code ?? signal}`)); return; }
      resolve(JSON.parse(line.slice(MARK.length)) as ChildResult);
    });
  });
}

// -------------------------------------------------------------------------------------------------
// The publisher arm (driven from here)

interface PublisherResult {
  readonly wallSeconds: number;
  readonly latencies: readonly number[];
  readonly revisions: number;
  readonly batches: readonly number[];
  readonly uploadSeconds: number;
  /** From the last event to the last done. */
  readonly tailSeconds: number;
  readonly hwmBytes: number;
  readonly cpuSeconds: number;
  /** CPU of this process (s3rver, the SDK uploads, the polling) during the arm. */
  readonly parentCpuSeconds: number;
}

async function runPublisher(s3: S3Server, layers: readonly LayerMeta[], dir: string, bucket: string, parallel: number, cpuProf?: string): Promise<PublisherResult> {
  const keys = path.join(dir, 'keys');
  await initRepository({ storage: new DirStorage(path.join(dir, 'repo')), keysDir: keys, fqrn: FQRN });
  await s3.createBucket(bucket);
  const token = createHash('sha256').update(dir).digest('hex');
  const tokenFile = path.join(dir, 'token');
  fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  const args = [...(cpuProf ? ['--cpu-prof', '--cpu-prof-dir', cpuProf] : []), PUBLISHER_CLI, '--repo', path.join(dir, 'repo'), '--keys', keys, '--name', FQRN,
    '--s3-endpoint', s3.endpoint, '--bucket', bucket, '--token-file', tokenFile, '--port', '0', '--state', path.join(dir, 'state')];
  const c = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...s3.env } });
  running.add(c);
  const exited = new Promise<void>((resolve) => c.once('exit', () => { running.delete(c); resolve(); }));
  const batches: number[] = [];
  const log = fs.createWriteStream(path.join(dir, 'publisher.log'));
  let errPartial = '';
  c.stderr!.on('data', (d: Buffer) => {
    log.write(d);
    const lines = (errPartial + d.toString('utf8')).split('\n');
    errPartial = lines.pop()!;
    for (const l of lines) {
      const b = /publishing a batch of (\d+)/.exec(l);
      if (b) batches.push(Number(b[1]));
      else if (/: (warn|error): /.test(l)) console.log(`  [publisher] ${l}`);
    }
  });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      const onData = (d: Buffer) => {
        out += d.toString('utf8');
        const m = /listening on (http:\/\/\S+) for/.exec(out);
        if (m) { c.stdout!.off('data', onData); resolve(m[1]!); }
      };
      c.stdout!.on('data', onData);
      c.once('exit', (code) => reject(new Error(`the publisher exited with ${code} before listening; see ${dir}/publisher.log`)));
    });
    const cpu0 = process.cpuUsage();
    const eventAt = new Map<string, number>();
    const finished = new Map<string, JobStatus>();
    let uploadsDone = false, firstUpload = 0, lastUpload = 0, lastEvent = 0;
    // Uploads, `parallel` at a time; each one's event POSTed as soon as it is answered, as MinIO does.
    const queue = [...layers];
    const uploader = async () => {
      for (let l = queue.shift(); l !== undefined; l = queue.shift()) {
        const body = fs.readFileSync(l.file);
        firstUpload ||= Date.now();
        const u = await upload(s3.client, bucket, keyOf(l), body);
        lastUpload = Date.now();
        const at = Date.now();
        const r = await postEvent(url, minioEvent(bucket, [u]), token);
        if (r.status !== 200) throw new Error(`POST /events for ${u.key}: HTTP ${r.status} ${JSON.stringify(r.json)}`);
        eventAt.set(u.key, at);
        lastEvent = Math.max(lastEvent, at);
      }
    };
    // Polling: the oldest unfinished key every 100 ms, then those after it, stopping at the first
    // unfinished one (one request per tick at steady state; the times come from finishedAt).
    const poller = async () => {
      const deadline = Date.now() + 20 * 60_000;
      while (finished.size < layers.length) {
        if (Date.now() > deadline) throw new Error(`publisher: ${finished.size} of ${layers.length} finished after 20 min`);
        for (const l of layers) {
          const key = keyOf(l);
          if (finished.has(key)) continue;
          if (!eventAt.has(key)) break;
          const s = await statusJson(url, key, token);
          if (s.state !== 'done' && s.state !== 'failed') break;
          finished.set(key, s);
        }
        if (finished.size < layers.length) await new Promise((r) => setTimeout(r, uploadsDone ? 50 : 100));
      }
    };
    const polling = poller();
    await Promise.all(Array.from({ length: parallel }, uploader));
    uploadsDone = true;
    await polling;
    const parentCpu = process.cpuUsage(cpu0);
    const hwmBytes = vmHwmBytes(c.pid!);
    const cpuSeconds = cpuSecondsOf(c.pid!);
    const failed = [...finished.values()].filter((s) => s.state !== 'done');
    if (failed.length) throw new Error(`publisher: ${failed.length} jobs failed, e.g. ${failed[0]!.key}: ${failed[0]!.reason ?? failed[0]!.code ?? ''}`);
    const firstEvent = Math.min(...eventAt.values());
    const doneAt = new Map([...finished].map(([k, s]) => [k, Date.parse(s.finishedAt!)]));
    const lastDone = Math.max(...doneAt.values());
    return {
      wallSeconds: (lastDone - firstEvent) / 1000,
      latencies: [...doneAt].map(([k, t]) => (t - eventAt.get(k)!) / 1000),
      revisions: new Set([...finished.values()].map((s) => s.revision)).size,
      batches, uploadSeconds: (lastUpload - firstUpload) / 1000, tailSeconds: (lastDone - lastEvent) / 1000,
      hwmBytes, cpuSeconds, parentCpuSeconds: (parentCpu.user + parentCpu.system) / 1e6,
    };
  } finally {
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(t);
    log.end();
    // The bucket's objects go, so that s3rver's directory holds one repetition at a time.
    await s3.client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: layers.map((l) => ({ Key: keyOf(l) })) } })).catch(() => undefined);
    await s3.client.send(new DeleteBucketCommand({ Bucket: bucket })).catch(() => undefined);
  }
}

// -------------------------------------------------------------------------------------------------
// Statistics and printing

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
/** Nearest-rank percentile. */
const pct = (xs: readonly number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)]!;
};
const fmtRange = (xs: readonly number[], digits: number, width = 0): string => {
  const s = xs.length > 1 ? `${median(xs).toFixed(digits)} [${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}]` : xs.length ? median(xs).toFixed(digits) : '–';
  return s.padStart(width);
};

type Arm = 'publisher' | 'ingest' | 'ingest-one-transaction' | 'limit';

interface Bounds { readonly publisher1: number; readonly publisherN: number; readonly ingestN: number }
/** Layers per minute: one core doing every stage of a layer in turn, 60 / Σt_i; n cores: n × that. */
function bounds(l: LimitSeconds, cores: number): Bounds {
  const pub = l.get + l.inflate + l.sha256 + l.deflate + l.sha1;
  const ing = l.inflate + l.deflate + l.sha1;
  return { publisher1: 60 / pub, publisherN: (cores * 60) / pub, ingestN: (cores * 60) / ing };
}

async function main(): Promise<void> {
  const nLayers = Number(values.layers), mb = Number(values.mb), reps = Number(values.reps), seed = Number(values.seed);
  const parallel = Number(values.parallel), limitLayers = Number(values['limit-layers']);
  if (!(nLayers >= 1) || !(mb > 0) || !(reps >= 1) || !(parallel >= 1) || !(limitLayers >= 1)) throw new Error('bad arguments');
  const ownWork = values.work === undefined;
  const work = ownWork ? fs.mkdtempSync(path.join(os.tmpdir(), 'bench-publisher-')) : path.resolve(values.work!);
  fs.mkdirSync(work, { recursive: true });
  const runs = fs.mkdtempSync(path.join(work, 'runs-'));
  const cpuProf = values['cpu-prof'] ? path.resolve(values['cpu-prof']) : undefined;
  let s3: S3Server | undefined;
  let meta: DataMeta | undefined;
  const cleanup = async () => {
    for (const c of running) c.kill('SIGKILL');
    await s3?.close();
    fs.rmSync(runs, { recursive: true, force: true });
    if (!values['keep-data']) {
      if (ownWork) fs.rmSync(work, { recursive: true, force: true });
      else for (const l of meta?.items ?? []) fs.rmSync(l.file, { force: true });
      if (!ownWork) fs.rmSync(path.join(work, 'data.json'), { force: true });
    }
  };
  process.once('SIGINT', () => { void cleanup().finally(() => process.exit(130)); });
  try {
    meta = await prepareData(work, nLayers, mb, seed);
    const layers = meta.items;
    execFileSync('sh', ['-c', `cat ${layers.map((l) => JSON.stringify(l.file)).join(' ')} > /dev/null`]); // page cache, for every arm
    const gzBytes = layers.reduce((a, l) => a + l.size, 0), tarBytes = layers.reduce((a, l) => a + l.tarBytes, 0);
    const cores = os.availableParallelism();
    s3 = await startS3(['limit-src']);
    // The limit's GETs read a bucket of their own, uploaded once.
    const sample = Array.from({ length: Math.min(limitLayers, layers.length) }, (_, k) => layers[Math.floor((k * layers.length) / Math.min(limitLayers, layers.length))]!);
    for (const l of sample) await s3.client.send(new PutObjectCommand({ Bucket: 'limit-src', Key: keyOf(l), Body: fs.readFileSync(l.file) }));

    console.log(`\n${layers.length} layers: gzip ${fmtRange(layers.map((l) => l.size / MiB), 2)} MiB each (${(gzBytes / MB).toFixed(0)} MB in all), `
      + `tar ${(median(layers.map((l) => l.tarBytes)) / MiB).toFixed(1)} MiB (${(tarBytes / gzBytes).toFixed(2)}×), ${median(layers.map((l) => l.files))} files, `
      + `${median(layers.map((l) => l.chunked))} chunked (> ${CHUNKING_THRESHOLD_BYTES / MiB} MiB) per layer; seed ${seed}`);
    console.log(`${cores} cores, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}; ${reps} repetition(s), arms interleaved (forward, then backward)`);
    console.log(`publisher: child process \`node dist/publisher/cli.js --repo … --port 0 --token-file …\`; s3rver in this process; `
      + `uploads ${parallel} in parallel (SDK PutObject), one MinIO event per upload once it is answered`);
    console.log(`ingest: child, writer ingest() of each .tar.gz read stream, one revision per layer; ingest-one-transaction: child, all in one transaction()`);
    console.log(`limit: child, single-core stage times over ${sample.length} of the layers\n`);

    const plan: Arm[] = ['publisher', 'ingest', 'ingest-one-transaction', 'limit'];
    const pubRes: PublisherResult[] = [];
    const childRes = new Map<Arm, ChildResult[]>();
    const t0 = performance.now();
    for (let rep = 0; rep < reps; rep++) {
      const order = rep % 2 === 0 ? plan : [...plan].reverse();
      for (const arm of order) {
        execFileSync('sync');
        const dir = fs.mkdtempSync(path.join(runs, `${arm}-`));
        const tag = `  rep ${rep + 1} ${arm.padEnd(23)}`;
        if (arm === 'publisher') {
          const r = await runPublisher(s3, layers, dir, `ci-${rep + 1}`, parallel, cpuProf);
          pubRes.push(r);
          console.log(`${tag}${r.wallSeconds.toFixed(1).padStart(6)} s, ${(layers.length / r.wallSeconds * 60).toFixed(1)} layers/min; event→done median ${median(r.latencies).toFixed(2)} s, `
            + `p90 ${pct(r.latencies, 90).toFixed(2)} s; ${r.revisions} revisions (batches ${r.batches.join(',')}); uploads took ${r.uploadSeconds.toFixed(1)} s, `
            + `last event→last done ${r.tailSeconds.toFixed(1)} s; peak RSS ${(r.hwmBytes / MB).toFixed(0)} MB; CPU ${r.cpuSeconds.toFixed(1)} s publisher + ${r.parentCpuSeconds.toFixed(1)} s s3rver/uploads`);
        } else {
          const spec: ChildSpec = arm === 'limit' ? { arm, endpoint: s3.endpoint, bucket: 'limit-src', layers: sample } : { arm, dir, layers };
          const r = await runChild(spec, s3.env);
          childRes.set(arm, [...(childRes.get(arm) ?? []), r]);
          if (arm === 'limit') {
            const b = bounds(r.limit!, cores);
            console.log(`${tag}${r.wallSeconds.toFixed(1).padStart(6)} s; bound ${b.publisherN.toFixed(1)} layers/min on ${cores} cores (publisher's stages), ${b.ingestN.toFixed(1)} (ingest's)`);
          } else {
            console.log(`${tag}${r.wallSeconds.toFixed(1).padStart(6)} s, ${(layers.length / r.wallSeconds * 60).toFixed(1)} layers/min; per layer median ${median(r.perLayerSeconds).toFixed(2)} s, `
              + `p90 ${pct(r.perLayerSeconds, 90).toFixed(2)} s; ${r.revisions} revisions; peak RSS ${(r.hwmBytes / MB).toFixed(0)} MB; CPU ${r.cpuSeconds.toFixed(1)} s`);
          }
        }
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
    console.log(`  (all arms: ${((performance.now() - t0) / 60000).toFixed(1)} min; load average now ${os.loadavg().map((x) => x.toFixed(2)).join(' ')})`);

    // ---- physical limit
    const lims = (childRes.get('limit') ?? []).map((r) => r.limit!);
    const bs = lims.map((l) => bounds(l, cores));
    const avgGz = gzBytes / layers.length, avgTar = tarBytes / layers.length;
    console.log(`\nphysical limit: single-core seconds per layer of each stage (mean layer: ${(avgGz / MB).toFixed(1)} MB gzip, ${(avgTar / MB).toFixed(1)} MB tar), median [min–max]`);
    const stage = (name: string, f: (l: LimitSeconds) => number, bytes: number, of: string) =>
      console.log(`  ${name.padEnd(52)}${fmtRange(lims.map(f), 3, 22)} s${fmtRange(lims.map((l) => bytes / MB / f(l)), 0, 18)} MB/s of ${of}`);
    stage('S3 GetObject from s3rver, streamed to nowhere', (l) => l.get, avgGz, 'gzip');
    stage('inflate (gunzip)', (l) => l.inflate, avgTar, 'tar');
    stage('sha256 of blob + tar', (l) => l.sha256, avgTar, 'tar');
    stage(`deflate (zlib ${ZLIB_LEVEL === -1 ? 'default level 6' : `level ${ZLIB_LEVEL}`}) of the objects`, (l) => l.deflate, avgTar, 'tar');
    stage('sha1 of the deflated objects', (l) => l.sha1, avgTar, 'tar');
    console.log(`  bound = cores × 60 / Σt_i layers/min (every stage's CPU spread over ${cores} cores, no overhead, GET counted as client time):`);
    console.log(`    publisher's stages (GET + inflate + sha256 + deflate + sha1): 1 core ${fmtRange(bs.map((b) => b.publisher1), 1)}, ${cores} cores ${fmtRange(bs.map((b) => b.publisherN), 1)} layers/min`);
    console.log(`    ingest's stages (inflate + deflate + sha1):                   ${cores} cores ${fmtRange(bs.map((b) => b.ingestN), 1)} layers/min`);
    if (lims[0]) console.log(`    (${lims[0].objects} objects over ${lims[0].layers} layers, deflated to ${(lims[0].deflatedBytes / MB).toFixed(0)} MB)`);

    // ---- arms
    const lpm = (wall: number) => (layers.length / wall) * 60;
    const pubL = pubRes.map((r) => lpm(r.wallSeconds));
    const ingL = (childRes.get('ingest') ?? []).map((r) => lpm(r.wallSeconds));
    const oneL = (childRes.get('ingest-one-transaction') ?? []).map((r) => lpm(r.wallSeconds));
    const limN = bs.map((b) => b.publisherN);
    console.log(`\narms: layers/min = ${layers.length} layers / wall time (publisher: first event → last done), MB/s of gzip; median [min–max]`);
    console.log(`  ${'arm'.padEnd(24)}${'layers/min'.padStart(22)}${'MB/s gzip'.padStart(22)}${'× own limit'.padStart(20)}${'revisions'.padStart(12)}${'peak RSS MB'.padStart(18)}${'CPU s'.padStart(22)}`);
    const row = (name: string, l: readonly number[], revs: readonly number[], rss: readonly number[], cpu: readonly number[], bound: readonly number[]) => {
      const vs = bound.length ? l.map((x, i) => x / (bound[i] ?? median(bound))) : [];
      console.log(`  ${name.padEnd(24)}${fmtRange(l, 1, 22)}${fmtRange(l.map((x) => (x / 60) * avgGz / MB), 1, 22)}${fmtRange(vs, 2, 20)}${fmtRange(revs, 0, 12)}${fmtRange(rss, 0, 18)}${fmtRange(cpu, 1, 22)}`);
    };
    row('publisher', pubL, pubRes.map((r) => r.revisions), pubRes.map((r) => r.hwmBytes / MB), pubRes.map((r) => r.cpuSeconds), limN);
    for (const [name, arm, l] of [['ingest (rev/layer)', 'ingest', ingL], ['ingest-one-transaction', 'ingest-one-transaction', oneL]] as const) {
      const rs = childRes.get(arm) ?? [];
      row(name, l, rs.map((r) => r.revisions), rs.map((r) => r.hwmBytes / MB), rs.map((r) => r.cpuSeconds), bs.map((x) => x.ingestN));
    }
    if (limN.length) {
      console.log(`  ${`limit, publisher stages`.padEnd(24)}${fmtRange(limN, 1, 22)}${fmtRange(limN.map((x) => (x / 60) * avgGz / MB), 1, 22)}${'1.00'.padStart(20)}`);
      const ingN = bs.map((x) => x.ingestN);
      console.log(`  ${`limit, ingest stages`.padEnd(24)}${fmtRange(ingN, 1, 22)}${fmtRange(ingN.map((x) => (x / 60) * avgGz / MB), 1, 22)}${'1.00'.padStart(20)}`);
      console.log(`  (× limit: the publisher against the bound of its stages, the ingest arms against the bound of theirs, both on ${cores} cores)`);
    }
    const lat = pubRes.map((r) => median(r.latencies)), p90 = pubRes.map((r) => pct(r.latencies, 90));
    console.log(`  publisher event→done latency: median ${fmtRange(lat, 2)} s, p90 ${fmtRange(p90, 2)} s (per repetition, over its ${layers.length} layers); `
      + `uploads ${fmtRange(pubRes.map((r) => r.uploadSeconds), 1)} s, last event → last done ${fmtRange(pubRes.map((r) => r.tailSeconds), 1)} s`);

    if (pubL.length && ingL.length) {
      const ratio = median(pubL) / median(ingL);
      const perRep = pubL.map((x, i) => x / (ingL[i] ?? median(ingL)));
      console.log(`\ntarget: publisher / ingest = ${ratio.toFixed(3)} (medians; per repetition ${fmtRange(perRep, 2)}) → ${ratio >= 0.8 ? 'PASS' : 'FAIL'} (target ≥ 0.80)`);
      if (oneL.length) console.log(`        publisher / ingest-one-transaction = ${(median(pubL) / median(oneL)).toFixed(3)} (for reference: the same batching)`);
    }
  } finally {
    await cleanup();
  }
}

if (values.child !== undefined) {
  const r = await child(JSON.parse(values.child) as ChildSpec);
  process.stdout.write(`${MARK}${JSON.stringify(r)}\n`);
  process.exit(0);
} else {
  await main();
}
