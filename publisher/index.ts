/** The publisher's public surface: the composition, its parts, and the error model. */
export * from './errors.js';
export { parseEvent, parseEventBody, isCreateEvent, decodeObjectKey, type EventRecord, WEBHOOK_BODY_MAX_BYTES, WEBHOOK_BATCH_MAX_RECORDS } from './events.js';
export { digestOfKey } from './layer-key.js';
export { JobStore, ensureStateDir, type Job, type JobState } from './jobs.js';
export { S3ObjectStore, s3ClientConfig, type ObjectStore, type StoredObject, type S3StoreOptions } from './object-store.js';
export { statusOf, statusText, type JobStatus } from './server.js';
export { startPublisher, defaultStateDir, type Publisher, type PublisherOptions } from './publisher.js';
