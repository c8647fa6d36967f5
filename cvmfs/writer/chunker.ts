/**
 * Content-defined chunking as cvmfs_server does it (docs/cvmfs-format.md §5): an xor32 rolling
 * checksum (x = (x << 1) ^ byte, so only the last 32 bytes count), cut where
 * |int32(x) − 0x7FFFFFFF| < 0xFFFFFFFF / avg, never before `min`, always at `max`. Clients accept
 * any contiguous cut, so matching cvmfs_server's points only helps deduplication across versions.
 */
export const CHUNK_MIN_BYTES = 4 * 1024 * 1024;
export const CHUNK_AVG_BYTES = 8 * 1024 * 1024;
export const CHUNK_MAX_BYTES = 16 * 1024 * 1024;
/** Files larger than this are chunked. */
export const CHUNKING_THRESHOLD_BYTES = CHUNK_MIN_BYTES;

const WINDOW = 32;

export class Chunker {
  private x = 0;
  private len = 0;
  private readonly threshold: number;

  constructor(private readonly min = CHUNK_MIN_BYTES, avg = CHUNK_AVG_BYTES, private readonly max = CHUNK_MAX_BYTES) {
    this.threshold = Math.floor(0xffffffff / avg);
  }

  /** Offsets within `buf` at which the current chunk ends (exclusive), in order. */
  cuts(buf: Uint8Array): number[] {
    const out: number[] = [];
    const { min, max, threshold } = this;
    let i = 0;
    while (i < buf.length) {
      // Bytes before min − WINDOW cannot influence a permitted cut: skip them.
      const skip = Math.min(buf.length - i, Math.max(0, min - WINDOW - this.len));
      i += skip;
      this.len += skip;
      let x = this.x, len = this.len;
      for (; i < buf.length; i++) {
        x = ((x << 1) ^ buf[i]!) | 0;
        len++;
        if ((len >= min && 0x7fffffff - x < threshold) || len >= max) {
          i++;
          out.push(i);
          x = 0;
          len = 0;
          break;
        }
      }
      this.x = x;
      this.len = len;
    }
    return out;
  }
}
