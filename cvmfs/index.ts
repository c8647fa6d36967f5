export * from './errors.js';
export * from './format/index.js';
export * from './writer/index.js';
export * from './reader/index.js';
export { serveRepository, type RepositoryServer, type ServeOptions } from './server/http-server.js';
export { tuneMallocForWriter, WRITER_MMAP_THRESHOLD_BYTES } from './malloc-tune.js';
