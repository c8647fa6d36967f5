/**
 * The converter as a library, for the other producers of repository layers (the publisher):
 * the image model, the DUCC layout, verified layer streams and the conversion itself. Anything
 * not exported here is this folder's own.
 */
export * from './errors.js';
export * from './image.js';
export * from './layout.js';
export { verifiedLayer, type VerifiedLayer, type VerifiedLayerOptions, type LayerTotals } from './layer-stream.js';
export { convertImages, type ConvertJob, type ConvertOptions, type ConvertSummary, type ConvertEvent } from './convert.js';
export { makeThinJson, parseThinDescriptor, type ThinDescriptor } from './thin-image.js';
