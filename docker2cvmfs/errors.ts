/**
 * Converter errors (docs/style.md §3). Each code has one kind and one exit-code class; the CLI maps
 * classes to exit codes once (cli.ts), never messages.
 */
import { CodedError, type ErrorKind } from '../cvmfs/errors.js';

export type ConvertErrorCode =
  | 'D2C_USAGE'               // bad command line, bad reference syntax
  | 'D2C_RECIPE_INVALID'      // recipe YAML syntax or schema error (line and column named)
  | 'D2C_IMAGE_NOT_FOUND'     // unknown repository, tag or digest
  | 'D2C_PLATFORM_NOT_FOUND'  // index without the requested platform
  | 'D2C_AUTH_FAILED'         // credentials refused, token issuer failed
  | 'D2C_REGISTRY_ERROR'      // any other registry answer (5xx, bad JSON, too many 429)
  | 'D2C_REGISTRY_UNREACHABLE'
  | 'D2C_UNSUPPORTED_MEDIA_TYPE'
  | 'D2C_FOREIGN_LAYER'       // a foreign / non-distributable layer without --allow-foreign
  | 'D2C_DIGEST_MISMATCH'     // blob bytes do not match their digest (manifest, config or layer)
  | 'D2C_DIFFID_MISMATCH'     // uncompressed layer does not match rootfs.diff_ids
  | 'D2C_TRUNCATED'           // blob shorter than its descriptor's size, or stream ended early
  | 'D2C_BAD_IMAGE'           // manifest/config/archive structure invalid
  | 'D2C_BAD_THIN'            // a thin.json that fails the schema
  | 'D2C_REPOSITORY_ERROR'    // the writer failed (wraps a CvmfsError)
  | 'D2C_DOCKER_ERROR'        // --load: the local dockerd refused
  | 'D2C_IO_FAILED'
  | 'D2C_ABORTED'             // the caller's AbortSignal fired (a transfer was cancelled)
  | 'D2C_INTERNAL';

/** What the exit code tells a script. */
export type ExitClass = 'usage' | 'registry' | 'verification' | 'repository' | 'other';

export const EXIT_CODES: Readonly<Record<ExitClass, number>> = {
  other: 1, usage: 2, registry: 3, verification: 4, repository: 5,
};

const TABLE: Readonly<Record<ConvertErrorCode, readonly [ErrorKind, ExitClass]>> = {
  D2C_USAGE: ['invalid-input', 'usage'],
  D2C_RECIPE_INVALID: ['invalid-input', 'usage'],
  D2C_IMAGE_NOT_FOUND: ['not-found', 'registry'],
  D2C_PLATFORM_NOT_FOUND: ['not-found', 'registry'],
  D2C_AUTH_FAILED: ['unauthorized', 'registry'],
  D2C_REGISTRY_ERROR: ['unavailable', 'registry'],
  D2C_REGISTRY_UNREACHABLE: ['unavailable', 'registry'],
  D2C_UNSUPPORTED_MEDIA_TYPE: ['invalid-input', 'verification'],
  D2C_FOREIGN_LAYER: ['invalid-input', 'verification'],
  D2C_DIGEST_MISMATCH: ['integrity', 'verification'],
  D2C_DIFFID_MISMATCH: ['integrity', 'verification'],
  D2C_TRUNCATED: ['integrity', 'verification'],
  D2C_BAD_IMAGE: ['invalid-input', 'verification'],
  D2C_BAD_THIN: ['invalid-input', 'verification'],
  D2C_REPOSITORY_ERROR: ['unavailable', 'repository'],
  D2C_DOCKER_ERROR: ['unavailable', 'other'],
  D2C_IO_FAILED: ['unavailable', 'other'],
  D2C_ABORTED: ['unavailable', 'other'],
  D2C_INTERNAL: ['internal', 'other'],
};

export class ConvertError extends CodedError<ConvertErrorCode> {
  override readonly name = 'ConvertError';
  readonly exitClass: ExitClass;
  constructor(code: ConvertErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, TABLE[code][0], message, options);
    this.exitClass = TABLE[code][1];
  }
}

export function isConvertError(err: unknown, code?: ConvertErrorCode): err is ConvertError {
  return err instanceof ConvertError && (code === undefined || err.code === code);
}
