/**
 * The publisher writing a repository kept in S3 (`--store s3://bucket/prefix`): uploads land in one
 * bucket, the repository lives in another of the same s3rver, and our client mounts the published
 * layer from the bucket's plain HTTP endpoint, as a Stratum 1 or a Squid in front of it would.
 */
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import t from 'tap';
import { initRepository } from '../../../cvmfs/index.js';
import { S3Storage } from '../../../cvmfs/writer/storage-s3.js';
import { S3ObjectStore, startPublisher } from '../../../publisher/index.js';
import { S3RVER_CREDENTIALS, startS3 } from '../../lib/s3.js';
import { tarOf } from '../../lib/tar-of.js';
import { client, minioEvent, postEvent, sha256, upload, waitFor } from '../../lib/publisher.js';

const FQRN = 's3.example.org';

t.test('the repository in a bucket: published through S3, read back from its HTTP endpoint', async (t) => {
  const base = t.testdir();
  const s3 = await startS3(['layers', 'repo']);
  t.teardown(() => s3.close());
  const keys = path.join(base, 'keys');
  const storage = new S3Storage({ bucket: 'repo', prefix: 'cvmfs/s3', endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS, lockDir: path.join(base, 'locks') });
  t.teardown(() => storage.close());
  await initRepository({ storage, keysDir: keys, fqrn: FQRN });
  const pub = await startPublisher({
    storage, keysDir: keys, fqrn: FQRN, stateDir: path.join(base, 'state'), buckets: ['layers'],
    objects: new S3ObjectStore({ endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS }), port: 0, bind: '127.0.0.1', threads: 1,
  });
  t.teardown(() => pub.close());
  const tar = await tarOf([{ type: 'file', name: 'hello', content: 'from a bucket\n' }]);
  const blob = gzipSync(tar);
  const digest = sha256(blob);
  const up = await upload(s3.client, 'layers', digest, blob);
  t.equal((await postEvent(pub.url, minioEvent('layers', [up]))).status, 200);
  const s = await waitFor(pub.url, digest, undefined);
  t.equal(s.state, 'done', `done (${s.reason ?? ''})`);
  t.equal(s.revision, 2);
  const r = await client(`${s3.endpoint}/repo/cvmfs/s3`, FQRN, keys, path.join(base, 'cache'));
  t.teardown(() => r.close());
  t.equal(r.revision, 2, 'the bucket serves the new revision');
  t.equal((await r.readFile(`/.layers/${digest.slice(0, 2)}/${digest}/layerfs/hello`)).toString(), 'from a bucket\n', 'byte for byte over HTTP from S3');
  t.notOk(fs.existsSync(path.join(base, 'repo')), 'nothing written locally but the state');
});
