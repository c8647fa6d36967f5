/** The Registry v2 client: the public surface of docker2cvmfs/registry/ (re-exports only). */
export * from './client.js';
export * from './credentials.js';
// Platforms moved to docker2cvmfs/platform.ts (shared with the sources); re-exported for importers.
export * from '../platform.js';
export { parseWwwAuthenticate, repositoryScope, type Challenge } from './auth.js';
export type { FetchFn } from './http.js';
