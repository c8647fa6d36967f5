/**
 * bench/ingest-memory: peak memory and time of `ingest` for tars with many small entries. The tar
 * is generated as a stream while it is ingested (never held whole), so what is measured is the
 * writer's own memory: the peak resident set (VmHWM) of this process.
 *   node dist/bench/ingest-memory.js [--variant empty|small|flat] [--entries N] [--dirs D] [--max-size B] [--phases]
 * Variants: empty = 1,000,000 empty files in 1000 directories; small = 1,000,000 files of 0–100
 * bytes in 1000 directories; flat = 100,000 files of 0–100 bytes in one directory. `--phases`
 * (run with `node --expose-gc`) reads the layer and builds its catalog step by step and prints
 * the heap after each step, to see what stays alive.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { DirStorage, ingest, initRepository } from '../cvmfs/index.js';
import { buildLayerCatalog } from '../cvmfs/writer/catalog-build.js';
import { readLayer } from '../cvmfs/writer/layer-reader.js';
import { ObjectSink } from '../cvmfs/writer/object-sink.js';
import { ZlibPool } from '../cvmfs/zlib-pool.js';

const PRESETS = {
  empty: { entries: 1_000_000, dirs: 1000, maxSize: 0 },
  small: { entries: 1_000_000, dirs: 1000, maxSize: 100 },
  flat: { entries: 100_000, dirs: 1, maxSize: 100 },
} as const;

const { values } = parseArgs({
  options: {
    variant: { type: 'string', default: 'empty' }, entries: { type: 'string' }, dirs: { type: 'string' },
    'max-size': { type: 'string' }, phases: { type: 'boolean' }, keep: { type: 'boolean' },
  },
});
const preset = PRESETS[values.variant as keyof typeof PRESETS];
if (preset === undefined) throw new Error(`unknown --variant ${values.variant}; use ${Object.keys(PRESETS).join(', ')}`);
const entries = Number(values.entries ?? preset.entries);
const dirs = Number(values.dirs ?? preset.dirs);
const maxSize = Number(values['max-size'] ?? preset.maxSize);

const BLOCK = 512;
const MTIME = 1_700_000_000;

function octal(buf: Buffer, off: number, len: number, v: number): void {
  buf.write(v.toString(8).padStart(len - 1, '0'), off, len - 1, 'ascii');
}

/** One ustar header (names here are always below 100 bytes). */
function header(buf: Buffer, at: number, name: string, type: '0' | '5', size: number, mode: number): void {
  const h = buf.subarray(at, at + BLOCK);
  h.fill(0);
  h.write(name, 0, 100, 'utf8');
  octal(h, 100, 8, mode);
  octal(h, 108, 8, 0);
  octal(h, 116, 8, 0);
  octal(h, 124, 12, size);
  octal(h, 136, 12, MTIME);
  h.fill(0x20, 148, 156);
  h.write(type, 156, 1, 'ascii');
  h.write('ustar\0' + '00', 257, 8, 'ascii');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
}

/** Deterministic size in 0 … maxSize, and content unique per file (so small files are distinct objects). */
const sizeOf = (i: number) => (maxSize === 0 ? 0 : (i * 7919) % (maxSize + 1));
function fill(buf: Buffer, at: number, size: number, i: number): void {
  const s = `${i}:${'abcdefghijklmnopqrstuvwxyz'.repeat(4)}`;
  buf.write(s.repeat(Math.ceil(size / s.length)).slice(0, size), at, size, 'ascii');
}

/** The tar as a stream: directory entries as each directory begins, files in tar order (dir by dir). */
function tarStream(): Readable {
  const BATCH = 1 << 20;
  let i = 0, dir = -1, ended = false;
  const top = ['opt/', 'opt/conda/', 'opt/conda/pkgs/'];
  return new Readable({
    read() {
      if (ended) return;
      const buf = Buffer.alloc(BATCH);
      let at = 0;
      if (i === 0 && dir === -1) for (const d of top) { header(buf, at, d, '5', 0, 0o755); at += BLOCK; }
      while (i < entries && at + 2 * BLOCK + maxSize + BLOCK <= BATCH) {
        const d = Math.floor((i * dirs) / entries);
        if (d !== dir) { dir = d; header(buf, at, `opt/conda/pkgs/p${d}/`, '5', 0, 0o755); at += BLOCK; }
        const size = sizeOf(i);
        header(buf, at, `opt/conda/pkgs/p${d}/file-${i}.py`, '0', size, 0o644);
        at += BLOCK;
        fill(buf, at, size, i);
        at += Math.ceil(size / BLOCK) * BLOCK;
        i++;
      }
      if (i === entries && at + 2 * BLOCK <= BATCH) { at += 2 * BLOCK; ended = true; } // zero blocks: end of archive
      this.push(buf.subarray(0, at));
      if (ended) this.push(null);
    },
  });
}

function status(field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return Number(m![1]) * 1024;
}
const MB = (n: number) => `${(n / 1e6).toFixed(0)} MB`;
const gc = (globalThis as { gc?: () => void }).gc;
function heap(label: string): void {
  gc?.(); gc?.();
  const m = process.memoryUsage();
  console.log(`  ${label.padEnd(28)} rss ${MB(m.rss).padStart(7)}  heapUsed ${MB(m.heapUsed).padStart(7)}  external ${MB(m.external).padStart(6)}  peak ${MB(status('VmHWM'))}`);
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-ingest-mem-'));
  try {
    const storage = new DirStorage(path.join(work, 'repo'));
    const keysDir = path.join(work, 'keys');
    await initRepository({ storage, keysDir, fqrn: 'bench.example.org' });
    const files = entries;
    console.log(`variant ${values.variant}: ${files} files of 0–${maxSize} bytes in ${dirs} directories (${os.availableParallelism()} cores)`);
    const base = status('VmRSS');
    const t0 = performance.now();
    if (values.phases) {
      heap('before');
      const sink = new ObjectSink(storage);
      const pool = new ZlibPool();
      const now = new Date();
      const { tree } = await readLayer(tarStream(), { mountPath: '/layers/bench', algo: 'sha1', pool, sink, now });
      console.log(`  read in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      heap('after readLayer');
      await sink.drain();
      heap('after drain');
      const t1 = performance.now();
      await buildLayerCatalog(path.join(work, 'layer.sqlite'), tree.root, '/layers/bench',
        { algo: 'sha1', now, catalogMarker: true, revision: 1, previousRevision: null });
      console.log(`  catalog in ${((performance.now() - t1) / 1000).toFixed(1)} s, ${MB(fs.statSync(path.join(work, 'layer.sqlite')).size)}`);
      heap('after buildLayerCatalog');
      await pool.close();
      return;
    }
    const r = await ingest({ storage, keysDir, path: '/layers/bench', input: tarStream() });
    const s = (performance.now() - t0) / 1000;
    const peak = status('VmHWM');
    console.log(`revision ${r.revision}: ${r.layer.entries} entries, ${r.objects.written} objects written`);
    console.log(`time ${s.toFixed(1)} s (${(r.layer.entries / s / 1000).toFixed(1)} k entries/s)`);
    console.log(`peak RSS ${MB(peak)} (${MB(base)} before ingest); ${((peak - base) / r.layer.entries).toFixed(0)} bytes per entry above that`);
  } finally {
    if (!values.keep) fs.rmSync(work, { recursive: true, force: true });
  }
}

await main();
