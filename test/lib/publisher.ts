/** What the publisher tests share: MinIO's webhook as MinIO posts it, uploads, polling, our client. */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { openRepository, type Repository } from '../../cvmfs/index.js';
import type { JobStatus } from '../../publisher/index.js';

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A MinIO notification body (current generation, or the 2017 one with EventType), one record per key. */
export function minioEvent(bucket: string, objects: readonly { key: string; etag?: string; size?: number }[],
  o: { eventName?: string; generation?: 2017 | 'current' } = {}): string {
  const eventName = o.eventName ?? 's3:ObjectCreated:Put';
  const records = objects.map((x) => ({
    eventVersion: '2.0', eventSource: 'minio:s3', awsRegion: '', eventTime: new Date().toISOString(), eventName,
    userIdentity: { principalId: 'minioadmin' }, requestParameters: { principalId: 'minioadmin', region: '', sourceIPAddress: '127.0.0.1' },
    responseElements: { 'x-amz-request-id': '17F0A1B2C3D4E5F6', 'x-minio-origin-endpoint': 'http://127.0.0.1:9000' },
    s3: {
      s3SchemaVersion: '1.0', configurationId: 'Config',
      bucket: { name: bucket, ownerIdentity: { principalId: 'minioadmin' }, arn: `arn:aws:s3:::${bucket}` },
      // S3 notifications URL-encode the key (form style).
      object: { key: encodeURIComponent(x.key).replace(/%20/g, '+'), size: x.size ?? 0, eTag: x.etag ?? '', contentType: 'application/x-gzip',
        userMetadata: { 'content-type': 'application/x-gzip' }, sequencer: '17F0A1B2C3D4E5F6' },
    },
    source: { host: '127.0.0.1', port: '', userAgent: 'MinIO (linux; amd64) minio-go/v7.0.70' },
  }));
  const top = o.generation === 2017 ? { EventType: eventName } : { EventName: eventName };
  return JSON.stringify({ ...top, Key: `${bucket}/${objects[0]?.key ?? ''}`, Records: records });
}

/** POSTs as MinIO's webhook target does: JSON, its User-Agent, the token as a Bearer. */
export async function postEvent(url: string, body: string, token?: string, pathName = '/events'): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${url}${pathName}`, {
    method: 'POST', body,
    headers: { 'Content-Type': 'application/json', 'User-Agent': 'MinIO (linux; amd64) minio-go/v7.0.70', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
  });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try { json = JSON.parse(text) as Record<string, unknown>; } catch { json = { text }; }
  return { status: res.status, json };
}

export async function upload(client: S3Client, bucket: string, key: string, body: Buffer): Promise<{ key: string; etag: string; size: number }> {
  const r = await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: 'application/x-gzip' }));
  return { key, etag: (r.ETag ?? '').replace(/"/g, ''), size: body.length };
}

export async function statusText(url: string, key: string, token?: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`${url}/status/${key.split('/').map(encodeURIComponent).join('/')}`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  return { status: res.status, text: await res.text() };
}

export async function statusJson(url: string, key: string, token?: string): Promise<JobStatus> {
  const res = await fetch(`${url}/status/${key.split('/').map(encodeURIComponent).join('/')}?format=json`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (res.status !== 200) throw new Error(`status ${key}: HTTP ${res.status} ${await res.text()}`);
  return await res.json() as JobStatus;
}

/** Polls until the job is done or failed (or `until` matches), as the plugin will. */
export async function waitFor(url: string, key: string, token: string | undefined, until: (s: JobStatus) => boolean = (s) => s.state === 'done' || s.state === 'failed',
  timeoutMs = 60_000): Promise<JobStatus> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const s = await statusJson(url, key, token).catch(() => undefined);
    if (s && until(s)) return s;
    if (Date.now() > end) throw new Error(`${key}: still ${JSON.stringify(s)} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Our client on a served repository, with a cache of its own. */
export async function client(serverUrl: string, fqrn: string, keysDir: string, cacheDir: string): Promise<Repository> {
  return openRepository({
    fqrn, servers: [serverUrl], cacheDir,
    publicKeys: [{ name: `${fqrn}.pub`, pem: fs.readFileSync(path.join(keysDir, `${fqrn}.pub`), 'utf8') }],
    timeoutMs: 5000, maxRetries: 1, backoffInitMs: 10,
  });
}
