/**
 * A tar ends with zero blocks. A stream cut at an entry boundary lacks them, and tar-stream does
 * not notice that; this pass-through remembers the last block so that the reader can.
 */
import { Transform } from 'node:stream';

const BLOCK = 512;

/** Remembers the last block of the decompressed stream, to check for the end-of-archive marker. */
export class EndMarkerTap extends Transform {
  total = 0;
  private tail: Buffer = Buffer.alloc(0);
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.total += chunk.length;
    this.tail = chunk.length >= BLOCK ? chunk.subarray(chunk.length - BLOCK) : Buffer.concat([this.tail, chunk]).subarray(-BLOCK);
    this.push(chunk);
    cb();
  }
  /** A tar ends with zero blocks. A stream cut at an entry boundary lacks them; tar-stream
   *  does not notice that, so we do. */
  endsWithZeroBlock(): boolean {
    return this.total > 0 && this.total % BLOCK === 0 && this.tail.length === BLOCK && this.tail.every((b) => b === 0);
  }
}

