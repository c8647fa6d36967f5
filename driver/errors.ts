/** Driver errors (docs/style.md §3): codes with one kind each; the plugin edge prefixes the code. */
import { CodedError, type ErrorKind } from '../cvmfs/errors.js';

export type DriverErrorCode =
  | 'DRIVER_NOT_INITIALIZED'
  | 'DRIVER_BAD_REQUEST'
  | 'DRIVER_LAYER_NOT_FOUND'
  | 'DRIVER_LAYER_EXISTS'
  | 'DRIVER_PARENT_NOT_FOUND'
  | 'DRIVER_LAYER_BUSY'
  | 'DRIVER_MOUNT_FAILED'
  | 'DRIVER_TAR_PATH_ESCAPE'
  | 'DRIVER_TAR_CORRUPT'
  | 'DRIVER_TAR_BAD_ENTRY'
  | 'DRIVER_TAR_BAD_WHITEOUT'
  | 'DRIVER_UPLOAD_ABORTED'
  | 'DRIVER_UPLOAD_STALLED'
  | 'DRIVER_LAYER_LIMIT'
  | 'DRIVER_INTERNAL'
  | 'DRIVER_UNSUPPORTED'
  | 'DRIVER_THIN_INVALID'
  | 'DRIVER_THIN_LAYER_MISSING'
  | 'DRIVER_REPOSITORY_UNCONFIGURED'
  | 'DRIVER_REPOSITORY_UNAVAILABLE'
  | 'DRIVER_IO_FAILED'
  | 'DRIVER_PUBLISH_CONFIG'
  | 'DRIVER_PUBLISH_FAILED'
  | 'DRIVER_PUBLISH_UNAUTHORIZED'
  | 'DRIVER_PUBLISH_TIMEOUT'
  | 'DRIVER_PUBLISH_ABORTED';

const KIND_OF: Readonly<Record<DriverErrorCode, ErrorKind>> = {
  DRIVER_NOT_INITIALIZED: 'internal',
  DRIVER_BAD_REQUEST: 'invalid-input',
  DRIVER_LAYER_NOT_FOUND: 'not-found',
  DRIVER_LAYER_EXISTS: 'exists',
  DRIVER_PARENT_NOT_FOUND: 'not-found',
  DRIVER_LAYER_BUSY: 'busy',
  DRIVER_MOUNT_FAILED: 'unavailable',
  DRIVER_TAR_PATH_ESCAPE: 'invalid-input',
  DRIVER_TAR_CORRUPT: 'invalid-input',
  DRIVER_TAR_BAD_ENTRY: 'invalid-input',
  DRIVER_TAR_BAD_WHITEOUT: 'invalid-input',
  DRIVER_UPLOAD_ABORTED: 'invalid-input',
  DRIVER_UPLOAD_STALLED: 'unavailable',
  DRIVER_LAYER_LIMIT: 'invalid-input',
  DRIVER_INTERNAL: 'internal',
  DRIVER_UNSUPPORTED: 'invalid-input',
  DRIVER_THIN_INVALID: 'invalid-input',
  DRIVER_THIN_LAYER_MISSING: 'not-found',
  DRIVER_REPOSITORY_UNCONFIGURED: 'invalid-input',
  DRIVER_REPOSITORY_UNAVAILABLE: 'unavailable',
  DRIVER_IO_FAILED: 'unavailable',
  DRIVER_PUBLISH_CONFIG: 'invalid-input',
  DRIVER_PUBLISH_FAILED: 'unavailable',
  DRIVER_PUBLISH_UNAUTHORIZED: 'unauthorized',
  DRIVER_PUBLISH_TIMEOUT: 'unavailable',
  DRIVER_PUBLISH_ABORTED: 'unavailable',
};

export class DriverError extends CodedError<DriverErrorCode> {
  override readonly name = 'DriverError';
  constructor(code: DriverErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, KIND_OF[code], message, options);
  }
}
