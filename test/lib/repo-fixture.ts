/** Repositories made through the real writer, in a test's own directory. */
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { DirStorage, ingest, initRepository, type HashAlgo, type IngestResult } from '../../cvmfs/index.js';
import { dirFetch, readRepository, type ReadRepository } from './repo-reader.js';

export interface Fixture {
  readonly dir: string;
  readonly keys: string;
  readonly fqrn: string;
  readonly storage: DirStorage;
  ingest(at: string, tar: Buffer | Readable, threads?: number): Promise<IngestResult>;
  read(): Promise<ReadRepository>;
  manifest(): Buffer;
}

export async function makeRepo(base: string, fqrn = 'test.example.org', algo: HashAlgo = 'sha1'): Promise<Fixture> {
  const dir = path.join(base, 'repo');
  const keys = path.join(base, 'keys');
  const storage = new DirStorage(dir);
  await initRepository({ storage, keysDir: keys, fqrn, algo });
  return {
    dir, keys, fqrn, storage,
    ingest: (at, tar, threads) => ingest({ storage, keysDir: keys, path: at, input: Buffer.isBuffer(tar) ? Readable.from([tar]) : tar,
      ...(threads ? { threads } : {}) }),
    read: () => readRepository(dirFetch(dir), fqrn, fs.readFileSync(path.join(keys, `${fqrn}.pub`), 'utf8')),
    manifest: () => fs.readFileSync(path.join(dir, '.cvmfspublished')),
  };
}
