/**
 * The chain of trust (docs/cvmfs-format.md §1, §10): master key → whitelist → certificate
 * fingerprint → manifest signature → root catalog hash. Nothing below a manifest is used before
 * this passes; every failure names which link broke.
 *
 * A revision is its three signed letters: the manifest (`.cvmfspublished`), the whitelist
 * (`.cvmfswhitelist`) and the certificate the manifest names. The same link checks below verify
 * them as they arrive from a server (inside the fetch, so that bad bytes fail over to the next
 * server) and when they come back from the cache (`verifyLetters`), where they are kept instead
 * of an unsigned breadcrumb. Only the whitelist's expiry may be waived, for cached letters.
 */
import { X509Certificate, type KeyObject } from 'node:crypto';
import type { Readable } from 'node:stream';
import { CvmfsError } from '../errors.js';
import { fingerprintOf, fingerprintToTextual, parseTextualHash } from '../format/hash.js';
import { parseManifest, type Manifest } from '../format/manifest.js';
import { manifestSignatureValid, openLetter, whitelistSignatureValid, type OpenedLetter } from '../format/signature.js';
import { parseWhitelist, whitelistExpired, type Whitelist } from '../format/whitelist.js';
import type { Fetcher } from './fetcher.js';
import type { ObjectStore } from './object-store.js';

export const MAX_LETTER_BYTES = 1024 * 1024;

/** A revision's signed letters, byte for byte as the server sent them (the certificate inflated). */
export interface Letters {
  readonly manifest: Buffer;
  readonly whitelist: Buffer;
  /** PEM, as the certificate object inflates. */
  readonly certificate: Buffer;
}

export interface TrustedRevision {
  readonly manifest: Manifest;
  readonly whitelist: Whitelist;
  readonly certificate: X509Certificate;
  readonly letters: Letters;
  /** True only when `acceptExpired` waived an expired whitelist. */
  readonly whitelistExpired: boolean;
}

export interface MasterKey { readonly name: string; readonly key: KeyObject }

export interface TrustContext {
  readonly fqrn: string;
  readonly masterKeys: readonly MasterKey[];
  readonly now: Date;
  /** Accept a whitelist past its expiry (cached letters, verified unexpired when stored). */
  readonly acceptExpired?: boolean;
}

async function readAll(body: Readable, what: 'manifest' | 'whitelist'): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of body as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_LETTER_BYTES) throw new CvmfsError(what === 'manifest' ? 'CVMFS_BAD_MANIFEST' : 'CVMFS_BAD_WHITELIST', `${what} is larger than ${MAX_LETTER_BYTES} bytes`);
    parts.push(c);
  }
  return Buffer.concat(parts);
}

interface OpenedManifest { readonly letter: OpenedLetter; readonly manifest: Manifest }

/** Link: the manifest letter is well formed, names this repository and a certificate. */
function openManifest(bytes: Buffer, fqrn: string): OpenedManifest {
  if (bytes.length === 0) throw new CvmfsError('CVMFS_BAD_MANIFEST', 'manifest is empty');
  const letter = openLetter(bytes, 'manifest');
  const manifest = parseManifest(letter.body);
  if (manifest.fqrn !== fqrn) {
    throw new CvmfsError('CVMFS_NAME_MISMATCH', `repository name does not match: the manifest is for "${manifest.fqrn}", expected "${fqrn}"`);
  }
  if (!manifest.certificateHash) throw new CvmfsError('CVMFS_BAD_MANIFEST', 'manifest names no certificate (X)');
  parseTextualHash(manifest.certificateHash);
  return { letter, manifest };
}

/** Link: the manifest is signed by the certificate. */
function checkManifestSignature(m: OpenedManifest, certificatePem: Buffer, fqrn: string): X509Certificate {
  let certificate: X509Certificate;
  try { certificate = new X509Certificate(certificatePem); } catch (err) {
    throw new CvmfsError('CVMFS_BAD_MANIFEST', `certificate ${m.manifest.certificateHash} is not an X.509 certificate`, { cause: err });
  }
  if (!manifestSignatureValid(m.letter, certificate.publicKey)) {
    throw new CvmfsError('CVMFS_BAD_SIGNATURE', `the manifest signature of ${fqrn} does not verify with its certificate: the manifest was tampered with`);
  }
  return certificate;
}

