/** Worker thread of zlib-pool.ts: compress + hash (writer) or inflate (reader), one job per message. */
import { parentPort } from 'node:worker_threads';
import { inflateSync } from 'node:zlib';
import type { HashAlgo } from './format/hash.js';
import { encodeObject } from './format/object.js';

export type ZlibRequest =
  | { readonly id: number; readonly op: 'encode'; readonly data: Uint8Array; readonly algo: HashAlgo; readonly compress: boolean }
  | { readonly id: number; readonly op: 'inflate'; readonly data: Uint8Array; readonly maxBytes: number };
export interface ZlibReply { readonly id: number; readonly out: Uint8Array; readonly digest?: Uint8Array; readonly error?: string }

/**
 * `b` in a buffer of its own, to transfer. zlib returns a small output as a slice of its 16 KiB
 * output buffer, and a posted slice is cloned with its whole buffer: a 30-byte object would reach
 * the main thread as 16 KiB and stay that big until stored.
 */
function owned(b: Uint8Array): Uint8Array {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength) return b;
  const copy = new Uint8Array(b.byteLength);
  copy.set(b);
  return copy;
}

parentPort?.on('message', (req: ZlibRequest) => {
  try {
    if (req.op === 'encode') {
      const enc = encodeObject(req.data, '', req.algo, req.compress);
      const out = owned(enc.stored);
      const digest = owned(enc.digest);
      parentPort!.postMessage({ id: req.id, out, digest } satisfies ZlibReply, [out.buffer as ArrayBuffer, digest.buffer as ArrayBuffer]);
    } else {
      const out = owned(inflateSync(req.data, { maxOutputLength: req.maxBytes }));
      parentPort!.postMessage({ id: req.id, out } satisfies ZlibReply, [out.buffer as ArrayBuffer]);
    }
  } catch (err) {
    parentPort!.postMessage({ id: req.id, out: new Uint8Array(0), error: (err as Error).message } satisfies ZlibReply);
  }
});
