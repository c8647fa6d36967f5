/**
 * A pool of worker threads that compress and hash objects, so that tar parsing, catalog work and
 * storage I/O on the main thread overlap with compression on every core. Callers bound memory with
 * `waitForCapacity()` before handing over more bytes.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { CvmfsError } from '../errors.js';
import type { HashAlgo } from '../format/hash.js';
import type { EncodeReply, EncodeRequest } from './encode-worker.js';

export interface Encoded { readonly stored: Buffer; readonly digest: Buffer }

export interface EncoderPoolOptions {
  readonly algo: HashAlgo;
  readonly compress?: boolean;
  readonly threads?: number;
  readonly maxInFlightBytes?: number;
}

export const DEFAULT_MAX_IN_FLIGHT_BYTES = 128 * 1024 * 1024;

// Tests run the TypeScript sources directly; the build runs compiled JavaScript.
const WORKER_URL = new URL(import.meta.url.endsWith('.ts') ? './encode-worker.ts' : './encode-worker.js', import.meta.url);

interface Job { readonly req: EncodeRequest; readonly resolve: (e: Encoded) => void; readonly reject: (e: Error) => void }

export class EncoderPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly queue: Job[] = [];
  private readonly running = new Map<number, Job & { size: number }>();
  private readonly waiters: (() => void)[] = [];
  private nextId = 1;
  private inFlightBytes = 0;
  private closed = false;
  private readonly maxInFlightBytes: number;

  constructor(private readonly opts: EncoderPoolOptions) {
    this.maxInFlightBytes = opts.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES;
    const n = Math.max(1, opts.threads ?? availableParallelism());
    for (let i = 0; i < n; i++) {
      const w = new Worker(WORKER_URL);
      w.on('message', (reply: EncodeReply) => this.onReply(w, reply));
      w.on('error', (err) => this.failAll(err));
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  /** Compresses and hashes `data`. The pool takes ownership of `data`'s buffer. */
  encode(data: Uint8Array): Promise<Encoded> {
    if (this.closed) return Promise.reject(new CvmfsError('CVMFS_BAD_ARGUMENT', 'encoder pool is closed'));
    return new Promise<Encoded>((resolve, reject) => {
      const req: EncodeRequest = { id: this.nextId++, data, algo: this.opts.algo, compress: this.opts.compress ?? true };
      this.inFlightBytes += data.byteLength;
      this.queue.push({ req, resolve, reject });
      this.dispatch();
    });
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

  private onReply(w: Worker, reply: EncodeReply): void {
    const job = this.running.get(reply.id);
    this.running.delete(reply.id);
    this.idle.push(w);
    if (job) {
      this.inFlightBytes -= job.size;
      if (reply.error) job.reject(new CvmfsError('CVMFS_STORAGE_FAILED', `compressing an object failed: ${reply.error}`));
      else job.resolve({ stored: Buffer.from(reply.stored.buffer, reply.stored.byteOffset, reply.stored.byteLength), digest: Buffer.from(reply.digest) });
    }
    for (const wake of this.waiters.splice(0)) wake();
    this.dispatch();
  }

  private failAll(err: Error): void {
    const e = new CvmfsError('CVMFS_STORAGE_FAILED', `compression worker failed: ${err.message}`, { cause: err });
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