/** Link: the whitelist names this repository, is signed by a configured master key and (unless waived) unexpired. */
function checkWhitelist(bytes: Buffer, o: TrustContext): { whitelist: Whitelist; expired: boolean } {
  if (bytes.length === 0) throw new CvmfsError('CVMFS_BAD_WHITELIST', 'whitelist is empty');
  const letter = openLetter(bytes, 'whitelist');
  const whitelist = parseWhitelist(letter.body);
  if (whitelist.fqrn !== o.fqrn) {
    throw new CvmfsError('CVMFS_NAME_MISMATCH', `repository name does not match: the whitelist is for "${whitelist.fqrn}", expected "${o.fqrn}"`);
  }
  if (!o.masterKeys.some((k) => whitelistSignatureValid(letter, k.key))) {
    throw new CvmfsError('CVMFS_BAD_SIGNATURE',
      `the whitelist of ${o.fqrn} is not signed by any configured master key (${o.masterKeys.map((k) => k.name).join(', ')}): wrong public key?`);
  }
  const expired = whitelistExpired(whitelist, o.now);
  if (expired && !o.acceptExpired) {
    throw new CvmfsError('CVMFS_WHITELIST_EXPIRED', `the whitelist of ${o.fqrn} expired at ${whitelist.expires} UTC: the publisher must run "cvmfs-repo resign"`);
  }
  return { whitelist, expired };
}

/** Link: the whitelist lists the certificate's fingerprint. */
export function checkCertificateListed(whitelist: Whitelist, certificate: X509Certificate, fqrn: string): void {
  const listed = new Set(whitelist.fingerprints);
  const ok = (['sha1', 'rmd160', 'shake128'] as const).some((a) => listed.has(fingerprintToTextual(fingerprintOf(a, certificate.raw))));
  if (!ok) throw new CvmfsError('CVMFS_UNTRUSTED_CERTIFICATE', `the certificate that signed ${fqrn} is not listed in its whitelist`);
}

/** The whole chain over a revision's letters, wherever they come from. */
export function verifyLetters(letters: Letters, o: TrustContext): TrustedRevision {
  const m = openManifest(letters.manifest, o.fqrn);
  const certificate = checkManifestSignature(m, letters.certificate, o.fqrn);
  const { whitelist, expired } = checkWhitelist(letters.whitelist, o);
  checkCertificateListed(whitelist, certificate, o.fqrn);
  return { manifest: m.manifest, whitelist, certificate, letters, whitelistExpired: expired };
}

/**
 * Fetches and verifies the current revision. Each letter is checked as it arrives, so that a
 * server or proxy serving a bad one is retried with no-cache and then failed over; the result is
 * `verifyLetters` over exactly the bytes the caller may store.
 */
export async function fetchTrustedRevision(o: { fetcher: Fetcher; store: ObjectStore } & TrustContext): Promise<TrustedRevision> {
  const trust: TrustContext = { fqrn: o.fqrn, masterKeys: o.masterKeys, now: o.now };
  // The whitelist does not depend on the manifest: fetched alongside, one round trip less.
  const whitelistFetch = o.fetcher.fetch('.cvmfswhitelist', async (body) => {
    const whitelist = await readAll(body, 'whitelist');
    checkWhitelist(whitelist, trust);
    return whitelist;
  });
  whitelistFetch.catch(() => {});
  const { manifest, certificate } = await o.fetcher.fetch('.cvmfspublished', async (body) => {
    const manifest = await readAll(body, 'manifest');
    const m = openManifest(manifest, o.fqrn);
    await o.store.get({ hash: m.manifest.certificateHash, suffix: 'X', compressed: true });
    const certificate = await o.store.cache.readObject(m.manifest.certificateHash);
    if (certificate.length > MAX_LETTER_BYTES) throw new CvmfsError('CVMFS_BAD_MANIFEST', `certificate ${m.manifest.certificateHash} is larger than ${MAX_LETTER_BYTES} bytes`);
    checkManifestSignature(m, certificate, o.fqrn);
    return { manifest, certificate };
  });
  const whitelist = await whitelistFetch;
  return verifyLetters({ manifest, whitelist, certificate }, trust);
}
