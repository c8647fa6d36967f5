/** Worker thread of zlib-pool.ts: compress + hash (writer) or inflate (reader), one job per message. */
import { parentPort } from 'node:worker_threads';
import { inflateSync } from 'node:zlib';
import type { HashAlgo } from './format/hash.js';
import { encodeObject } from './format/object.js';

export type ZlibRequest =
  | { readonly id: number; readonly op: 'encode'; readonly data: Uint8Array; readonly algo: HashAlgo; readonly compress: boolean }
  | { readonly id: number; readonly op: 'inflate'; readonly data: Uint8Array; readonly maxBytes: number };
export interface ZlibReply { readonly id: number; readonly out: Uint8Array; readonly digest?: Uint8Array; readonly error?: string }

/** Transfer only a buffer we own whole: small Buffers share Node's allocation pool. */
function transferable(b: Uint8Array): ArrayBuffer[] {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? [b.buffer as ArrayBuffer] : [];
}

parentPort?.on('message', (req: ZlibRequest) => {
  try {
    if (req.op === 'encode') {
      const enc = encodeObject(req.data, '', req.algo, req.compress);
      parentPort!.postMessage({ id: req.id, out: enc.stored, digest: enc.digest } satisfies ZlibReply, transferable(enc.stored));
    } else {
      const out = inflateSync(req.data, { maxOutputLength: req.maxBytes });
      parentPort!.postMessage({ id: req.id, out } satisfies ZlibReply, transferable(out));
    }
  } catch (err) {
    parentPort!.postMessage({ id: req.id, out: new Uint8Array(0), error: (err as Error).message } satisfies ZlibReply);
  }
});
