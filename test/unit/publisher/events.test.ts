/** MinIO webhook bodies → records: both payload generations, every record, decoded keys, bad input coded. */
import t, { type Test } from 'tap';
import { isPublisherError } from '../../../publisher/errors.js';
import { decodeObjectKey, isCreateEvent, parseEvent, parseEventBody, WEBHOOK_BATCH_MAX_RECORDS, WEBHOOK_BODY_MAX_BYTES } from '../../../publisher/events.js';

const hex = '9f2c'.padEnd(64, 'a');

/** One record as MinIO writes it (thin-images-and-layout.md §7.3). */
function record(key: string, eventName = 's3:ObjectCreated:Put', bucket = 'layers', extra: Record<string, unknown> = {}) {
  return {
    eventVersion: '2.0', eventSource: 'minio:s3', awsRegion: '', eventTime: '2024-09-04T09:22:31.000Z', eventName,
    userIdentity: { principalId: 'minioadmin' }, requestParameters: { sourceIPAddress: '127.0.0.1' }, responseElements: { 'x-amz-request-id': '17F0' },
    s3: {
      s3SchemaVersion: '1.0', configurationId: 'Config',
      bucket: { name: bucket, ownerIdentity: { principalId: 'minioadmin' }, arn: `arn:aws:s3:::${bucket}` },
      object: { key, size: 31457280, eTag: '"d41d8cd98f00b204e9800998ecf8427e"', contentType: 'application/x-gzip', sequencer: '17F0', ...extra },
    },
    source: { host: '127.0.0.1', port: '', userAgent: 'MinIO (linux; amd64) minio-go/v7' },
  };
}

const expectBad = (t: Test, fn: () => unknown, mention: string) => {
  try { fn(); t.fail(`should fail: ${mention}`); } catch (err) {
    t.ok(isPublisherError(err, 'PUB_BAD_EVENT'), `PUB_BAD_EVENT (${(err as Error).message})`);
    t.match((err as Error).message, mention);
  }
};

t.test('current MinIO payload (EventName): the record, key decoded, ETag unquoted, size', async (t) => {
  const recs = parseEvent({ EventName: 's3:ObjectCreated:Put', Key: `layers/${hex}`, Records: [record(hex)] });
  t.same(recs, [{ bucket: 'layers', key: hex, eventName: 's3:ObjectCreated:Put', etag: 'd41d8cd98f00b204e9800998ecf8427e', size: 31457280 }]);
});

t.test('2017 MinIO payload (EventType), records without eventName take the top-level name', async (t) => {
  const r = record(hex) as Record<string, unknown>;
  delete r['eventName'];
  const recs = parseEvent({ EventType: 's3:ObjectCreated:Put', Key: `layers/${hex}`, Records: [r] });
  t.equal(recs.length, 1);
  t.equal(recs[0]!.eventName, 's3:ObjectCreated:Put');
});

t.test('every record, not only the first (R42)', async (t) => {
  const recs = parseEvent({ EventName: 's3:ObjectCreated:Put', Records: [record('a'), record('b', 's3:ObjectRemoved:Delete'), record('c', 'ObjectCreated:CompleteMultipartUpload', 'other')] });
  t.same(recs.map((r) => [r.bucket, r.key, r.eventName]), [['layers', 'a', 's3:ObjectCreated:Put'], ['layers', 'b', 's3:ObjectRemoved:Delete'], ['other', 'c', 'ObjectCreated:CompleteMultipartUpload']]);
});

t.test('keys are URL-decoded: + is a space, %XX, UTF-8', async (t) => {
  const recs = parseEvent({ Records: [record('dir%2Fsub/my+layer%20v1%2Btag.tar.gz'), record('caf%C3%A9')] });
  t.equal(recs[0]!.key, 'dir/sub/my layer v1+tag.tar.gz');
  t.equal(recs[1]!.key, 'café');
  t.equal(decodeObjectKey('sha256%3A' + hex), `sha256:${hex}`);
  expectBad(t, () => decodeObjectKey('bad%zz'), 'not URL-encoded');
  expectBad(t, () => parseEvent({ Records: [record('a%00b')] }), 'NUL');
});

t.test('create events and the others', async (t) => {
  for (const n of ['s3:ObjectCreated:Put', 's3:ObjectCreated:Post', 's3:ObjectCreated:Copy', 's3:ObjectCreated:CompleteMultipartUpload', 'ObjectCreated:Put']) t.ok(isCreateEvent(n), n);
  for (const n of ['s3:ObjectRemoved:Delete', 's3:ObjectAccessed:Get', 's3:ObjectRemoved:DeleteMarkerCreated', 'xs3:ObjectCreated:Put', '']) t.notOk(isCreateEvent(n), n || '(empty)');
});

t.test('a body without Records: Key and the event name give one record', async (t) => {
  t.same(parseEvent({ EventName: 's3:ObjectCreated:Put', Key: `layers/dir/${hex}` }),
    [{ bucket: 'layers', key: `dir/${hex}`, eventName: 's3:ObjectCreated:Put', etag: '', size: undefined }]);
  t.same(parseEvent({ EventName: 's3:ObjectCreated:Put', Records: [] }), [], 'no records, nothing to do');
});

t.test('malformed bodies are PUB_BAD_EVENT naming what is wrong', async (t) => {
  const tt = t;
  expectBad(tt, () => parseEventBody('{"Records": ['), 'not JSON');
  expectBad(tt, () => parseEventBody(''), 'not JSON');
  expectBad(tt, () => parseEventBody('[1,2]'), 'JSON object');
  expectBad(tt, () => parseEventBody('null'), 'JSON object');
  expectBad(tt, () => parseEvent({ EventName: 'x' }), 'no Records');
  expectBad(tt, () => parseEvent({ EventName: 's3:ObjectCreated:Put', Key: 'nobucket' }), 'not <bucket>/<object key>');
  expectBad(tt, () => parseEvent({ Records: {} }), 'Records must be an array');
  expectBad(tt, () => parseEvent({ Records: [42] }), 'Records[0] must be an object');
  const noName = record('a') as Record<string, unknown>; delete noName['eventName'];
  expectBad(tt, () => parseEvent({ Records: [noName] }), 'Records[0].eventName is missing');
  expectBad(tt, () => parseEvent({ Records: [record('a'), { ...record('b'), s3: { bucket: { name: 'layers' } } }] }), 'Records[1].s3.object must be an object');
  expectBad(tt, () => parseEvent({ Records: [{ ...record('a'), s3: { bucket: { name: 'layers' }, object: { key: 7 } } }] }), 'Records[0].s3.object.key must be a string');
  expectBad(tt, () => parseEvent({ Records: [{ ...record('a'), s3: { bucket: { name: 'layers' }, object: {} } }] }), 'Records[0].s3.object.key is missing');
  expectBad(tt, () => parseEvent({ Records: [record('')] }), 'is empty');
  expectBad(tt, () => parseEvent({ Records: [record('a', undefined, '')] }), 'bucket.name is empty');
  expectBad(tt, () => parseEvent({ Records: [record('a', undefined, 'layers', { size: -1 })] }), 'size must be a whole number');
  expectBad(tt, () => parseEvent({ Records: [record('x'.repeat(1025))] }), 'longer than 1024 bytes');
  expectBad(tt, () => parseEvent({ Records: Array.from({ length: WEBHOOK_BATCH_MAX_RECORDS + 1 }, () => record('a')) }), `at most ${WEBHOOK_BATCH_MAX_RECORDS}`);
  expectBad(tt, () => parseEventBody(' '.repeat(WEBHOOK_BODY_MAX_BYTES + 1)), 'larger than');
});
