/**
 * The storage a command names: `--dir R` (a served directory) or `--store s3://bucket[/prefix]`
 * (S3Storage, loaded only then: the AWS SDK costs ~200 ms and tens of MB to load, and the plugin
 * and most commands never need it). Shared by `cvmfs-repo` and `cvmfs-publisher`.
 */
import { CvmfsError } from '../errors.js';
import { DirStorage } from './storage-dir.js';
import type { RepositoryStorage } from './storage.js';

export interface StorageSpec {
  readonly dir?: string | undefined;
  readonly store?: string | undefined;
  readonly s3Endpoint?: string | undefined;
  readonly s3Region?: string | undefined;
}

export interface OpenedStorage { readonly storage: RepositoryStorage; close(): void }

const usage = (msg: string) => new CvmfsError('CVMFS_BAD_ARGUMENT', msg);

export async function openStorage(f: StorageSpec, env: NodeJS.ProcessEnv = process.env): Promise<OpenedStorage> {
  if (f.dir === undefined && f.store === undefined) throw usage('missing --dir (or --store)');
  if (f.dir !== undefined && f.store !== undefined) throw usage('give one of --dir R and --store S, not both');
  const store = f.store ?? f.dir!;
  if (store === '') throw usage(f.store === undefined ? 'missing --dir' : 'missing --store');
  const s3 = f.store !== undefined && store.startsWith('s3://');
  if (!s3) {
    if (f.s3Endpoint !== undefined || f.s3Region !== undefined) throw usage('--s3-endpoint and --s3-region go with --store s3://…');
    return { storage: new DirStorage(store), close: () => {} };
  }
  // This project supports Node 20; the SDK's notice that its future releases will not is noise here.
  env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const { S3Storage, parseS3Url } = await import('./storage-s3.js');
  const parsed = parseS3Url(store);
  if (parsed === undefined) throw usage(`--store "${store}" names no bucket: use s3://BUCKET[/PREFIX]`);
  const { bucket, prefix } = parsed;
  const endpoint = f.s3Endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
  if (endpoint !== undefined && !/^https?:\/\/[^/]/.test(endpoint)) throw usage(`--s3-endpoint "${endpoint}" is not an http(s) URL`);
  const storage = new S3Storage({ bucket, prefix, ...(endpoint ? { endpoint } : {}), ...(f.s3Region ? { region: f.s3Region } : {}) });
  return { storage, close: () => storage.close() };
}
