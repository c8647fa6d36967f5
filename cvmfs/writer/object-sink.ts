/** Puts encoded objects into storage once each, however often the same content appears. */
import type { RepositoryStorage } from './storage.js';

export interface SinkStats { written: number; present: number; bytesWritten: number }

export class ObjectSink {
  private readonly puts = new Map<string, Promise<void>>();
  readonly stats: SinkStats = { written: 0, present: 0, bytesWritten: 0 };

  constructor(private readonly storage: RepositoryStorage) {}

  put(objectPath: string, stored: Uint8Array): Promise<void> {
    let p = this.puts.get(objectPath);
    if (p === undefined) {
      p = this.storage.putObject(objectPath, stored).then((r) => {
        if (r === 'written') { this.stats.written++; this.stats.bytesWritten += stored.byteLength; } else this.stats.present++;
      });
      this.puts.set(objectPath, p);
    }
    return p;
  }

  /** Settles once every put issued so far is done; rejects with the first failure. */
  async drain(): Promise<void> { await Promise.all(this.puts.values()); }
}
