/**
 * Puts encoded objects into storage once each, however often the same content appears.
 * Memory: an object being stored holds its promise; a stored one only its name, packed (the hex
 * digest as raw bytes, about 80 bytes), and only the last REMEMBERED_OBJECTS_MAX of those: past
 * that the set starts afresh, and a repeat of a forgotten object costs the storage's existence
 * check (it is then counted as present), never a second write.
 */
import type { RepositoryStorage } from './storage.js';

/** Stored objects remembered to skip repeats: about 5 MB. */
export const REMEMBERED_OBJECTS_MAX = 65_536;

export interface SinkStats { written: number; present: number; bytesWritten: number }

const OBJECT_PATH = /^data\/([0-9a-f]{2})\/([0-9a-f]+)([\x20-\x7e]*)$/;

/**
 * `data/ab/cdef…S` → the digest's bytes, a NUL, the suffix, as one flat latin1 string (a
 * concatenation would keep a 32-byte cons cell and its parts); any other name as itself. No path
 * holds a NUL, so no packed name equals an unpacked one.
 */
function packedName(objectPath: string): string {
  const m = OBJECT_PATH.exec(objectPath);
  if (m === null) return objectPath;
  const hex = m[1]! + m[2]!;
  if (hex.length % 2 !== 0) return objectPath;
  const n = hex.length / 2;
  const b = Buffer.allocUnsafe(n + 1 + m[3]!.length);
  b.write(hex, 0, 'hex');
  b[n] = 0;
  b.write(m[3]!, n + 1, 'latin1');
  return b.toString('latin1');
}

export class ObjectSink {
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly stored = new Set<string>();
  readonly stats: SinkStats = { written: 0, present: 0, bytesWritten: 0 };

  constructor(private readonly storage: RepositoryStorage) {}

  put(objectPath: string, stored: Uint8Array): Promise<void> {
    const key = packedName(objectPath);
    if (this.stored.has(key)) return Promise.resolve();
    let p = this.inFlight.get(key);
    if (p === undefined) {
      p = this.storage.putObject(objectPath, stored).then((r) => {
        if (r === 'written') { this.stats.written++; this.stats.bytesWritten += stored.byteLength; } else this.stats.present++;
      });
      this.inFlight.set(key, p);
      // A stored object is remembered by name only; a failed put stays (later puts of it and drain reject with it).
      p.then(() => {
        this.inFlight.delete(key);
        if (this.stored.size >= REMEMBERED_OBJECTS_MAX) this.stored.clear();
        this.stored.add(key);
      }, () => {});
    }
    return p;
  }

  /** Settles once every put issued so far is done; rejects with the first failure. */
  async drain(): Promise<void> { await Promise.all(this.inFlight.values()); }
}
