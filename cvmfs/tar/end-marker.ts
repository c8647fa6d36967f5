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


interface ExtractInternals {
  _locked: boolean;
  _header: object | null;
  _consumeHeader(): boolean;
  _continueWrite(err: Error | null): void;
}

/**
 * tar-stream skips zero blocks and parses on, so entries hidden after the end-of-archive marker
 * would be applied although GNU tar and Go's archive/tar (Docker's own extractor) never read
 * them: what a scanner saw would not be what we unpack. As Go does, a header after a zero block
 * is an error. Wraps tar-stream's header step on this one extractor (tar-stream 3.x internals;
 * test/unit/cvmfs/tar-input.test.ts fails if an upgrade bypasses it).
 */
export function refuseEntriesAfterEndMarker(extract: object): void {
  const ex = extract as ExtractInternals;
  if (typeof ex._consumeHeader !== 'function' || typeof ex._continueWrite !== 'function') throw new Error('tar-stream internals changed: no _consumeHeader');
  const consume = ex._consumeHeader.bind(ex);
  let zeroBlocks = 0;
  ex._consumeHeader = () => {
    if (ex._locked) return consume();
    const r = consume();
    if (ex._header === null) { zeroBlocks++; return r; }
    if (zeroBlocks > 0) {
      ex._continueWrite(new Error(`an entry follows ${zeroBlocks === 1 ? 'a zero block' : 'the end-of-archive marker'}: nothing may be hidden after the end of a tar`));
      return false;
    }
    return r;
  };
}
