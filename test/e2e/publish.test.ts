/**
 * Thin commits that publish, end to end with the real parts: s3rver (S3), the real publisher
 * writing the repository the plugin reads, Debian's docker-registry, and two dockerds on the
 * managed plugin: one configured to publish commits (`docker plugin set`), one plain with an empty
 * cache that pulls the committed image and runs it.
 */
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { S3ObjectStore, startPublisher, type Publisher } from '../../publisher/index.js';
import { dockerUnavailable, startManagedDaemon, type Daemon } from '../lib/dockerd.js';
import { registryBinary, startRegistry, type TestRegistry } from '../lib/registry.js';
import { S3RVER_CREDENTIALS, startS3, type S3Server } from '../lib/s3.js';
import { skipLoudly } from '../lib/skip.js';
import { publishPluginEnv, thinCommitTests } from './thin-commit.js';
import { prepareThinRepositories, type ThinRepositories } from './thin-images.js';
import { minioEvent, postEvent } from '../lib/publisher.js';

/**
 * What MinIO's bucket notification does (s3rver has none): every new object of the bucket is
 * POSTed to the publisher's webhook as MinIO's JSON, with the token.
 */
function notifyUploads(s3: S3Server, bucket: string, url: string, token: string): () => void {
  const seen = new Set<string>();
  let stopped = false;
  const tick = async (): Promise<void> => {
    while (!stopped) {
      const r = await s3.client.send(new ListObjectsV2Command({ Bucket: bucket })).catch(() => undefined);
      const fresh = (r?.Contents ?? []).filter((o) => o.Key && !seen.has(`${o.Key}@${o.ETag}`));
      for (const o of fresh) seen.add(`${o.Key}@${o.ETag}`);
      if (fresh.length) {
        await postEvent(url, minioEvent(bucket, fresh.map((o) => ({ key: o.Key!, etag: (o.ETag ?? '').replace(/"/g, ''), size: o.Size ?? 0 }))), token)
          .catch(() => {});
      }
      await new Promise((res) => setTimeout(res, 200));
    }
  };
  void tick();
  return () => { stopped = true; };
}

const why = dockerUnavailable() ?? (registryBinary() ? null : 'docker-registry is not installed');
if (why) {
  skipLoudly(t, `END-TO-END PUBLISHING TESTS SKIPPED: ${why}`);
} else {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-publish-'));
  const TOKEN = 'e2e-publisher-token';
  let repos: ThinRepositories | undefined, s3: S3Server | undefined, pub: Publisher | undefined, reg: TestRegistry | undefined;
  let d: Daemon | undefined, fresh: Daemon | undefined;
  let stopNotifier = (): void => {};
  const need = <T>(v: T | undefined, what: string): T => { if (v === undefined) throw new Error(`${what} did not start`); return v; };

  t.before(async () => {
    repos = await prepareThinRepositories(work);
    s3 = await startS3(['layers']);
    pub = await startPublisher({
      repoDir: repos.converted.dir, keysDir: repos.converted.keys, fqrn: repos.converted.fqrn, stateDir: path.join(work, 'publisher-state'),
      buckets: ['layers'], objects: new S3ObjectStore({ endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS }),
      token: TOKEN, port: 0, bind: '127.0.0.1', threads: 1,
    });
    stopNotifier = notifyUploads(s3, 'layers', pub.url, TOKEN);
    reg = await startRegistry('open');
    const base = { CVMFSGD_SERVER_URL: repos.serverUrl, CVMFSGD_LOG_LEVEL: 'debug' };
    d = await startManagedDaemon({
      configDir: repos.configDir,
      pluginEnv: { ...base, ...publishPluginEnv({ publisherUrl: pub.url, token: TOKEN, s3Endpoint: s3.endpoint, bucket: 'layers',
        accessKeyId: S3RVER_CREDENTIALS.accessKeyId, secretAccessKey: S3RVER_CREDENTIALS.secretAccessKey, deadlineSeconds: 120 }) },
    });
    fresh = await startManagedDaemon({ configDir: repos.configDir, pluginEnv: base });
  });
  t.teardown(async () => {
    stopNotifier();
    await d?.stop(); await fresh?.stop(); await pub?.close(); await reg?.close(); await s3?.close(); await repos?.close();
    fs.rmSync(work, { recursive: true, force: true });
  });

  thinCommitTests(t, () => need(d, 'the publishing daemon'), {
    fresh: () => need(fresh, 'the second daemon'), registry: () => need(reg, 'the registry').host, fqrn: 'converted.example.org',
  });
}
