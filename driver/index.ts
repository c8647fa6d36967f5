export { GraphDriver, type DriverOptions, type IdMap, type InitRequest, type Logger } from './driver.js';
export type { RepositoryConfig } from './repo-mounts.js';
export { parseThin, type ThinDescriptor, type ThinLayer } from './thin.js';
export { DriverError, type DriverErrorCode } from './errors.js';
export { escapeOverlayPath, overlayMountOf, type OverlayMount } from './overlay-options.js';
