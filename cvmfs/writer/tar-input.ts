/**
 * Turns a byte stream (plain, gzip or zstd tar, sniffed from its first bytes) into tar entries.
 * Decompression and parsing run in a pipeline, so the consumer's pace drives the producer: the
 * next entry is only parsed after the previous body was drained.
 */
import { PassThrough, Readable, Transform, pipeline } from 'node:stream';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { DecompressStream } from 'zstd-napi';
import { CvmfsError } from '../errors.js';
import { EndMarkerTap, refuseEntriesAfterEndMarker } from '../tar/end-marker.js';
import { installPaxDecoder } from '../tar/pax.js';

export type TarCompression = 'gzip' | 'zstd' | 'none';

const GZIP_MAGIC = [0x1f, 0x8b];
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

export function sniffCompression(head: Uint8Array): TarCompression {
  const starts = (m: number[]) => m.every((b, i) => head[i] === b);
  if (starts(GZIP_MAGIC)) return 'gzip';
  if (starts(ZSTD_MAGIC)) return 'zstd';
  return 'none';
}

async function readHead(input: Readable, n: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let have = 0;
  while (have < n) {
    const chunk = input.read() as Buffer | null;
    if (chunk === null) {
      if (input.readableEnded || input.destroyed) break;
      await new Promise<void>((resolve, reject) => {
        const done = () => { input.off('readable', done); input.off('end', done); input.off('error', fail); resolve(); };
        const fail = (err: Error) => { input.off('readable', done); input.off('end', done); reject(err); };
        input.once('readable', done); input.once('end', done); input.once('error', fail);
      });
      continue;
    }
    parts.push(chunk);
    have += chunk.length;
  }
  const head = Buffer.concat(parts);
  if (head.length > 0) input.unshift(head);
  return head;
}

export interface TarInput {
  readonly compression: TarCompression;
  readonly entries: tar.Extract;
  /** Resolves when the whole stream was read; rejects with CVMFS_TAR_CORRUPT otherwise. */
  readonly done: Promise<void>;
  /** Turns an error thrown while iterating `entries` into a coded error. */
  wrapError(err: unknown): CvmfsError;
}

function corrupt(err: unknown, compression: TarCompression): CvmfsError {
  if (err instanceof CvmfsError) return err;
  const what = compression === 'none' ? 'tar stream' : `${compression}-compressed tar stream`;
  return new CvmfsError('CVMFS_TAR_CORRUPT', `${what} is truncated or corrupt: ${(err as Error).message}`, { cause: err });
}

export async function openTar(input: Readable): Promise<TarInput> {
  installPaxDecoder();
  let compression: TarCompression;
  try {
    compression = sniffCompression(await readHead(input, ZSTD_MAGIC.length));
  } catch (err) {
    throw corrupt(err, 'none');
  }
  const decompress: Transform = compression === 'gzip' ? createGunzip()
    : compression === 'zstd' ? new DecompressStream() as unknown as Transform : new PassThrough();
  const tap = new EndMarkerTap();
  const entries = tar.extract();
  refuseEntriesAfterEndMarker(entries);
  const done = new Promise<void>((resolve, reject) => {
    pipeline(input, decompress, tap, entries as unknown as NodeJS.WritableStream, (err) => {
      if (err) { reject(corrupt(err, compression)); return; }
      if (tap.total === 0) { reject(new CvmfsError('CVMFS_TAR_CORRUPT', 'the input is empty, not a tar stream')); return; }
      if (!tap.endsWithZeroBlock()) {
        reject(corrupt(new Error('the end-of-archive marker is missing'), compression));
        return;
      }
      resolve();
    });
  });
  done.catch(() => { /* observed by the caller; avoid an unhandled rejection if it stops early */ });
  return { compression, entries, done, wrapError: (err) => corrupt(err, compression) };
}
