import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import t, { type Test } from 'tap';
import { compress } from 'zstd-napi';
import { isConvertError, type ConvertErrorCode } from '../../../docker2cvmfs/errors.js';
import { MEDIA, type Descriptor } from '../../../docker2cvmfs/image.js';
import { verifiedLayer } from '../../../docker2cvmfs/layer-stream.js';
import { tarOf } from '../../lib/tar-of.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const desc = (blob: Buffer, mediaType: string, over: Partial<Descriptor> = {}): Descriptor => ({ mediaType, digest: sha(blob), size: blob.length, ...over });
/** Chunks of at most 64 KiB, like a file or socket. */
const blobStream = (b: Buffer) => Readable.from((function* () { for (let i = 0; i < b.length; i += 65536) yield b.subarray(i, i + 65536); })());

async function drain(r: Readable): Promise<{ bytes: Buffer; error?: unknown; ended: boolean }> {
  const parts: Buffer[] = [];
  let ended = false;
  try {
    for await (const c of r) parts.push(c as Buffer);
    ended = true;
    return { bytes: Buffer.concat(parts), ended };
  } catch (error) { return { bytes: Buffer.concat(parts), error, ended }; }
}

async function expectFailure(t: Test, blob: Buffer, d: Descriptor, diffId: string | undefined, code: ConvertErrorCode, mentions: string[]) {
  const { tar, done } = verifiedLayer(blobStream(blob), d, diffId);
  const r = await drain(tar);
  t.notOk(r.ended, `${code}: the consumer never sees a clean end`);
  t.ok(isConvertError(r.error, code), `${code} on the tar stream (got ${String((r.error as Error)?.message)})`);
  await t.rejects(done, { code }, `${code}: done rejects`);
  for (const m of mentions) t.match((r.error as Error).message, m, `message names ${m.slice(0, 19)}…`);
}

const layerTar = await tarOf([{ type: 'directory', name: 'etc' }, { type: 'file', name: 'etc/hosts', content: '127.0.0.1 localhost\n' },
  { type: 'file', name: 'big', content: randomBytes(300_000) }]);
const diffId = sha(layerTar);
const gz = gzipSync(layerTar);
const zst = Buffer.from(compress(layerTar));

t.test('gzip, zstd and uncompressed layers verify and yield the tar', async (t) => {
  for (const [mt, blob] of [[MEDIA.dockerLayerGzip, gz], [MEDIA.ociLayerGzip, gz], [MEDIA.ociLayerZstd, zst], [MEDIA.dockerLayerZstd, zst],
    [MEDIA.ociLayer, layerTar], [MEDIA.dockerLayer, layerTar], [MEDIA.dockerLayerForeign, gz]] as const) {
    const seen: number[] = [];
    const { tar, done } = verifiedLayer(blobStream(blob), desc(blob, mt), diffId, { onProgress: (n) => seen.push(n) });
    const r = await drain(tar);
    t.ok(r.ended, `${mt}: clean end`);
    t.ok(r.bytes.equals(layerTar), `${mt}: the uncompressed tar`);
    t.same(await done, { compressedBytes: blob.length, uncompressedBytes: layerTar.length }, `${mt}: totals`);
    t.equal(seen[seen.length - 1], blob.length, `${mt}: progress reaches the blob size`);
  }
});

t.test('digest-mismatch: blob bytes differ from the descriptor digest', async (t) => {
  const corrupted = Buffer.from(layerTar); corrupted[700] = corrupted[700]! ^ 1;
  await expectFailure(t, corrupted, desc(layerTar, MEDIA.ociLayer), diffId, 'D2C_DIGEST_MISMATCH', [sha(layerTar)]);
});

t.test('truncated: the blob is shorter than its descriptor size', async (t) => {
  await expectFailure(t, gz.subarray(0, gz.length - 100), desc(gz, MEDIA.ociLayerGzip), diffId, 'D2C_TRUNCATED', [sha(gz), `${gz.length}`]);
});

t.test('oversized: more bytes than the descriptor size is a digest mismatch', async (t) => {
  await expectFailure(t, Buffer.concat([layerTar, Buffer.alloc(512)]), desc(layerTar, MEDIA.ociLayer), diffId, 'D2C_DIGEST_MISMATCH', [sha(layerTar)]);
});

t.test('diffid-mismatch: names the layer digest and both diffIDs', async (t) => {
  const wrong = sha(Buffer.from('another layer'));
  await expectFailure(t, gz, desc(gz, MEDIA.dockerLayerGzip), wrong, 'D2C_DIFFID_MISMATCH', [sha(gz), wrong, diffId]);
});

t.test('corrupt-gzip: a bad deflate stream whose digest matches its (lying) descriptor', async (t) => {
  const bad = Buffer.from(gz); for (let i = 20; i < 200; i++) bad[i] = 0xff;
  await expectFailure(t, bad, desc(bad, MEDIA.ociLayerGzip), diffId, 'D2C_BAD_IMAGE', [sha(bad)]);
});

t.test('truncated-gzip: a gzip stream cut short (descriptor made for the short blob)', async (t) => {
  const short = gz.subarray(0, gz.length - 2000);
  const { tar, done } = verifiedLayer(blobStream(short), desc(short, MEDIA.ociLayerGzip), diffId);
  const r = await drain(tar);
  t.notOk(r.ended);
  t.ok(isConvertError(r.error, 'D2C_TRUNCATED') || isConvertError(r.error, 'D2C_BAD_IMAGE'), String((r.error as Error).message));
  await t.rejects(done);
});

