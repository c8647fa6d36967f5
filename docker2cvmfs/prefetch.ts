/**
 * Layer blobs for the ingest loop, which takes them one at a time in order. While layer i is
 * ingested, the next `ahead` layers download in parallel into a private spool directory; a layer
 * the loop reaches before its download started is streamed straight from its source instead, so
 * the first layer (and a one-layer image) never waits for a spool copy. Disk use is bounded by
 * `ahead` blobs; each spool file is deleted once taken and read.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ConvertError, isConvertError } from './errors.js';
import { hexOf, type BlobSource, type Descriptor } from './image.js';

export interface PrefetchItem { readonly descriptor: Descriptor; readonly source: BlobSource }

const TRANSIENT = new Set(['D2C_REGISTRY_UNREACHABLE', 'D2C_TRUNCATED', 'D2C_REGISTRY_ERROR']);
export const isTransient = (err: unknown): boolean => isConvertError(err) && TRANSIENT.has(err.code);

interface Spool { readonly file: string; readonly ready: Promise<void> }

export class Prefetcher {
  private readonly spools = new Map<number, Spool>();
  private readonly abort = new AbortController();
  private next = 0;

  constructor(private readonly items: readonly PrefetchItem[], private readonly spoolDir: string,
    private readonly ahead: number, private readonly attempts = 3) {}

  /** The blob of item i (items are taken in order): a spool file once downloaded, else the source's stream. */
  async take(i: number): Promise<Readable> {
    this.next = i + 1;
    const spool = this.spools.get(i);
    this.fill();
    if (spool === undefined) {
      const it = this.items[i]!;
      return it.source.openBlob(it.descriptor, this.abort.signal);
    }
    await spool.ready;
    const stream = createReadStream(spool.file);
    stream.once('close', () => { void fs.rm(spool.file, { force: true }); });
    this.spools.delete(i);
    return stream;
  }

  /** Starts the downloads of the items after the one being ingested, up to `ahead` at once. */
  private fill(): void {
    for (let j = this.next; j < this.items.length && j < this.next + this.ahead; j++) {
      if (this.spools.has(j)) continue;
      const it = this.items[j]!;
      const file = path.join(this.spoolDir, `${hexOf(it.descriptor.digest)}.${j}`);
      const ready = this.download(it, file);
      ready.catch(() => {});
      this.spools.set(j, { file, ready });
    }
  }

  private async download(it: PrefetchItem, file: string): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        const body = await it.source.openBlob(it.descriptor, this.abort.signal);
        await pipeline(body, createWriteStream(file, { mode: 0o600 }), { signal: this.abort.signal });
        const st = await fs.stat(file);
        if (st.size !== it.descriptor.size) {
          throw new ConvertError('D2C_TRUNCATED', `layer ${it.descriptor.digest}: ${st.size} bytes downloaded, the manifest says ${it.descriptor.size}`);
        }
        return;
      } catch (err) {
        await fs.rm(file, { force: true });
        if (this.abort.signal.aborted || !isTransient(err) || attempt >= this.attempts) throw err;
        await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
      }
    }
  }

  /** Stops every download and removes what was spooled. */
  async close(): Promise<void> {
    this.abort.abort();
    await Promise.allSettled([...this.spools.values()].map((s) => s.ready));
    await Promise.all([...this.spools.values()].map((s) => fs.rm(s.file, { force: true })));
    this.spools.clear();
  }
}
