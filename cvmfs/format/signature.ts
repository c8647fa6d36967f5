/**
 * Signed "letters": the manifest and the whitelist share a layout (body, `--`, hash line, raw
 * signature) but not the signature scheme (docs/cvmfs-format.md §7.2, §9.2, pitfall 1):
 *   manifest:  RSASSA-PKCS1-v1_5 with SHA-1 over the ASCII hash line (certificate key);
 *   whitelist: raw RSA private-encrypt with PKCS#1 type-1 padding of the ASCII hash line, no
 *              DigestInfo (master key).
 */
import { constants, privateEncrypt, publicDecrypt, sign, verify, type KeyLike } from 'node:crypto';
import { CvmfsError } from '../errors.js';
import { digestOf, parseTextualHash, textualHash, type HashAlgo } from './hash.js';

export interface OpenedLetter {
  /** Body including the `\n` of its last key line, excluding `--\n`. */
  readonly body: Buffer;
  readonly hashLine: string;
  readonly signature: Buffer;
}

function seal(body: string, algo: HashAlgo, signHashLine: (h: Buffer) => Buffer): Buffer {
  if (!body.endsWith('\n')) throw new CvmfsError('CVMFS_BAD_ARGUMENT', 'letter body must end with a newline');
  const hashLine = textualHash(algo, digestOf(algo, Buffer.from(body, 'utf8')));
  return Buffer.concat([Buffer.from(`${body}--\n${hashLine}\n`, 'utf8'), signHashLine(Buffer.from(hashLine, 'ascii'))]);
}

export function signManifest(body: string, algo: HashAlgo, certPrivateKey: KeyLike): Buffer {
  return seal(body, algo, (h) => sign('sha1', h, certPrivateKey));
}

export function signWhitelist(body: string, masterPrivateKey: KeyLike): Buffer {
  return seal(body, 'sha1', (h) => privateEncrypt({ key: masterPrivateKey, padding: constants.RSA_PKCS1_PADDING }, h));
}

/** Splits a letter and checks its hash line; the signature is checked by the callers below. */
export function openLetter(buf: Buffer, what: 'manifest' | 'whitelist'): OpenedLetter {
  const code = what === 'manifest' ? 'CVMFS_BAD_MANIFEST' : 'CVMFS_BAD_WHITELIST';
  const sep = buf.indexOf('\n--\n');
  if (sep < 0) throw new CvmfsError(code, `${what} has no signature block`);
  const start = sep + 4;
  const end = buf.indexOf('\n', start);
  if (end < 0) throw new CvmfsError(code, `${what} signature block is truncated`);
  const body = buf.subarray(0, sep + 1);
  const hashLine = buf.subarray(start, end).toString('ascii');
  let algo: HashAlgo;
  try { algo = parseTextualHash(hashLine).algo; } catch (err) {
    throw new CvmfsError(code, `${what} hash line "${hashLine.slice(0, 60)}" is not a hash`, { cause: err });
  }
  if (textualHash(algo, digestOf(algo, body)) !== hashLine) {
    throw new CvmfsError('CVMFS_BAD_SIGNATURE', `${what} body does not match its hash line: the file was altered`);
  }
  return { body, hashLine, signature: buf.subarray(end + 1) };
}

export function manifestSignatureValid(l: OpenedLetter, certPublicKey: KeyLike): boolean {
  try { return verify('sha1', Buffer.from(l.hashLine, 'ascii'), certPublicKey, l.signature); } catch { return false; }
}

export function whitelistSignatureValid(l: OpenedLetter, masterPublicKey: KeyLike): boolean {
  try {
    const plain = publicDecrypt({ key: masterPublicKey, padding: constants.RSA_PKCS1_PADDING }, l.signature);
    return plain.toString('ascii') === l.hashLine;
  } catch {
    return false;
  }
}
