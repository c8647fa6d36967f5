/**
 * The durable job queue: one SQLite database in the publisher's private state directory.
 *
 * Model: one row per (bucket, key, ETag), the identity of an upload, so the same notification
 * twice is one job (R43). A row goes queued → publishing → done | failed; a job left publishing by
 * a crash goes back to queued when the store opens, and a job that failed for a reason worth
 * retrying (store or repository unavailable) goes back to queued with a `not_before` time. The
 * database runs in WAL mode with synchronous=FULL, so a committed insert is on disk before the
 * webhook's 200 (every method here commits before it returns). Calls are synchronous
 * (better-sqlite3) and hence never interleave.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { PublisherError } from './errors.js';

export type JobState = 'queued' | 'publishing' | 'done' | 'failed';
export const JOB_STATES: readonly JobState[] = ['queued', 'publishing', 'done', 'failed'];

export interface Job {
  readonly id: number;
  readonly bucket: string;
  readonly key: string;
  /** '' when the event carried none. */
  readonly etag: string;
  readonly state: JobState;
  /** Failure reason (the coded message), for failed jobs and for the last retryable failure. */
  readonly reason: string | undefined;
  readonly code: string | undefined;
  /** `sha256:<hex>` of the compressed object: named by the key, or computed (--allow-unnamed). */
  readonly digest: string | undefined;
  /** `sha256:<hex>` of the uncompressed tar, once known. */
  readonly diffId: string | undefined;
  readonly revision: number | undefined;
  /** Compressed bytes read from the store for this job. */
  readonly bytes: number | undefined;
  /** Uncompressed bytes ingested. */
  readonly ingestedBytes: number | undefined;
  readonly attempts: number;
  /** Unix milliseconds. */
  readonly queuedAt: number;
  readonly startedAt: number | undefined;
  readonly finishedAt: number | undefined;
}

export interface NewJob {
  readonly bucket: string;
  readonly key: string;
  readonly etag: string;
  readonly digest: string | undefined;
}

export interface Enqueued {
  readonly job: Job;
  /** False when the same (bucket, key, ETag) was known already. */
  readonly created: boolean;
}

export type JobOutcome =
  | { readonly state: 'done'; readonly digest: string; readonly diffId: string; readonly revision: number; readonly bytes: number; readonly ingestedBytes: number }
  | { readonly state: 'failed'; readonly code: string; readonly reason: string; readonly digest?: string }
  /** Back to the queue, to be taken again not before `notBefore` (unix ms). */
  | { readonly state: 'queued'; readonly code: string; readonly reason: string; readonly notBefore: number; readonly countAttempt: boolean };

