export { GraphDriver, type DriverOptions, type ExportOptions, type InitRequest, type Logger } from './driver.js';
export { LayerPublisher, spoolLayer, DEFAULT_PUBLISH_DEADLINE_MS, type PublishSettings, type PublishedLayer, type SpooledLayer } from './publish.js';
export { IdMapping, type IdMap } from './id-map.js';
export type { RepositoryConfig } from './repo-mounts.js';
export { appendedThinJson, parseThin, thinSchemaErrors, type ThinDescriptor, type ThinLayer } from './thin.js';
export { DriverError, type DriverErrorCode } from './errors.js';
export { CodedError } from '../cvmfs/errors.js';
export { escapeOverlayPath, overlayMountOf, type OverlayMount } from './overlay-options.js';