t.test('corrupt-zstd: garbage after the zstd magic', async (t) => {
  const bad = Buffer.concat([zst.subarray(0, 4), randomBytes(5000)]);
  const { tar, done } = verifiedLayer(blobStream(bad), desc(bad, MEDIA.ociLayerZstd), diffId);
  const r = await drain(tar);
  t.notOk(r.ended);
  t.ok(isConvertError(r.error, 'D2C_BAD_IMAGE') || isConvertError(r.error, 'D2C_TRUNCATED') || isConvertError(r.error, 'D2C_DIFFID_MISMATCH'),
    `coded error: ${String((r.error as Error).message)}`);
  await t.rejects(done);
});

t.test('media-type-mismatch: content magic must agree with the media type', async (t) => {
  await expectFailure(t, zst, desc(zst, MEDIA.ociLayerGzip), diffId, 'D2C_UNSUPPORTED_MEDIA_TYPE', [sha(zst), 'zstd']);
  await expectFailure(t, layerTar, desc(layerTar, MEDIA.dockerLayerGzip), diffId, 'D2C_UNSUPPORTED_MEDIA_TYPE', ['not compressed']);
  await expectFailure(t, gz, desc(gz, MEDIA.ociLayer), diffId, 'D2C_UNSUPPORTED_MEDIA_TYPE', ['gzip']);
  await expectFailure(t, gz, desc(gz, MEDIA.dockerLayer), diffId, 'D2C_UNSUPPORTED_MEDIA_TYPE', ['gzip']);
  await expectFailure(t, Buffer.alloc(0), desc(Buffer.alloc(0), MEDIA.ociLayerGzip), sha(Buffer.alloc(0)), 'D2C_UNSUPPORTED_MEDIA_TYPE', ['too short']);
});

t.test('unknown media type', async (t) => {
  const { tar, done } = verifiedLayer(blobStream(gz), desc(gz, 'application/x-bogus'), diffId);
  const r = await drain(tar);
  t.ok(isConvertError(r.error, 'D2C_UNSUPPORTED_MEDIA_TYPE'));
  t.match((r.error as Error).message, 'application/x-bogus');
  await t.rejects(done, { code: 'D2C_UNSUPPORTED_MEDIA_TYPE' });
});

t.test('the end is held back until the blob is verified (a consumer seeing end knows it is good)', async (t) => {
  // Only the blob's last byte is wrong: tar bytes flow, but the stream ends in an error, not an end.
  const plain = Buffer.from(layerTar); plain[plain.length - 1] = 1; // last zero block byte
  const { tar, done } = verifiedLayer(blobStream(plain), desc(layerTar, MEDIA.ociLayer), diffId);
  const r = await drain(tar);
  t.ok(r.bytes.length > 0, 'tar bytes flowed before the verdict');
  t.notOk(r.ended, 'but no clean end');
  t.ok(isConvertError(r.error, 'D2C_DIGEST_MISMATCH'));
  await t.rejects(done);
});

t.test('a consumer that only awaits done does not crash the process', async (t) => {
  const { done } = verifiedLayer(blobStream(gz), desc(gz, 'application/x-bogus'), diffId);
  await t.rejects(done, { code: 'D2C_UNSUPPORTED_MEDIA_TYPE' });
});

t.test('abort: the signal fails the layer and stops the blob', async (t) => {
  const ac = new AbortController();
  let pulled = 0;
  const endless = new Readable({ read() { pulled++; this.push(randomBytes(65536)); } });
  const { tar, done } = verifiedLayer(endless, { mediaType: MEDIA.ociLayer, digest: diffId, size: 2 ** 40 }, diffId, { signal: ac.signal });
  tar.once('data', () => ac.abort());
  const r = await drain(tar);
  t.ok(isConvertError(r.error, 'D2C_IO_FAILED'), String((r.error as Error)?.message));
  await t.rejects(done, { code: 'D2C_IO_FAILED' });
  t.ok(endless.destroyed, 'the blob stream is destroyed');
  t.ok(pulled > 0);
});

t.test('backpressure: a paused consumer stops the blob from being read', async (t) => {
  let pulled = 0;
  const total = 256 * 65536;
  const src = new Readable({ read() { if (pulled >= total) { this.push(null); return; } pulled += 65536; this.push(Buffer.alloc(65536)); } });
  const { tar } = verifiedLayer(src, { mediaType: MEDIA.ociLayer, digest: diffId, size: total }, diffId);
  tar.pause();
  tar.once('readable', () => {});
  await new Promise((r) => setTimeout(r, 200));
  t.ok(pulled < 2 * 1024 * 1024, `only ${pulled} of ${total} bytes were pulled while nobody reads`);
  tar.destroy();
});

t.test('no diffID given: the digest is still verified and the diffID is computed and returned', async (t) => {
  for (const [mt, blob] of [[MEDIA.ociLayerGzip, gz], [MEDIA.ociLayerZstd, zst], [MEDIA.ociLayer, layerTar]] as const) {
    const { tar, done } = verifiedLayer(blobStream(blob), desc(blob, mt), undefined);
    const r = await drain(tar);
    t.ok(r.ended && r.bytes.equals(layerTar), `${mt}: the tar`);
    t.same(await done, { compressedBytes: blob.length, uncompressedBytes: layerTar.length, diffId }, `${mt}: totals with the computed diffID`);
  }
  const corrupted = Buffer.from(gz); corrupted[gz.length - 9] = corrupted[gz.length - 9]! ^ 1;
  await expectFailure(t, corrupted, desc(gz, MEDIA.ociLayerGzip), undefined, 'D2C_DIGEST_MISMATCH', [sha(gz)]);
});
