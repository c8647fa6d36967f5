/**
 * Error model shared by every folder (docs/style.md §3): each error has a stable `code`, and each
 * code belongs to exactly one `kind`. Edges (FUSE, HTTP, plugin, CLI) map kinds, never messages.
 */

export type ErrorKind =
  | 'not-found'
  | 'exists'
  | 'invalid-input'
  | 'unauthorized'
  | 'busy'
  | 'integrity'
  | 'unavailable'
  | 'internal';

export type CvmfsErrorCode =
  | 'CVMFS_BAD_ARGUMENT'
  | 'CVMFS_UNKNOWN_HASH_ALGORITHM'
  | 'CVMFS_BAD_HASH'
  | 'CVMFS_BAD_XATTR'
  | 'CVMFS_BAD_MANIFEST'
  | 'CVMFS_BAD_WHITELIST'
  | 'CVMFS_BAD_SIGNATURE'
  | 'CVMFS_WHITELIST_EXPIRED'
  | 'CVMFS_HASH_MISMATCH'
  | 'CVMFS_BAD_CATALOG'
  | 'CVMFS_KEYS_MISSING'
  | 'CVMFS_KEYS_MISMATCH'
  | 'CVMFS_KEYS_EXIST'
  | 'CVMFS_REPO_EXISTS'
  | 'CVMFS_REPO_NOT_FOUND'
  | 'CVMFS_REPO_LOCKED'
  | 'CVMFS_OBJECT_NOT_FOUND'
  | 'CVMFS_PATH_NOT_FOUND'
  | 'CVMFS_PATH_CONFLICT'
  | 'CVMFS_TAR_CORRUPT'
  | 'CVMFS_TAR_PATH_ESCAPE'
  | 'CVMFS_TAR_BAD_NAME'
  | 'CVMFS_TAR_NAME_TOO_LONG'
  | 'CVMFS_TAR_PATH_TOO_LONG'
  | 'CVMFS_TAR_HARDLINK_MISSING'
  | 'CVMFS_TAR_BAD_WHITEOUT'
  | 'CVMFS_TAR_BAD_OWNER'
  | 'CVMFS_TAR_UNSUPPORTED_ENTRY'
  | 'CVMFS_STORAGE_FAILED'
  | 'CVMFS_ALL_SERVERS_FAILED'
  | 'CVMFS_HTTP_ERROR'
  | 'CVMFS_CONNECTION_FAILED'
  | 'CVMFS_TRANSFER_TIMEOUT'
  | 'CVMFS_TRANSFER_TOO_SLOW'
  | 'CVMFS_TRANSFER_DEADLINE'
  | 'CVMFS_TRANSFER_TRUNCATED'
  | 'CVMFS_ABORTED'
  | 'CVMFS_NAME_MISMATCH'
  | 'CVMFS_UNTRUSTED_CERTIFICATE'
  | 'CVMFS_REVISION_ROLLBACK'
  | 'CVMFS_NOT_A_DIRECTORY'
  | 'CVMFS_NOT_A_FILE'
  | 'CVMFS_NOT_A_SYMLINK'
  | 'CVMFS_NO_XATTR'
  | 'CVMFS_CACHE_FAILED'
  | 'CVMFS_CACHE_UNSAFE'
  | 'CVMFS_CLOSED'
  | 'CVMFS_IO_FAILED'
  | 'CVMFS_INTERNAL';

