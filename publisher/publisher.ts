/**
 * The publisher as a library: job store, object store, worker and HTTP edge composed, started and
 * stopped in reverse order. `cli.ts` only turns argv into these options.
 */
import os from 'node:os';
import path from 'node:path';
import { loadState, type RepositoryStorage } from '../cvmfs/writer/index.js';
import { DirStorage } from '../cvmfs/writer/index.js';
import { PublisherError } from './errors.js';
import { JobStore } from './jobs.js';
import { createMetrics, type PublisherMetrics } from './metrics.js';
import type { ObjectStore } from './object-store.js';
import { createPublisherApp, listenPublisher } from './server.js';
import { Worker, type Logger } from './worker.js';

export interface PublisherOptions {
  /** The repository tree (served at /cvmfs/<fqrn>/ by whatever web server); with `storage`, only for --serve. */
  readonly repoDir?: string;
  /** Where the repository is written (default: a DirStorage of repoDir), e.g. an S3Storage. */
  readonly storage?: RepositoryStorage;
  readonly keysDir: string;
  /** Must be the repository's name. */
  readonly fqrn: string;
  readonly objects: ObjectStore;
  /** Private directory of the job database (created 0700). */
  readonly stateDir: string;
  readonly buckets?: readonly string[];
  readonly token?: string;
  readonly port?: number;
  readonly bind?: string;
  /** Also serve the repository at /cvmfs/<fqrn>/. */
  readonly serve?: boolean;
  readonly allowUnnamed?: boolean;
  readonly threads?: number;
  readonly retryDelayMs?: number;
  /** Jobs per revision (worker.ts DEFAULT_MAX_BATCH). */
  readonly maxBatch?: number;
  readonly log?: Logger;
}

export interface Publisher {
  readonly url: string;
  readonly port: number;
  readonly metrics: PublisherMetrics;
  /** Jobs found publishing at start (a crash) and queued again. */
  readonly resumed: number;
  /** Stops listening, aborts the batch under way (its jobs resume at the next start), closes the store. */
  close(): Promise<void>;
}

/** `<dirname(repo)>/.cvmfs-publisher`, or `$XDG_STATE_HOME/cvmfs-publisher/<fqrn>` when that is set. */
export function defaultStateDir(repoDir: string | undefined, fqrn: string, env: Readonly<Record<string, string | undefined>>): string {
  const xdg = env['XDG_STATE_HOME'];
  if (xdg) return path.join(xdg, 'cvmfs-publisher', fqrn);
  if (repoDir === undefined) return path.join(os.homedir(), '.local', 'state', 'cvmfs-publisher', fqrn);
  return path.join(path.dirname(path.resolve(repoDir)), '.cvmfs-publisher');
}

export async function startPublisher(o: PublisherOptions): Promise<Publisher> {
  const log: Logger = o.log ?? (() => {});
  if (o.storage === undefined && o.repoDir === undefined) throw new PublisherError('PUB_USAGE', 'a repository is needed: a directory or a storage');
  if (o.serve && o.repoDir === undefined) throw new PublisherError('PUB_USAGE', '--serve serves a local repository directory; serve a bucket through its own HTTP endpoint');
  const storage: RepositoryStorage = o.storage ?? new DirStorage(o.repoDir!);
  const { manifest } = await loadState(storage);
  if (manifest.fqrn !== o.fqrn) throw new PublisherError('PUB_USAGE', `${storage.location} holds ${manifest.fqrn}, not ${o.fqrn}`);
  const jobs = JobStore.open(o.stateDir);
  if (jobs.resumed) log('info', `${jobs.resumed} jobs were publishing when the publisher stopped: queued again`);
  const metrics = createMetrics(() => jobs.counts());
  const worker = new Worker({
    jobs, objects: o.objects, storage, keysDir: o.keysDir, metrics, log, allowUnnamed: o.allowUnnamed, threads: o.threads, retryDelayMs: o.retryDelayMs, maxBatch: o.maxBatch,
  });
  const app = createPublisherApp({
    jobs, metrics, fqrn: o.fqrn, onQueued: () => worker.notify(), log, token: o.token, buckets: o.buckets,
    serveDir: o.serve ? o.repoDir : undefined,
  });
  let http;
  try { http = await listenPublisher(app, o.port ?? 3000, o.bind ?? '127.0.0.1'); } catch (err) {
    jobs.close();
    throw err;
  }
  worker.start();
  let closing: Promise<void> | undefined;
  return {
    url: http.url, port: http.port, metrics, resumed: jobs.resumed,
    close: () => closing ??= (async () => {
      await http.close();
      await worker.close();
      o.objects.close();
      jobs.close();
    })(),
  };
}
