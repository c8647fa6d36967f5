/**
 * An S3 endpoint for tests: s3rver (an npm package, in-process) on 127.0.0.1, a port of its own
 * and a temporary directory, silent. It serves objects anonymously over plain HTTP at
 * `${endpoint}/<bucket>/<key>`, so a bucket is also a stratum 0 for HTTP clients.
 */
import fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';

/** The credentials s3rver accepts (it checks signatures against these). */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;
export const S3RVER_REGION = 'us-east-1';

/** The part of s3rver's (untyped, CommonJS) API used here. */
interface S3rverInstance { run(): Promise<AddressInfo>; close(): Promise<void> }
type S3rverClass = new (options: {
  address: string; port: number; silent: boolean; directory: string; resetOnClose?: boolean;
  configureBuckets?: { name: string }[];
}) => S3rverInstance;
// The SDK warns on every Node below 22 about its own future releases; this project supports Node 20.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const S3rver = createRequire(import.meta.url)('s3rver') as S3rverClass;

export interface S3Server {
  /** e.g. http://127.0.0.1:41234 */
  readonly endpoint: string;
  readonly port: number;
  /** Where s3rver keeps the buckets (one directory per bucket). */
  readonly directory: string;
  /** A client configured as the writer configures its own (path style, checksums only when required). */
  readonly client: S3Client;
  /** The environment a child process needs to reach the server through the SDK's default chain. */
  readonly env: Readonly<Record<string, string>>;
  /** Plain HTTP URL of a key, as a client or a stratum 1 would fetch it. */
  url(bucket: string, key?: string): string;
  createBucket(name: string): Promise<void>;
  close(): Promise<void>;
}

export function s3ClientFor(endpoint: string): S3Client {
  return new S3Client({
    endpoint, region: S3RVER_REGION, credentials: S3RVER_CREDENTIALS, forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED', maxAttempts: 5,
  });
}

/** Starts s3rver with `buckets` created; close() stops it and removes its directory. */
export async function startS3(buckets: readonly string[] = []): Promise<S3Server> {
  const directory = await fs.mkdtemp(path.join(os.tmpdir(), 's3rver-'));
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: buckets.map((name) => ({ name })) });
  let addr: AddressInfo;
  try {
    addr = await server.run();
  } catch (err) {
    await fs.rm(directory, { recursive: true, force: true });
    throw err;
  }
  const endpoint = `http://127.0.0.1:${addr.port}`;
  const client = s3ClientFor(endpoint);
  let closed = false;
  return {
    endpoint, port: addr.port, directory, client,
    env: {
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_REGION: S3RVER_REGION,
    },
    url: (bucket, key) => `${endpoint}/${bucket}${key ? `/${key}` : ''}`,
    createBucket: async (name) => { await client.send(new CreateBucketCommand({ Bucket: name })); },
    close: async () => {
      if (closed) return;
      closed = true;
      client.destroy();
      await server.close();
      await fs.rm(directory, { recursive: true, force: true });
    },
  };
}
