/**
 * Publisher errors (docs/style.md §3): each code has one kind; the HTTP edge maps kinds to status
 * codes once (`httpStatusOf`), never messages. A failed job keeps its error's message, led by the
 * code, as its reason (`GET /status/<key>` answers `failed: <reason>`).
 */
import { CodedError, type ErrorKind } from '../cvmfs/errors.js';

export type PublisherErrorCode =
  | 'PUB_USAGE'              // bad command line
  | 'PUB_BAD_EVENT'          // webhook body: not JSON, not a bucket notification, a bad field (named)
  | 'PUB_BAD_TOKEN'          // missing or wrong Authorization
  | 'PUB_NO_SUCH_ENDPOINT'   // an HTTP method and path the publisher does not answer
  | 'PUB_CANNOT_VERIFY'      // the object key names no sha256 (and --allow-unnamed is off)
  | 'PUB_OBJECT_NOT_FOUND'   // the object is not (or no longer) in the bucket
  | 'PUB_S3_FAILED'          // the S3 endpoint refused or failed (5xx, connection, bad answer)
  | 'PUB_S3_TIMEOUT'         // an S3 call did not settle in time
  | 'PUB_DIGEST_MISMATCH'    // the object's bytes do not hash to the digest its key names (R41)
  | 'PUB_TRUNCATED'          // the object ended before its Content-Length, or its stream ends early
  | 'PUB_BAD_LAYER'          // not a layer: corrupt gzip/zstd, corrupt tar, a tar our rules refuse
  | 'PUB_REPOSITORY_ERROR'   // the writer failed (lock, storage, keys)
  | 'PUB_STATE_UNSAFE'       // the state directory is a symlink, another user's, or group/other-accessible
  | 'PUB_STATE_FAILED'       // the job database failed
  | 'PUB_ABORTED'            // the publisher is shutting down; the job is resumed at the next start
  | 'PUB_INTERNAL';

const KIND_OF: Readonly<Record<PublisherErrorCode, ErrorKind>> = {
  PUB_USAGE: 'invalid-input',
  PUB_BAD_EVENT: 'invalid-input',
  PUB_BAD_TOKEN: 'unauthorized',
  PUB_NO_SUCH_ENDPOINT: 'not-found',
  PUB_CANNOT_VERIFY: 'invalid-input',
  PUB_OBJECT_NOT_FOUND: 'not-found',
  PUB_S3_FAILED: 'unavailable',
  PUB_S3_TIMEOUT: 'unavailable',
  PUB_DIGEST_MISMATCH: 'integrity',
  PUB_TRUNCATED: 'integrity',
  PUB_BAD_LAYER: 'invalid-input',
  PUB_REPOSITORY_ERROR: 'unavailable',
  PUB_STATE_UNSAFE: 'invalid-input',
  PUB_STATE_FAILED: 'unavailable',
  PUB_ABORTED: 'unavailable',
  PUB_INTERNAL: 'internal',
};

export class PublisherError extends CodedError<PublisherErrorCode> {
  override readonly name = 'PublisherError';
  constructor(code: PublisherErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, KIND_OF[code], message, options);
  }
}

export function isPublisherError(err: unknown, code?: PublisherErrorCode): err is PublisherError {
  return err instanceof PublisherError && (code === undefined || err.code === code);
}

/** The publisher's HTTP column of the table in docs/style.md §3. */
const HTTP_STATUS: Readonly<Record<ErrorKind, number>> = {
  'not-found': 404,
  exists: 409,
  'invalid-input': 400,
  unauthorized: 401,
  busy: 409,
  integrity: 502,
  unavailable: 503,
  internal: 500,
};

export function httpStatusOf(err: unknown): number {
  return err instanceof CodedError ? HTTP_STATUS[err.kind] : 500;
}

/**
 * Whether a job that failed with `err` is worth another try later: the store or the repository
 * was unavailable or busy. Verification and input failures are final.
 */
export function isRetryable(err: unknown): boolean {
  return err instanceof CodedError && (err.kind === 'unavailable' || err.kind === 'busy');
}
