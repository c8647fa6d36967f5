/**
 * Where a repository's served files live. The writer only ever adds content-addressed objects
 * (never replacing one) and replaces the top-level letters (`.cvmfswhitelist`, then
 * `.cvmfspublished` last) atomically. Implementations: storage-dir.ts (a local directory served
 * by any web server); storage-s3.ts (an S3 bucket under a prefix, whose HTTP endpoint is served; the
 * manifest is one PutObject issued after every upload was answered).
 */
export interface ObjectStats { readonly count: number; readonly bytes: number }

export interface WriterLock {
  /**
   * Fails with CVMFS_REPO_LOCKED unless this lock is still the one in place. Called right before
   * each letter is written, so a writer whose lock was taken over never publishes.
   */
  verify(): Promise<void>;
  /** Removes the lock if it is still this one (never another writer's). Idempotent. */
  release(): Promise<void>;
}

export interface RepositoryStorage {
  /** Human-readable location, for messages. */
  readonly location: string;
  /** The local directory that is served, when there is one (to keep private keys out of it). */
  readonly localDir?: string;
  /** Creates the skeleton (`data/00`…`data/ff`, staging area) where there is one; checks that the store exists. Idempotent. */
  init(): Promise<void>;
  /** Bytes of a served file (letter or `data/…` object), or undefined when absent. */
  get(name: string): Promise<Buffer | undefined>;
  /** Stores a content-addressed object unless one of that name exists. */
  putObject(objectPath: string, data: Uint8Array): Promise<'written' | 'present'>;
  /** Makes every object written so far durable; called before a letter that references them. */
  flush(): Promise<void>;
  /** Atomically replaces a top-level file such as `.cvmfspublished`. */
  putLetter(name: string, data: Uint8Array): Promise<void>;
  /** Takes the single-writer lock, or fails with CVMFS_REPO_LOCKED naming the holder. */
  lock(owner: string): Promise<WriterLock>;
  /** Removes leftovers of interrupted writes; called while holding the lock. */
  sweepStaging(): Promise<void>;
  objectStats(): Promise<ObjectStats>;
}
