/** The current revision of a repository, read back from storage and verified. */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CvmfsError } from '../errors.js';
import { CatalogDatabase } from '../format/catalog-statements.js';
import { digestOf, parseTextualHash, textualHash, type HashAlgo } from '../format/hash.js';
import { parseManifest, type Manifest } from '../format/manifest.js';
import { decodeObject, objectPath, type ObjectSuffix } from '../format/object.js';
import { manifestSignatureValid, openLetter } from '../format/signature.js';
import { parseWhitelist, type Whitelist } from '../format/whitelist.js';
import type { RepositoryStorage } from './storage.js';

export const MANIFEST_FILE = '.cvmfspublished';
export const WHITELIST_FILE = '.cvmfswhitelist';

export interface RepositoryState {
  readonly manifest: Manifest;
  readonly algo: HashAlgo;
  readonly whitelist: Whitelist;
  readonly certPem: string;
}

/** Reads an object, checks its name against its bytes, and inflates it. */
export async function readObject(storage: RepositoryStorage, textual: string, suffix: ObjectSuffix): Promise<Buffer> {
  const p = objectPath(textual, suffix);
  const stored = await storage.get(p);
  if (stored === undefined) throw new CvmfsError('CVMFS_OBJECT_NOT_FOUND', `object ${p} is missing from ${storage.location}`);
  const { algo } = parseTextualHash(textual);
  const got = textualHash(algo, digestOf(algo, stored));
  if (got !== textual) {
    throw new CvmfsError('CVMFS_HASH_MISMATCH', `object ${p} in ${storage.location} is corrupt (its content hashes to ${got})`);
  }
  return decodeObject(stored);
}

export async function loadState(storage: RepositoryStorage): Promise<RepositoryState> {
  const raw = await storage.get(MANIFEST_FILE);
  if (raw === undefined) {
    throw new CvmfsError('CVMFS_REPO_NOT_FOUND', `no repository at ${storage.location} (no ${MANIFEST_FILE}); create one with "cvmfs-repo init"`);
  }
  const letter = openLetter(raw, 'manifest');
  const manifest = parseManifest(letter.body);
  if (!manifest.certificateHash) throw new CvmfsError('CVMFS_BAD_MANIFEST', 'manifest names no certificate (X)');
  const certPem = (await readObject(storage, manifest.certificateHash, 'X')).toString('utf8');
  let cert: X509Certificate;
  try { cert = new X509Certificate(certPem); } catch (err) {
    throw new CvmfsError('CVMFS_BAD_MANIFEST', 'the certificate object is not a PEM certificate', { cause: err });
  }
  if (!manifestSignatureValid(letter, cert.publicKey)) {
    throw new CvmfsError('CVMFS_BAD_SIGNATURE', `the manifest in ${storage.location} does not verify against its certificate`);
  }
  const wl = await storage.get(WHITELIST_FILE);
  if (wl === undefined) throw new CvmfsError('CVMFS_BAD_WHITELIST', `${WHITELIST_FILE} is missing from ${storage.location}`);
  const whitelist = parseWhitelist(openLetter(wl, 'whitelist').body);
  return { manifest, algo: parseTextualHash(manifest.rootHash).algo, whitelist, certPem };
}

/** A catalog copied out of storage into a scratch file, open for reading or editing. */
export interface StagedCatalog {
  readonly mountPath: string;
  readonly hash: string;
  readonly file: string;
  readonly db: CatalogDatabase;
}

export async function stageCatalog(storage: RepositoryStorage, hash: string, mountPath: string, scratchDir: string): Promise<StagedCatalog> {
  const bytes = await readObject(storage, hash, 'C');
  const file = path.join(scratchDir, `${hash}.sqlite`);
  await fs.writeFile(file, bytes);
  return { mountPath, hash, file, db: CatalogDatabase.open(file) };
}
