/**
 * The chain of trust (docs/cvmfs-format.md §1, §10): master key → whitelist → certificate
 * fingerprint → manifest signature → root catalog hash. Nothing below a manifest is used before
 * this passes; every failure names which link broke.
 */
import { X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { CvmfsError } from '../errors.js';
import { fingerprintOf, fingerprintToTextual, parseTextualHash } from '../format/hash.js';
import { parseManifest, type Manifest } from '../format/manifest.js';
import { manifestSignatureValid, openLetter, whitelistSignatureValid } from '../format/signature.js';
import { parseWhitelist, whitelistExpired, type Whitelist } from '../format/whitelist.js';
import type { Fetcher } from './fetcher.js';
import type { ObjectStore } from './object-store.js';

export const MAX_LETTER_BYTES = 1024 * 1024;

export interface TrustedRevision {
  readonly manifest: Manifest;
  readonly whitelist: Whitelist;
  readonly certificate: X509Certificate;
}

export interface MasterKey { readonly name: string; readonly key: KeyObject }

async function readAll(body: Readable, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of body as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_LETTER_BYTES) throw new CvmfsError('CVMFS_BAD_MANIFEST', `${what} is larger than ${MAX_LETTER_BYTES} bytes`);
    parts.push(c);
  }
  if (n === 0) throw new CvmfsError(what === 'manifest' ? 'CVMFS_BAD_MANIFEST' : 'CVMFS_BAD_WHITELIST', `${what} is empty`);
  return Buffer.concat(parts);
}

export async function fetchTrustedRevision(o: {
  fetcher: Fetcher; store: ObjectStore; fqrn: string; masterKeys: readonly MasterKey[]; now: Date;
}): Promise<TrustedRevision> {
  const { manifest, certificate } = await o.fetcher.fetch('.cvmfspublished', async (body) => {
    const letter = openLetter(await readAll(body, 'manifest'), 'manifest');
    const manifest = parseManifest(letter.body);
    if (manifest.fqrn !== o.fqrn) {
      throw new CvmfsError('CVMFS_NAME_MISMATCH', `repository name does not match: the manifest is for "${manifest.fqrn}", expected "${o.fqrn}"`);
    }
    if (!manifest.certificateHash) throw new CvmfsError('CVMFS_BAD_MANIFEST', 'manifest names no certificate (X)');
    parseTextualHash(manifest.certificateHash);
    const certPath = await o.store.get({ hash: manifest.certificateHash, suffix: 'X', compressed: true });
    let certificate: X509Certificate;
    try { certificate = new X509Certificate(await fs.readFile(certPath)); } catch (err) {
      throw new CvmfsError('CVMFS_BAD_MANIFEST', `certificate ${manifest.certificateHash} is not an X.509 certificate`, { cause: err });
    }
    if (!manifestSignatureValid(letter, certificate.publicKey)) {
      throw new CvmfsError('CVMFS_BAD_SIGNATURE', `the manifest signature of ${o.fqrn} does not verify with its certificate: the manifest was tampered with`);
    }
    return { manifest, certificate };
  });
  const whitelist = await o.fetcher.fetch('.cvmfswhitelist', async (body) => {
    const letter = openLetter(await readAll(body, 'whitelist'), 'whitelist');
    const wl = parseWhitelist(letter.body);
    if (wl.fqrn !== o.fqrn) {
      throw new CvmfsError('CVMFS_NAME_MISMATCH', `repository name does not match: the whitelist is for "${wl.fqrn}", expected "${o.fqrn}"`);
    }
    if (!o.masterKeys.some((k) => whitelistSignatureValid(letter, k.key))) {
      throw new CvmfsError('CVMFS_BAD_SIGNATURE',
        `the whitelist of ${o.fqrn} is not signed by any configured master key (${o.masterKeys.map((k) => k.name).join(', ')}): wrong public key?`);
    }
    if (whitelistExpired(wl, o.now)) {
      throw new CvmfsError('CVMFS_WHITELIST_EXPIRED', `the whitelist of ${o.fqrn} expired at ${wl.expires} UTC: the publisher must run "cvmfs-repo resign"`);
    }
    return wl;
  });
  const listed = new Set(whitelist.fingerprints);
  const ok = (['sha1', 'rmd160', 'shake128'] as const).some((a) => listed.has(fingerprintToTextual(fingerprintOf(a, certificate.raw))));
  if (!ok) throw new CvmfsError('CVMFS_UNTRUSTED_CERTIFICATE', `the certificate that signed ${o.fqrn} is not listed in its whitelist`);
  return { manifest, whitelist, certificate };
}
