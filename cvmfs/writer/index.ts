export * from './storage.js';
export { DirStorage } from './storage-dir.js';
export * from './keys.js';
export * from './repository.js';
export {
  transaction, TRANSACTION_FILE_MAX_BYTES, type Transaction, type TransactionOptions, type TransactionResult,
  type TransactionIngestResult, type FileMeta,
} from './transaction.js';
export { loadState, readObject, MANIFEST_FILE, WHITELIST_FILE, type RepositoryState } from './repository-state.js';
export { CHUNK_MIN_BYTES, CHUNK_AVG_BYTES, CHUNK_MAX_BYTES, CHUNKING_THRESHOLD_BYTES } from './chunker.js';
export { openStorage, type StorageSpec, type OpenedStorage } from './open-storage.js';
// S3Storage itself: import './storage-s3.js' (not re-exported here, so that importing the writer never loads the AWS SDK).
