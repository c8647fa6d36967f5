/**
 * Physical limits for bench/client, measured against the same `cvmfs-repo serve` in the same run:
 * the work no client can avoid, without FUSE, a cache or files. Each object is fetched with a
 * keep-alive loopback HTTP GET, its SHA-1 checked against its name, and inflated.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { inflateSync } from 'node:zlib';
import { objectPath, type ObjectSuffix } from '../../cvmfs/index.js';
import { sh } from './children.js';

export interface ObjectRef {
  readonly hash: string;
  readonly suffix: ObjectSuffix;
  readonly compressed: boolean;
}

export interface LimitResult {
  readonly seconds: number;
  readonly objects: number;
  /** Bytes on the wire (stored objects). */
  readonly wireBytes: number;
  /** Bytes after inflate: the file content. */
  readonly bytes: number;
}

export class Getter {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  constructor(private readonly base: string) {}

  /** One retry when a kept-alive socket was closed by the server as it was reused (idle timeout race). */
  async get(rel: string): Promise<Buffer> {
    try {
      return await this.once(rel);
    } catch (err) {
      if ((err as { reused?: boolean }).reused && (err as NodeJS.ErrnoException).code === 'ECONNRESET') return this.once(rel);
      throw err;
    }
  }

  private once(rel: string): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const req = http.get(`${this.base}/${rel}`, { agent: this.agent }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('error', reject);
        res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(parts)) : reject(new Error(`GET ${rel}: HTTP ${res.statusCode}`))));
      });
      req.on('error', (err) => reject(Object.assign(err, { reused: req.reusedSocket })));
    });
  }

  close(): void { this.agent.destroy(); }
}

function check(raw: Buffer, ref: ObjectRef): number {
  if (createHash('sha1').update(raw).digest('hex') !== ref.hash.slice(0, 40)) throw new Error(`object ${ref.hash}${ref.suffix}: SHA-1 mismatch`);
  return ref.compressed ? inflateSync(raw).length : raw.length;
}

/**
 * `streams` GETs in flight, each body hashed and inflated on this thread right away (small and
 * mid-size objects: the loop of one reader that opens file after file).
 */
export async function fetchAll(g: Getter, refs: readonly ObjectRef[], streams: number): Promise<LimitResult> {
  let next = 0, wire = 0, bytes = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: streams }, async () => {
    while (next < refs.length) {
      const ref = refs[next++]!;
      const raw = await g.get(objectPath(ref.hash, ref.suffix));
      wire += raw.length;
      bytes += check(raw, ref);
    }
  }));
  return { seconds: (performance.now() - t0) / 1000, objects: refs.length, wireBytes: wire, bytes };
}

const WORKER = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { inflateSync } = require('node:zlib');
parentPort.on('message', ({ raw, hash, compressed }) => {
  if (!raw) return parentPort.postMessage(0);
  const b = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  if (createHash('sha1').update(b).digest('hex') !== hash.slice(0, 40)) return parentPort.postMessage(-1);
  parentPort.postMessage(compressed ? inflateSync(b).length : b.length);
});
`;

/**
 * Large chunks as one pipeline: `inFlight` GETs at once (the client's read-ahead), SHA-1 and
 * inflate on one worker thread per core.
 */
export async function fetchPipelined(g: Getter, refs: readonly ObjectRef[], inFlight: number, pool?: Worker[]): Promise<LimitResult> {
  const workers = pool ?? await startWorkers();
  try {
    const idle = [...workers];
    const waiting: ((w: Worker) => void)[] = [];
    const onWorker = async (ref: ObjectRef, raw: Buffer): Promise<number> => {
      const w = idle.pop() ?? await new Promise<Worker>((r) => waiting.push(r));
      try {
        return await new Promise<number>((resolve) => { w.once('message', resolve); w.postMessage({ raw, hash: ref.hash, compressed: ref.compressed }); });
      } finally {
        const n = waiting.shift();
        if (n) n(w); else idle.push(w);
      }
    };
    let next = 0, wire = 0, bytes = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: inFlight }, async () => {
      while (next < refs.length) {
        const ref = refs[next++]!;
        const raw = await g.get(objectPath(ref.hash, ref.suffix));
        wire += raw.length;
        const n = await onWorker(ref, raw);
        if (n < 0) throw new Error(`object ${ref.hash}${ref.suffix}: SHA-1 mismatch`);
        bytes += n;
      }
    }));
    return { seconds: (performance.now() - t0) / 1000, objects: refs.length, wireBytes: wire, bytes };
  } finally {
    if (!pool) await Promise.all(workers.map((w) => w.terminate()));
  }
}

/** One SHA-1 + inflate worker per core, started and answering. */
export async function startWorkers(): Promise<Worker[]> {
  const workers = Array.from({ length: os.availableParallelism() }, () => new Worker(WORKER, { eval: true }));
  await Promise.all(workers.map((w) => new Promise((r) => { w.once('message', r); w.postMessage({}); })));
  return workers;
}

/**
 * Mount, cold: what answering the first `ls` needs at the least. GET the manifest, then (at once)
 * the whitelist, the certificate and the root catalog; SHA-1 and inflate the two objects, write
 * the catalog to local disk and list a local directory from a child process (`ls`).
 */
export async function mountLimit(g: Getter, scratch: string): Promise<LimitResult> {
  const t0 = performance.now();
  const manifest = await g.get('.cvmfspublished');
  const text = manifest.toString('latin1');
  const field = (k: string) => {
    const m = new RegExp(`^${k}([0-9a-f]{40}\\S*)$`, 'm').exec(text.slice(0, text.indexOf('\n--\n')));
    if (!m) throw new Error(`manifest has no ${k} line`);
    return m[1]!;
  };
  const root: ObjectRef = { hash: field('C'), suffix: 'C', compressed: true };
  const cert: ObjectRef = { hash: field('X'), suffix: 'X', compressed: true };
  const [wl, c, x] = await Promise.all([g.get('.cvmfswhitelist'), g.get(objectPath(root.hash, 'C')), g.get(objectPath(cert.hash, 'X'))]);
  check(x, cert);
  check(c, { ...root, compressed: false });
  const catalog = inflateSync(c);
  fs.writeFileSync(path.join(scratch, 'root-catalog.sqlite'), catalog);
  await sh(`ls '${scratch}' > /dev/null`);
  return { seconds: (performance.now() - t0) / 1000, objects: 4, wireBytes: manifest.length + wl.length + c.length + x.length, bytes: catalog.length };
}
