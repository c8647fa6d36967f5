export { openRepository, Repository, expandSymlinkVariables, type RepositoryOptions, type RepositoryCounters, type FileHandle, type Dirent, type AccessRecorder } from './repository.js';
export { DEFAULT_PREFETCH_LIMITS, DEFAULT_SIBLING_PREFETCH, type PrefetchLimits, type PrefetchReport, type SiblingPrefetch } from './prefetch.js';
export { Fetcher, parseProxyList, type FetcherOptions } from './fetcher.js';
export { ObjectCache } from './cache.js';
