export { GraphDriver, type DriverOptions, type InitRequest, type Logger } from './driver.js';
export { IdMapping, type IdMap } from './id-map.js';
export type { RepositoryConfig } from './repo-mounts.js';
export { parseThin, type ThinDescriptor, type ThinLayer } from './thin.js';
export { DriverError, type DriverErrorCode } from './errors.js';
export { CodedError } from '../cvmfs/errors.js';
export { escapeOverlayPath, overlayMountOf, type OverlayMount } from './overlay-options.js';