const KIND_OF: Readonly<Record<CvmfsErrorCode, ErrorKind>> = {
  CVMFS_BAD_ARGUMENT: 'invalid-input',
  CVMFS_UNKNOWN_HASH_ALGORITHM: 'invalid-input',
  CVMFS_BAD_HASH: 'invalid-input',
  CVMFS_BAD_XATTR: 'invalid-input',
  CVMFS_BAD_MANIFEST: 'integrity',
  CVMFS_BAD_WHITELIST: 'integrity',
  CVMFS_BAD_SIGNATURE: 'integrity',
  CVMFS_WHITELIST_EXPIRED: 'integrity',
  CVMFS_HASH_MISMATCH: 'integrity',
  CVMFS_BAD_CATALOG: 'integrity',
  CVMFS_KEYS_MISSING: 'not-found',
  CVMFS_KEYS_MISMATCH: 'invalid-input',
  CVMFS_KEYS_EXIST: 'exists',
  CVMFS_REPO_EXISTS: 'exists',
  CVMFS_REPO_NOT_FOUND: 'not-found',
  CVMFS_REPO_LOCKED: 'busy',
  CVMFS_OBJECT_NOT_FOUND: 'not-found',
  CVMFS_PATH_NOT_FOUND: 'not-found',
  CVMFS_PATH_CONFLICT: 'invalid-input',
  CVMFS_TAR_CORRUPT: 'invalid-input',
  CVMFS_TAR_PATH_ESCAPE: 'invalid-input',
  CVMFS_TAR_BAD_NAME: 'invalid-input',
  CVMFS_TAR_NAME_TOO_LONG: 'invalid-input',
  CVMFS_TAR_PATH_TOO_LONG: 'invalid-input',
  CVMFS_TAR_HARDLINK_MISSING: 'invalid-input',
  CVMFS_TAR_BAD_WHITEOUT: 'invalid-input',
  CVMFS_TAR_BAD_OWNER: 'invalid-input',
  CVMFS_TAR_UNSUPPORTED_ENTRY: 'invalid-input',
  CVMFS_STORAGE_FAILED: 'unavailable',
  CVMFS_ALL_SERVERS_FAILED: 'unavailable',
  CVMFS_HTTP_ERROR: 'unavailable',
  CVMFS_CONNECTION_FAILED: 'unavailable',
  CVMFS_TRANSFER_TIMEOUT: 'unavailable',
  CVMFS_TRANSFER_TOO_SLOW: 'unavailable',
  CVMFS_TRANSFER_DEADLINE: 'unavailable',
  CVMFS_TRANSFER_TRUNCATED: 'unavailable',
  CVMFS_ABORTED: 'unavailable',
  CVMFS_NAME_MISMATCH: 'integrity',
  CVMFS_UNTRUSTED_CERTIFICATE: 'integrity',
  CVMFS_REVISION_ROLLBACK: 'integrity',
  CVMFS_NOT_A_DIRECTORY: 'invalid-input',
  CVMFS_NOT_A_FILE: 'invalid-input',
  CVMFS_NOT_A_SYMLINK: 'invalid-input',
  CVMFS_NO_XATTR: 'not-found',
  CVMFS_CACHE_FAILED: 'unavailable',
  CVMFS_CACHE_UNSAFE: 'invalid-input',
  CVMFS_CLOSED: 'unavailable',
  /** A system call failed outside the coded paths (e.g. a CLI input file): wraps the errno error. */
  CVMFS_IO_FAILED: 'unavailable',
  /** Anything else uncoded that reached an edge: a bug. */
  CVMFS_INTERNAL: 'internal',
};

/** Base of every folder's error class: a stable code, its kind, and a message led by the code. */
export abstract class CodedError<C extends string> extends Error {
  readonly code: C;
  readonly kind: ErrorKind;

  protected constructor(code: C, kind: ErrorKind, message: string, options?: { cause?: unknown }) {
    super(`${code}: ${message}`, options);
    this.code = code;
    this.kind = kind;
  }
}

export class CvmfsError extends CodedError<CvmfsErrorCode> {
  override readonly name = 'CvmfsError';

  constructor(code: CvmfsErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, KIND_OF[code], message, options);
  }
}

export function isCvmfsError(err: unknown, code?: CvmfsErrorCode): err is CvmfsError {
  return err instanceof CvmfsError && (code === undefined || err.code === code);
}

/** Message of any thrown value, for logs and CLI output. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
