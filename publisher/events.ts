/**
 * S3 bucket notifications as MinIO's webhook target POSTs them (thin-images-and-layout.md §7.3):
 * `{EventName | EventType, Key, Records: [...]}`. Current MinIO names the top-level event
 * `EventName`, 2017 releases `EventType`; both are read, and every record is (R42), not only the
 * first. Record keys are URL-encoded as S3 notifications encode them (`+` for a space, `%XX`) and
 * come out decoded. A body without `Records` but with `Key` (`<bucket>/<object key>`, already
 * decoded by MinIO) and an event name gives one record.
 *
 * Pure: bytes in, records out; anything malformed is PUB_BAD_EVENT naming the field.
 */
import { PublisherError } from './errors.js';

/** Largest webhook body accepted (MinIO sends one record per request; AWS-style batches are small). */
export const WEBHOOK_BODY_MAX_BYTES = 1024 * 1024;
/** Most records one notification may carry. */
export const WEBHOOK_BATCH_MAX_RECORDS = 1000;
/** Longest object key S3 allows, in bytes. */
export const OBJECT_KEY_MAX_BYTES = 1024;

export interface EventRecord {
  readonly bucket: string;
  /** Decoded object key. */
  readonly key: string;
  /** As sent, e.g. `s3:ObjectCreated:Put`. */
  readonly eventName: string;
  /** ETag without quotes; '' when the event carries none. */
  readonly etag: string;
  /** Object size in bytes when the event says it. */
  readonly size: number | undefined;
}

/** `s3:ObjectCreated:*` (MinIO, with the `s3:` prefix) and `ObjectCreated:*` (AWS). */
export function isCreateEvent(eventName: string): boolean {
  return /^(s3:)?ObjectCreated:/.test(eventName);
}

const bad = (what: string): PublisherError => new PublisherError('PUB_BAD_EVENT', what);

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function stringAt(o: Record<string, unknown>, field: string, where: string, required: true): string;
function stringAt(o: Record<string, unknown>, field: string, where: string, required: false): string | undefined;
function stringAt(o: Record<string, unknown>, field: string, where: string, required: boolean): string | undefined {
  const v = o[field];
  if (v === undefined || v === null) {
    if (required) throw bad(`${where}.${field} is missing`);
    return undefined;
  }
  if (typeof v !== 'string') throw bad(`${where}.${field} must be a string, not ${typeof v}`);
  return v;
}

function checkKey(key: string, where: string): string {
  if (key === '') throw bad(`${where} is empty`);
  if (key.includes('\0')) throw bad(`${where} contains a NUL byte`);
  if (Buffer.byteLength(key) > OBJECT_KEY_MAX_BYTES) throw bad(`${where} is longer than ${OBJECT_KEY_MAX_BYTES} bytes`);
  return key;
}

/** S3 notification key encoding: form-style, `+` is a space. */
export function decodeObjectKey(encoded: string, where = 'key'): string {
  let key: string;
  try { key = decodeURIComponent(encoded.replace(/\+/g, ' ')); } catch {
    throw bad(`${where} "${encoded.slice(0, 80)}" is not URL-encoded correctly`);
  }
  return checkKey(key, where);
}

const unquote = (etag: string): string => etag.replace(/^"(.*)"$/, '$1');

function recordOf(r: unknown, i: number, fallbackName: string | undefined): EventRecord {
  const where = `Records[${i}]`;
  if (!isObject(r)) throw bad(`${where} must be an object`);
  const eventName = stringAt(r, 'eventName', where, false) ?? fallbackName;
  if (eventName === undefined) throw bad(`${where}.eventName is missing (and the body has no EventName or EventType)`);
  const s3 = r['s3'];
  if (!isObject(s3)) throw bad(`${where}.s3 must be an object`);
  const bucket = s3['bucket'];
  if (!isObject(bucket)) throw bad(`${where}.s3.bucket must be an object`);
  const object = s3['object'];
  if (!isObject(object)) throw bad(`${where}.s3.object must be an object`);
  const bucketName = stringAt(bucket, 'name', `${where}.s3.bucket`, true);
  if (bucketName === '') throw bad(`${where}.s3.bucket.name is empty`);
  const key = decodeObjectKey(stringAt(object, 'key', `${where}.s3.object`, true), `${where}.s3.object.key`);
  const etag = stringAt(object, 'eTag', `${where}.s3.object`, false) ?? stringAt(object, 'etag', `${where}.s3.object`, false) ?? '';
  const size = object['size'];
  if (size !== undefined && size !== null && (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)) {
    throw bad(`${where}.s3.object.size must be a whole number of bytes`);
  }
  return { bucket: bucketName, key, eventName, etag: unquote(etag), size: typeof size === 'number' ? size : undefined };
}

/** Every record of one notification body (already parsed JSON). */
export function parseEvent(body: unknown): EventRecord[] {
  if (!isObject(body)) throw bad('the body must be a JSON object (a MinIO bucket notification)');
  const topName = stringAt(body, 'EventName', 'body', false) ?? stringAt(body, 'EventType', 'body', false);
  const records = body['Records'];
  if (records === undefined || records === null) {
    const key = stringAt(body, 'Key', 'body', false);
    if (key === undefined || topName === undefined) throw bad('the body has no Records (and no Key with EventName or EventType)');
    const slash = key.indexOf('/');
    if (slash <= 0 || slash === key.length - 1) throw bad(`body.Key "${key.slice(0, 80)}" is not <bucket>/<object key>`);
    return [{ bucket: key.slice(0, slash), key: checkKey(key.slice(slash + 1), 'body.Key'), eventName: topName, etag: '', size: undefined }];
  }
  if (!Array.isArray(records)) throw bad('body.Records must be an array');
  if (records.length > WEBHOOK_BATCH_MAX_RECORDS) throw bad(`body.Records has ${records.length} records; at most ${WEBHOOK_BATCH_MAX_RECORDS}`);
  return records.map((r: unknown, i) => recordOf(r, i, topName));
}

/** parseEvent of a raw body: JSON syntax errors are PUB_BAD_EVENT too. */
export function parseEventBody(raw: Buffer | string): EventRecord[] {
  const text = typeof raw === 'string' ? raw : raw.toString('utf8');
  if (Buffer.byteLength(text) > WEBHOOK_BODY_MAX_BYTES) throw bad(`the body is larger than ${WEBHOOK_BODY_MAX_BYTES} bytes`);
  let doc: unknown;
  try { doc = JSON.parse(text); } catch (err) {
    throw bad(`the body is not JSON (${(err as Error).message})`);
  }
  return parseEvent(doc);
}
