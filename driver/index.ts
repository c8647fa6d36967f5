export { GraphDriver, type InitRequest, type Logger } from './driver.js';
export { DriverError, type DriverErrorCode } from './errors.js';
export { escapeOverlayPath, overlayMountOf, type OverlayMount } from './overlay-options.js';
