/**
 * bench/ingest: ingests a generated tree of mixed file sizes (default 1 GiB of content) and prints,
 * side by side from one run: our MB/s, `tar -x` of the same tar to disk, and the physical limit of
 * this machine (zlib deflate at our level + SHA-1 over the same bytes on all cores), with ratios.
 *   node dist/bench/ingest.js [--size-mb N] [--keep]
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import tar from 'tar-stream';
import { DirStorage, ingest, initRepository } from '../cvmfs/index.js';
import { ZLIB_LEVEL } from '../cvmfs/format/object.js';

const { values } = parseArgs({ options: { 'size-mb': { type: 'string', default: '1024' }, keep: { type: 'boolean' } } });
const totalBytes = Number(values['size-mb']) * 1024 * 1024;
const MB = 1e6;

/** Deterministic file contents: a third incompressible, the rest text-like, as in real layers. */
function makeContent(size: number, i: number): Buffer {
  if (i % 3 === 0) return randomBytes(size);
  const words = ['lib', 'usr', 'share', 'python3', 'site-packages', '__init__', 'def ', 'return ', 'import ', 'class ', '0x', 'ELF', '\n', '  '];
  const b = Buffer.allocUnsafe(size);
  let pos = 0, s = i * 7919 + 1;
  while (pos < size) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    const w = words[s % words.length]! + (s % 97).toString(36);
    pos += b.write(w, pos);
  }
  return b;
}

/** Sizes: many small files, some medium, a few large (chunked), until `total`. */
function* fileSizes(total: number): Generator<number> {
  let left = total, i = 0;
  while (left > 0) {
    const r = (i * 2654435761) % 1000;
    const size = r < 700 ? 512 + (r * 97) % 65_536 : r < 970 ? 65_536 + (r * 7919) % 1_000_000 : r < 995 ? 2_000_000 + (r * 104729) % 6_000_000 : 20_000_000 + (r % 5) * 10_000_000;
    const s = Math.min(size, left);
    left -= s;
    i++;
    yield s;
  }
}

async function writeTar(file: string): Promise<{ files: number; bytes: number }> {
  const pack = tar.pack();
  const out = fs.createWriteStream(file);
  pack.pipe(out);
  let files = 0, bytes = 0, i = 0;
  for (const size of fileSizes(totalBytes)) {
    const dir = `d${Math.floor(i / 200)}/s${i % 7}`;
    const body = makeContent(size, i);
    await new Promise<void>((res, rej) => pack.entry({ name: `${dir}/f${i}.bin`, size, mode: 0o644 }, body, (e) => (e ? rej(e) : res())));
    if (out.writableNeedDrain) await new Promise<void>((r) => out.once('drain', () => r()));
    files++; bytes += size; i++;
  }
  pack.finalize();
  await new Promise<void>((r) => out.on('close', () => r()));
  return { files, bytes };
}

const LIMIT_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { deflateSync } = require('node:zlib');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const tarFile = workerData.file;
const fd = fs.openSync(tarFile, 'r');
let bytes = 0;
for (const [off, len] of workerData.slices) {
  const buf = Buffer.allocUnsafe(len);
  fs.readSync(fd, buf, 0, len, off);
  const z = deflateSync(buf, { level: workerData.level });
  createHash('sha1').update(z).digest();
  bytes += len;
}
parentPort.postMessage(bytes);
`;

/** File-content slices of the tar (offset, length), each at most 4 MiB like our objects. */
function contentSlices(file: string): [number, number][] {
  const fd = fs.openSync(file, 'r');
  const header = Buffer.alloc(512);
  const slices: [number, number][] = [];
  let off = 0;
  for (;;) {
    if (fs.readSync(fd, header, 0, 512, off) < 512 || header.every((b) => b === 0)) break;
    const size = parseInt(header.toString('ascii', 124, 136).replace(/\0.*$/, '').trim() || '0', 8);
    for (let p = 0; p < size; p += 4 << 20) slices.push([off + 512 + p, Math.min(4 << 20, size - p)]);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  fs.closeSync(fd);
  return slices;
}

async function physicalLimit(file: string, threads: number): Promise<number> {
  const slices = contentSlices(file);
  const parts: [number, number][][] = Array.from({ length: threads }, () => []);
  slices.forEach((s, i) => parts[i % threads]!.push(s));
  const t0 = performance.now();
  const done = await Promise.all(parts.map((p) => new Promise<number>((resolve, reject) => {
    const w = new Worker(LIMIT_WORKER, { eval: true, workerData: { file, slices: p, level: ZLIB_LEVEL } });
    w.once('message', (n: number) => { resolve(n); void w.terminate(); });
    w.once('error', reject);
  })));
  const bytes = done.reduce((a, b) => a + b, 0);
  return bytes / MB / ((performance.now() - t0) / 1000);
}

async function main(): Promise<void> {
  const threads = os.availableParallelism();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-ingest-'));
  try {
    const tarFile = path.join(work, 'layer.tar');
    console.log(`generating ${values['size-mb']} MiB of mixed files in ${tarFile} …`);
    const { files, bytes } = await writeTar(tarFile);
    execFileSync('sh', ['-c', `cat ${tarFile} > /dev/null`]); // warm the page cache for every arm
    console.log(`${files} files, ${(bytes / MB).toFixed(0)} MB of content; ${threads} cores\n`);

    const limit = await physicalLimit(tarFile, threads);

    const storage = new DirStorage(path.join(work, 'repo'));
    await initRepository({ storage, keysDir: path.join(work, 'keys'), fqrn: 'bench.example.org' });
    const t0 = performance.now();
    const r = await ingest({ storage, keysDir: path.join(work, 'keys'), path: '/layers/bench', input: fs.createReadStream(tarFile) });
    const oursS = (performance.now() - t0) / 1000;
    const ours = bytes / MB / oursS;

    const out = path.join(work, 'untar');
    fs.mkdirSync(out);
    const t1 = performance.now();
    execFileSync('tar', ['-xf', tarFile, '-C', out]);
    execFileSync('sync', ['-f', out]);
    const tarS = (performance.now() - t1) / 1000;
    const tarX = bytes / MB / tarS;

    const row = (name: string, mbs: number, note = '') =>
      console.log(`${name.padEnd(46)} ${mbs.toFixed(1).padStart(8)} MB/s   ${(mbs / limit).toFixed(2).padStart(5)}× limit ${note}`);
    console.log('arm                                              MB/s (content)  ratio');
    row(`physical limit: zlib deflate + SHA-1, ${threads} threads`, limit);
    row(`cvmfs-repo ingest → revision ${r.revision} (${r.objects.written} objects)`, ours, `(${oursS.toFixed(1)} s)`);
    row('tar -x to disk (+ sync)', tarX, `(${tarS.toFixed(1)} s)`);
    console.log(`\ningest / limit = ${(ours / limit).toFixed(2)}   ingest / tar -x = ${(ours / tarX).toFixed(2)}`);
  } finally {
    if (!values.keep) fs.rmSync(work, { recursive: true, force: true });
  }
}

await main();
