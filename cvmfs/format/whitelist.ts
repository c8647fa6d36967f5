/** Whitelist `.cvmfswhitelist` text part (docs/cvmfs-format.md §9.1). */
import { CvmfsError } from '../errors.js';
import { fingerprintOf, fingerprintToTextual, type HashAlgo } from './hash.js';

export const WHITELIST_DEFAULT_DAYS = 30;
const DAY_MS = 86_400_000;

export interface Whitelist {
  readonly created: string;        // YYYYMMDDhhmmss, UTC
  readonly expires: string;        // YYYYMMDDhhmmss, UTC
  readonly fqrn: string;
  /** Certificate fingerprints as lowercase textual hashes (colons removed). */
  readonly fingerprints: readonly string[];
  readonly pkcs7: boolean;
  readonly caChain: boolean;
}

export function utc14(d: Date): string {
  return d.toISOString().replace(/\D/g, '').slice(0, 14);
}

export function whitelistBody(fqrn: string, certDer: Uint8Array, algo: HashAlgo, now: Date, days = WHITELIST_DEFAULT_DAYS): string {
  const expiry = new Date(now.getTime() + days * DAY_MS);
  return `${utc14(now)}\nE${utc14(expiry)}\nN${fqrn}\n${fingerprintOf(algo, certDer)}\n`;
}

export function parseWhitelist(body: Buffer | string): Whitelist {
  const lines = (typeof body === 'string' ? body : body.toString('utf8')).split('\n');
  const bad = (why: string) => new CvmfsError('CVMFS_BAD_WHITELIST', `whitelist ${why}`);
  const created = lines[0] ?? '';
  const exp = lines[1] ?? '';
  if (!/^\d{14}$/.test(created)) throw bad(`creation line "${created}" is not YYYYMMDDhhmmss`);
  if (!/^E\d{14}$/.test(exp)) throw bad(`expiry line "${exp}" is not EYYYYMMDDhhmmss`);
  let fqrn = '';
  let pkcs7 = false, caChain = false;
  const fingerprints: string[] = [];
  for (const line of lines.slice(2)) {
    if (line === '--') break;
    if (line === '') continue;
    if (line.startsWith('N')) fqrn = line.slice(1);
    else if (line === 'Vpkcs7') pkcs7 = true;
    else if (line === 'Wcachain') caChain = true;
    else fingerprints.push(fingerprintToTextual(line));
  }
  return { created, expires: exp.slice(1), fqrn, fingerprints, pkcs7, caChain };
}

/** Expiry is compared at hour granularity, UTC (§9.1): valid while now < expiry. */
export function whitelistExpired(w: Whitelist, now: Date): boolean {
  return utc14(now).slice(0, 10) >= w.expires.slice(0, 10);
}

export function whitelistExpiresAt(w: Whitelist): Date {
  const e = w.expires;
  return new Date(Date.UTC(+e.slice(0, 4), +e.slice(4, 6) - 1, +e.slice(6, 8), +e.slice(8, 10), +e.slice(10, 12), +e.slice(12, 14)));
}
