export * from './entry-rules.js';
export { installPaxDecoder, paxBytes, paxString } from './pax.js';
export { EndMarkerTap, refuseEntriesAfterEndMarker } from './end-marker.js';
