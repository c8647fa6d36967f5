/** Worker thread: zlib-compresses and hashes one object per message (see encoder-pool.ts). */
import { parentPort } from 'node:worker_threads';
import { digestOf, type HashAlgo } from '../format/hash.js';
import { encodeObject } from '../format/object.js';

export interface EncodeRequest { readonly id: number; readonly data: Uint8Array; readonly algo: HashAlgo; readonly compress: boolean }
export interface EncodeReply { readonly id: number; readonly stored: Uint8Array; readonly digest: Uint8Array; readonly error?: string }

parentPort?.on('message', (req: EncodeRequest) => {
  try {
    const enc = encodeObject(req.data, '', req.algo, req.compress);
    const stored = enc.stored;
    // Transfer only a buffer we own whole: small Buffers share Node's allocation pool.
    const owned = stored.byteOffset === 0 && stored.byteLength === stored.buffer.byteLength;
    const reply: EncodeReply = { id: req.id, stored, digest: enc.digest };
    parentPort!.postMessage(reply, owned ? [stored.buffer as ArrayBuffer] : []);
  } catch (err) {
    parentPort!.postMessage({ id: req.id, stored: new Uint8Array(0), digest: digestOf(req.algo, ''), error: (err as Error).message });
  }
});
