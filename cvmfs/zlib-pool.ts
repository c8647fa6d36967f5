/**
 * A pool of worker threads for zlib work: the writer compresses and hashes objects there, so tar
 * parsing, catalog work and storage I/O on the main thread overlap with compression on every core;
 * the reader inflates downloaded chunks there. Callers bound memory with `waitForCapacity()`
 * before handing over more bytes.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { CvmfsError } from './errors.js';
import type { HashAlgo } from './format/hash.js';
import type { ZlibReply, ZlibRequest } from './zlib-worker.js';

export interface Encoded { readonly stored: Buffer; readonly digest: Buffer }

export interface ZlibPoolOptions {
  readonly threads?: number;
  readonly maxInFlightBytes?: number;
}

export const DEFAULT_MAX_IN_FLIGHT_BYTES = 48 * 1024 * 1024;

// Tests run the TypeScript sources directly; the build runs compiled JavaScript.
const WORKER_URL = new URL(import.meta.url.endsWith('.ts') ? './zlib-worker.ts' : './zlib-worker.js', import.meta.url);

interface Job { readonly req: ZlibRequest; readonly resolve: (r: ZlibReply) => void; readonly reject: (e: Error) => void }

export class ZlibPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly queue: Job[] = [];
  private readonly running = new Map<number, Job & { size: number }>();
  private readonly waiters: (() => void)[] = [];
  private nextId = 1;
  private inFlightBytes = 0;
  private closed = false;
  private readonly maxInFlightBytes: number;

  constructor(opts: ZlibPoolOptions = {}) {
    this.maxInFlightBytes = opts.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES;
    const n = Math.max(1, opts.threads ?? availableParallelism());
    for (let i = 0; i < n; i++) {
      const w = new Worker(WORKER_URL);
      w.on('message', (reply: ZlibReply) => this.onReply(w, reply));
      w.on('error', (err) => this.failAll(err));
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  private submit(req: ZlibRequest): Promise<ZlibReply> {
    if (this.closed) return Promise.reject(new CvmfsError('CVMFS_CLOSED', 'zlib pool is closed'));
    return new Promise<ZlibReply>((resolve, reject) => {
      this.inFlightBytes += req.data.byteLength;
      this.queue.push({ req, resolve, reject });
      this.dispatch();
    });
  }

  /** Compresses (unless `compress` is false) and hashes `data`. The pool takes ownership of `data`'s buffer. */
  async encode(data: Uint8Array, algo: HashAlgo, compress = true): Promise<Encoded> {
    const r = await this.submit({ id: this.nextId++, op: 'encode', data, algo, compress });
    if (r.error) throw new CvmfsError('CVMFS_STORAGE_FAILED', `compressing an object failed: ${r.error}`);
    return { stored: Buffer.from(r.out.buffer, r.out.byteOffset, r.out.byteLength), digest: Buffer.from(r.digest!) };
  }

  /** Inflates a zlib stream, refusing output beyond `maxBytes`; rejects with the zlib message. */
  async inflate(data: Uint8Array, maxBytes: number): Promise<Buffer> {
    const r = await this.submit({ id: this.nextId++, op: 'inflate', data, maxBytes });
    if (r.error) throw new Error(r.error);
    return Buffer.from(r.out.buffer, r.out.byteOffset, r.out.byteLength);
  }

  /** Resolves once fewer than the configured number of bytes are queued or being encoded. */
  async waitForCapacity(): Promise<void> {
    while (this.inFlightBytes >= this.maxInFlightBytes) await new Promise<void>((r) => this.waiters.push(r));
  }

  private dispatch(): void {
    while (this.idle.length > 0 && this.queue.length > 0) {
      const w = this.idle.pop()!;
      const job = this.queue.shift()!;
      const data = job.req.data;
      this.running.set(job.req.id, { ...job, size: data.byteLength });
      const owned = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength;
      w.postMessage(job.req, owned ? [data.buffer as ArrayBuffer] : []);
    }
  }

  private onReply(w: Worker, reply: ZlibReply): void {
    const job = this.running.get(reply.id);
    this.running.delete(reply.id);
    this.idle.push(w);
    if (job) {
      this.inFlightBytes -= job.size;
      job.resolve(reply);
    }
    for (const wake of this.waiters.splice(0)) wake();
    this.dispatch();
  }

  private failAll(err: Error): void {
    const e = new CvmfsError('CVMFS_STORAGE_FAILED', `zlib worker failed: ${err.message}`, { cause: err });
    for (const j of [...this.running.values(), ...this.queue]) j.reject(e);
    this.running.clear();
    this.queue.length = 0;
    this.inFlightBytes = 0;
    for (const wake of this.waiters.splice(0)) wake();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
