/**
 * bench/client's seeded data set, written as plain files on local disk (they are the local-disk
 * reference, and `tar` of them is what the writer ingests at /data):
 *   big.bin                     one large file (chunked by the writer), 1 MiB pieces of text,
 *                               machine-code-like and incompressible content in turn
 *   small/dNNN/fNNNNN           the small files (1–8 KiB), 100 per directory
 *   mixed/mNNN                  the mixed files (10 KiB–2 MiB, log-uniform)
 */
import fs from 'node:fs';
import path from 'node:path';
import { ContentGen, MiB, Rng, Vocabulary, type Kind } from '../lib/content.js';

export const FILES_PER_DIR = 100;
const KINDS: readonly Kind[] = ['text', 'binary', 'random'];

export interface DataSet {
  readonly root: string;
  readonly bigBytes: number;
  /** Relative to the data root (and to /data in the repository), in the fixed read order. */
  readonly small: readonly string[];
  readonly smallBytes: number;
  /** `small`, its directories and its files, each directory before its files (~20,201 at 20,000). */
  readonly statEntries: readonly string[];
  /** Mixed files in the seeded random read order. */
  readonly mixed: readonly string[];
  readonly mixedBytes: number;
}

function writeContent(file: string, gen: ContentGen, size: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    for (let done = 0; done < size;) {
      const n = Math.min(MiB, size - done);
      fs.writeSync(fd, gen.piece(n));
      done += n;
    }
  } finally { fs.closeSync(fd); }
}

export function generate(root: string, o: { bigBytes: number; small: number; mixed: number; seed: number }): DataSet {
  const rng = new Rng(o.seed);
  const vocab = new Vocabulary(new Rng(o.seed ^ 0x5bd1e995));
  fs.mkdirSync(path.join(root, 'small'), { recursive: true });
  fs.mkdirSync(path.join(root, 'mixed'), { recursive: true });

  const fd = fs.openSync(path.join(root, 'big.bin'), 'w');
  try {
    for (let off = 0, i = 0; off < o.bigBytes; off += MiB, i++) {
      const n = Math.min(MiB, o.bigBytes - off);
      fs.writeSync(fd, new ContentGen(KINDS[i % 3]!, vocab, o.seed, `big/${i}`).piece(n));
    }
  } finally { fs.closeSync(fd); }

  const small: string[] = [];
  const statEntries: string[] = ['small'];
  let smallBytes = 0;
  for (let i = 0; i < o.small; i++) {
    const dir = `small/d${String(Math.floor(i / FILES_PER_DIR)).padStart(3, '0')}`;
    if (i % FILES_PER_DIR === 0) { fs.mkdirSync(path.join(root, dir)); statEntries.push(dir); }
    const rel = `${dir}/f${String(i).padStart(5, '0')}`;
    const size = 1024 + (rng.u32() % (7 * 1024 + 1));
    writeContent(path.join(root, rel), new ContentGen(KINDS[i % 3]!, vocab, o.seed, rel), size);
    small.push(rel);
    statEntries.push(rel);
    smallBytes += size;
  }

  const mixed: string[] = [];
  let mixedBytes = 0;
  const lo = Math.log(10 * 1024), hi = Math.log(2 * MiB);
  for (let i = 0; i < o.mixed; i++) {
    const rel = `mixed/m${String(i).padStart(3, '0')}`;
    const size = Math.round(Math.exp(lo + rng.next() * (hi - lo)));
    writeContent(path.join(root, rel), new ContentGen(KINDS[i % 3]!, vocab, o.seed, rel), size);
    mixed.push(rel);
    mixedBytes += size;
  }
  new Rng(o.seed + 1).shuffle(mixed);
  return { root, bigBytes: o.bigBytes, small, smallBytes, statEntries, mixed, mixedBytes };
}
