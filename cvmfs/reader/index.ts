export { openRepository, Repository, expandSymlinkVariables, type RepositoryOptions, type RepositoryCounters, type FileHandle, type Dirent } from './repository.js';
export { Fetcher, parseProxyList, type FetcherOptions } from './fetcher.js';
export { ObjectCache } from './cache.js';
