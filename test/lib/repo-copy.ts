/**
 * Copies of one repository made by makeRepo: each copy starts at the template's revision and
 * signs with the template's keys, so that property suites get a fresh repository per case
 * without generating keys each time.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { DirStorage, ingest } from '../../cvmfs/index.js';
import type { Fixture } from './repo-fixture.js';
import { dirFetch, readRepository } from './repo-reader.js';

/** A repository in `dir` (created or empty), copied from `template`; it shares the template's keys. */
export function copyRepo(template: Fixture, dir: string): Fixture {
  fs.cpSync(template.dir, dir, { recursive: true });
  const storage = new DirStorage(dir);
  const { keys, fqrn } = template;
  return {
    dir, keys, fqrn, storage,
    ingest: (at, tar, threads) => ingest({ storage, keysDir: keys, path: at, input: Buffer.isBuffer(tar) ? Readable.from([tar]) : tar,
      ...(threads ? { threads } : {}) }),
    read: () => readRepository(dirFetch(dir), fqrn, fs.readFileSync(path.join(keys, `${fqrn}.pub`), 'utf8')),
    manifest: () => fs.readFileSync(path.join(dir, '.cvmfspublished')),
  };
}
