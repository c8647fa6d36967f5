/**
 * Seeded, deterministic file content and ustar writing for benchmarks (the generators of
 * bench/convert, shared here): a small PRNG, identifier-like text (compresses ~3×), ELF-like
 * binaries (~2×) and incompressible bytes (AES-CTR key stream), unique per (seed, file index) so
 * that neither CernVM-FS nor the chunker can deduplicate files against each other.
 */
import { createCipheriv, createHash, type Cipher } from 'node:crypto';
import fs from 'node:fs';

export const MiB = 1024 * 1024;

/** mulberry32: a small seeded PRNG. */
export class Rng {
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
  /** Fisher–Yates, in place. */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) { const j = this.u32() % (i + 1); [a[i], a[j]] = [a[j]!, a[i]!]; }
    return a;
  }
}

const ZEROS = Buffer.alloc(MiB);

function keyStream(seed: number, stream: string): Cipher {
  const key = createHash('sha256').update(`bench-content:${seed}:${stream}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
}

/** Identifier-like words with a skewed frequency, and repeats from the last 8 KiB (code repeats itself). */
export class Vocabulary {
  private readonly bytes: Uint8Array;
  private readonly offsets: Uint32Array;
  private readonly count: number;
  private readonly seps: Uint8Array[];
  constructor(rng: Rng, count = 4096) {
    const alphabet = 'abcdefghijklmnopqrstuvwxyz_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ';
    const parts: string[] = [];
    for (let i = 0; i < count; i++) {
      const len = 2 + (rng.u32() % 11);
      let w = '';
      for (let k = 0; k < len; k++) w += alphabet[rng.u32() % (k === 0 ? 26 : alphabet.length)]!;
      parts.push(w);
    }
    this.count = count;
    this.offsets = new Uint32Array(count + 1);
    let off = 0;
    parts.forEach((w, i) => { this.offsets[i] = off; off += w.length; });
    this.offsets[count] = off;
    this.bytes = Buffer.from(parts.join(''), 'latin1');
    this.seps = [' ', ' ', ' ', ' ', ' ', ' ', '\n', '\n    ', '\n        ', '(', ')', ', ', '.', ' = ', ': ', '"'].map((s) => Buffer.from(s, 'latin1'));
  }

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

const CODE_BYTES = Uint8Array.from([0x00, 0x48, 0x89, 0x8b, 0xe8, 0xff, 0x0f, 0x85, 0x84, 0xc3, 0x24, 0x44, 0x83, 0xc7, 0x01, 0x74,
  0x45, 0x31, 0xc0, 0x4c, 0x8d, 0x05, 0x10, 0x20, 0x08, 0xe9, 0x5d, 0x41, 0x55, 0x53, 0x90, 0xcc]);

export type Kind = 'text' | 'binary' | 'random';

/** One file's content, in pieces of at most 1 MiB; the first bytes name the file, so no two files are equal. */
export class ContentGen {
  private readonly rng: Rng;
  private readonly cipher: Cipher;
  private first = true;
  constructor(private readonly kind: Kind, private readonly vocab: Vocabulary, seed: number, private readonly id: string) {
    const h = createHash('sha256').update(`${seed}:${id}`).digest();
    this.rng = new Rng(h.readUInt32LE(0));
    this.cipher = keyStream(seed, id);
  }

  private random(out: Uint8Array, from: number, n: number): void {
    out.set(this.cipher.update(ZEROS.subarray(0, n)), from);
  }

  private binary(out: Uint8Array, from: number, to: number): void {
    let p = from;
    while (p < to) {
      const r = this.rng.u32();
      const n = Math.min(to - p, 64 + (r & 2047));
      const k = (r >>> 11) % 20;
      if (k < 4) this.random(out, p, n);
      else if (k < 12) {
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
    if (this.first) {
      this.first = false;
      const tag = Buffer.from(`#${this.id}\n`, 'latin1');
      tag.copy(out, 0, 0, Math.min(n, tag.length));
    }
    return out;
  }
}

// -------------------------------------------------------------------------------------------------
// ustar

export const BLOCK = 512;
const MTIME = 1_700_000_000;

function octal(h: Buffer, off: number, len: number, v: number): void {
  h.write(v.toString(8).padStart(len - 1, '0'), off, len - 1, 'ascii');
}

/** A ustar header; names up to 255 bytes (prefix + name split at a slash). */
export function tarHeader(name: string, type: '0' | '2' | '5', size: number, mode: number, linkname = ''): Buffer {
  const h = Buffer.alloc(BLOCK);
  let prefix = '';
  let rest = name;
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', 154);
    if (cut <= 0 || Buffer.byteLength(name.slice(cut + 1)) > 100) throw new Error(`tar name too long: ${name}`);
    prefix = name.slice(0, cut);
    rest = name.slice(cut + 1);
  }
  h.write(rest, 0, 100, 'utf8');
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
  if (prefix) h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  return h;
}

export function tarPadding(size: number): Buffer {
  return ZEROS.subarray(0, (BLOCK - (size % BLOCK)) % BLOCK);
}

export const TAR_END = Buffer.alloc(2 * BLOCK);

/** Buffered synchronous file writer that hashes (sha256) what it writes. */
export class HashingFileWriter {
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
  /** Closes the file; returns `sha256:<hex>` of everything written. */
  close(): string {
    this.flush();
    fs.closeSync(this.fd);
    return `sha256:${this.hash.digest('hex')}`;
  }
}
