/** Signing and publishing the letters. The manifest is always the last thing written (§15.4). */
import { CvmfsError } from '../errors.js';
import { DEFAULT_TTL_SECONDS } from '../format/catalog-schema.js';
import type { HashAlgo } from '../format/hash.js';
import { manifestBody, type Manifest } from '../format/manifest.js';
import { encodeObject } from '../format/object.js';
import { ROOT_PATH_MD5 } from '../format/path-key.js';
import { signManifest, signWhitelist } from '../format/signature.js';
import { whitelistBody, WHITELIST_DEFAULT_DAYS } from '../format/whitelist.js';
import type { MasterKeys, SigningKeys } from './keys.js';
import type { ObjectSink } from './object-sink.js';
import { MANIFEST_FILE, WHITELIST_FILE } from './repository-state.js';
import type { RepositoryStorage, WriterLock } from './storage.js';

/** Signs and replaces the whitelist; `lock` must still be held (checked right before the write). */
export async function publishWhitelist(storage: RepositoryStorage, lock: WriterLock, fqrn: string, keys: SigningKeys & MasterKeys,
  algo: HashAlgo, now: Date, days = WHITELIST_DEFAULT_DAYS): Promise<void> {
  if (!(days > 0 && days <= 365)) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `whitelist lifetime ${days} days is out of range (1–365)`);
  const body = signWhitelist(whitelistBody(fqrn, keys.certDer, algo, now, days), keys.masterKey);
  await lock.verify();
  await storage.putLetter(WHITELIST_FILE, body);
}

export interface ManifestInput {
  readonly fqrn: string;
  readonly algo: HashAlgo;
  readonly rootHash: string;
  readonly rootSize: bigint;
  readonly revision: number;
  readonly ttlSeconds?: number;
  readonly publishTime: number;
}

/**
 * Stores the certificate object, flushes every object to disk, then replaces the manifest, unless
 * `lock` was taken over meanwhile (CVMFS_REPO_LOCKED; the previous revision stays).
 */
export async function publishManifest(storage: RepositoryStorage, lock: WriterLock, sink: ObjectSink, keys: SigningKeys, m: ManifestInput): Promise<Manifest> {
  const cert = encodeObject(Buffer.from(keys.certPem, 'utf8'), 'X', m.algo);
  await sink.put(cert.path, cert.stored);
  await sink.drain();
  await storage.flush();
  const manifest: Manifest = {
    rootHash: m.rootHash, rootCatalogSize: m.rootSize, rootPathMd5: ROOT_PATH_MD5, ttlSeconds: m.ttlSeconds ?? DEFAULT_TTL_SECONDS,
    revision: m.revision, garbageCollectable: false, alternativeNames: false, fqrn: m.fqrn,
    certificateHash: cert.textual, publishTime: m.publishTime,
  };
  const signed = signManifest(manifestBody(manifest), m.algo, keys.certKey);
  await lock.verify();
  await storage.putLetter(MANIFEST_FILE, signed);
  return manifest;
}