const DB_FILE = 'jobs.sqlite';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY,
  bucket TEXT NOT NULL,
  key TEXT NOT NULL,
  etag TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('queued', 'publishing', 'done', 'failed')),
  code TEXT,
  reason TEXT,
  digest TEXT,
  diff_id TEXT,
  revision INTEGER,
  bytes INTEGER,
  ingested_bytes INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  not_before INTEGER NOT NULL DEFAULT 0,
  queued_at INTEGER NOT NULL,
  started_at INTEGER,
  finished_at INTEGER,
  UNIQUE (bucket, key, etag)
);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key, id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_by_digest ON jobs (digest, state);
`;

interface Row {
  id: number; bucket: string; key: string; etag: string; state: JobState; code: string | null; reason: string | null;
  digest: string | null; diff_id: string | null; revision: number | null; bytes: number | null; ingested_bytes: number | null;
  attempts: number; not_before: number; queued_at: number; started_at: number | null; finished_at: number | null;
}

const opt = <T>(v: T | null): T | undefined => (v === null ? undefined : v);

function jobOf(r: Row): Job {
  return {
    id: r.id, bucket: r.bucket, key: r.key, etag: r.etag, state: r.state, reason: opt(r.reason), code: opt(r.code),
    digest: opt(r.digest), diffId: opt(r.diff_id), revision: opt(r.revision), bytes: opt(r.bytes), ingestedBytes: opt(r.ingested_bytes),
    attempts: r.attempts, queuedAt: r.queued_at, startedAt: opt(r.started_at), finishedAt: opt(r.finished_at),
  };
}

/**
 * Creates `dir` 0700 (missing parents too) and refuses one that is a symlink, not ours, or open to
 * group or others: the queue decides what gets published.
 */
export function ensureStateDir(dir: string): void {
  try { fs.mkdirSync(dir, { recursive: true, mode: 0o700 }); } catch (err) {
    throw new PublisherError('PUB_STATE_FAILED', `cannot create the state directory ${dir}: ${(err as Error).message}`, { cause: err });
  }
  const st = fs.lstatSync(dir);
  if (st.isSymbolicLink() || !st.isDirectory()) throw new PublisherError('PUB_STATE_UNSAFE', `state directory ${dir} is not a directory (a symlink is refused)`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) throw new PublisherError('PUB_STATE_UNSAFE', `state directory ${dir} belongs to uid ${st.uid}, not to us (${uid})`);
  if ((st.mode & 0o077) !== 0) {
    throw new PublisherError('PUB_STATE_UNSAFE', `state directory ${dir} has mode ${(st.mode & 0o777).toString(8)}; it must be private (chmod 700 ${dir})`);
  }
}

export class JobStore {
  private readonly db: Database.Database;
  private readonly stmt: {
    insert: Database.Statement; byIdentity: Database.Statement; byId: Database.Statement; latestForKey: Database.Statement;
    doneForDigest: Database.Statement; takeable: Database.Statement; markPublishing: Database.Statement; counts: Database.Statement;
    nextWake: Database.Statement; done: Database.Statement; failed: Database.Statement; requeue: Database.Statement; resetInterrupted: Database.Statement;
  };

  /** Opens (creating) the store in `stateDir`; jobs a crash left publishing are queued again. */
  static open(stateDir: string): JobStore {
    ensureStateDir(stateDir);
    try { return new JobStore(new Database(path.join(stateDir, DB_FILE))); } catch (err) {
      if (err instanceof PublisherError) throw err;
      throw new PublisherError('PUB_STATE_FAILED', `cannot open the job database in ${stateDir}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Jobs that were publishing when the previous process stopped, now queued again. */
  readonly resumed: number;

  private constructor(db: Database.Database) {
    this.db = db;
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('busy_timeout = 5000');
    db.exec(SCHEMA);
    this.stmt = {
      insert: db.prepare(`INSERT INTO jobs (bucket, key, etag, state, digest, diff_id, revision, queued_at, started_at, finished_at)
        VALUES (@bucket, @key, @etag, @state, @digest, @diffId, @revision, @now, @startedAt, @finishedAt) ON CONFLICT (bucket, key, etag) DO NOTHING`),
      byIdentity: db.prepare('SELECT * FROM jobs WHERE bucket = ? AND key = ? AND etag = ?'),
      byId: db.prepare('SELECT * FROM jobs WHERE id = ?'),
      latestForKey: db.prepare('SELECT * FROM jobs WHERE key = ? ORDER BY id DESC LIMIT 1'),
      doneForDigest: db.prepare("SELECT * FROM jobs WHERE digest = ? AND state = 'done' ORDER BY id DESC LIMIT 1"),
      takeable: db.prepare("SELECT * FROM jobs WHERE state = 'queued' AND not_before <= ? ORDER BY id LIMIT ?"),
      markPublishing: db.prepare("UPDATE jobs SET state = 'publishing', started_at = ? WHERE id = ?"),
      counts: db.prepare('SELECT state, count(*) AS n FROM jobs GROUP BY state'),
      nextWake: db.prepare("SELECT min(not_before) AS t FROM jobs WHERE state = 'queued'"),
      done: db.prepare(`UPDATE jobs SET state = 'done', code = NULL, reason = NULL, digest = @digest, diff_id = @diffId, revision = @revision,
        bytes = @bytes, ingested_bytes = @ingestedBytes, finished_at = @now, attempts = attempts + 1 WHERE id = @id`),
      failed: db.prepare(`UPDATE jobs SET state = 'failed', code = @code, reason = @reason, digest = coalesce(@digest, digest), finished_at = @now,
        attempts = attempts + 1 WHERE id = @id`),
      requeue: db.prepare(`UPDATE jobs SET state = 'queued', code = @code, reason = @reason, not_before = @notBefore,
        attempts = attempts + @count WHERE id = @id`),
      resetInterrupted: db.prepare("UPDATE jobs SET state = 'queued', not_before = 0 WHERE state = 'publishing'"),
    };
    this.resumed = this.stmt.resetInterrupted.run().changes;
  }

  /**
   * Records new uploads, all in one commit (durable when this returns). A job whose digest was
   * already published by an earlier job is done at once, with that job's revision and diffID.
   */
  enqueue(jobs: readonly NewJob[], now: number): Enqueued[] {
    return this.db.transaction(() => jobs.map((j): Enqueued => {
      const known = this.stmt.byIdentity.get(j.bucket, j.key, j.etag) as Row | undefined;
      if (known) return { job: jobOf(known), created: false };
      const published = j.digest === undefined ? undefined : this.stmt.doneForDigest.get(j.digest) as Row | undefined;
      this.stmt.insert.run({
        bucket: j.bucket, key: j.key, etag: j.etag, state: published ? 'done' : 'queued', digest: j.digest ?? null,
        diffId: published?.diff_id ?? null, revision: published?.revision ?? null, now, startedAt: published ? now : null, finishedAt: published ? now : null,
      });
      return { job: jobOf(this.stmt.byIdentity.get(j.bucket, j.key, j.etag) as Row), created: true };
    }))();
  }

  /** The oldest queued jobs due by `now` (at most `max`), marked publishing in one commit. */
  takeQueued(now: number, max = Number.MAX_SAFE_INTEGER): Job[] {
    return this.db.transaction(() => {
      const rows = this.stmt.takeable.all(now, max) as Row[];
      for (const r of rows) this.stmt.markPublishing.run(now, r.id);
      return rows.map((r) => jobOf({ ...r, state: 'publishing', started_at: now }));
    })();
  }

  /** Records the outcomes of a batch in one commit. */
  finish(outcomes: ReadonlyMap<number, JobOutcome>, now: number): void {
    this.db.transaction(() => {
      for (const [id, o] of outcomes) {
        if (o.state === 'done') this.stmt.done.run({ id, now, digest: o.digest, diffId: o.diffId, revision: o.revision, bytes: o.bytes, ingestedBytes: o.ingestedBytes });
        else if (o.state === 'failed') this.stmt.failed.run({ id, now, code: o.code, reason: o.reason, digest: o.digest ?? null });
        else this.stmt.requeue.run({ id, code: o.code, reason: o.reason, notBefore: o.notBefore, count: o.countAttempt ? 1 : 0 });
      }
    })();
  }

  get(id: number): Job | undefined {
    const r = this.stmt.byId.get(id) as Row | undefined;
    return r && jobOf(r);
  }

  /** The newest job for an object key (any bucket): what `GET /status/<key>` reports. */
  latestForKey(key: string): Job | undefined {
    const r = this.stmt.latestForKey.get(key) as Row | undefined;
    return r && jobOf(r);
  }

  counts(): Record<JobState, number> {
    const out: Record<JobState, number> = { queued: 0, publishing: 0, done: 0, failed: 0 };
    for (const r of this.stmt.counts.all() as { state: JobState; n: number }[]) out[r.state] = r.n;
    return out;
  }

  /** When the earliest queued job is due (unix ms), or undefined with none queued. */
  nextDue(): number | undefined {
    const r = this.stmt.nextWake.get() as { t: number | null };
    return r.t ?? undefined;
  }

  close(): void { if (this.db.open) this.db.close(); }
}
