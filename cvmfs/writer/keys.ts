/**
 * Repository keys, named as cvmfs_server names them (docs/cvmfs-format.md §15.1):
 * `<fqrn>.masterkey` (signs the whitelist; may be kept offline), `<fqrn>.pub`, `<fqrn>.key` and
 * `<fqrn>.crt` (sign manifests). Private keys never go into the served tree.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CvmfsError } from '../errors.js';
import { selfSignedCertificate } from '../format/certificate.js';

export interface KeyPaths { readonly masterKey: string; readonly publicKey: string; readonly certKey: string; readonly cert: string }

export function keyPaths(dir: string, fqrn: string): KeyPaths {
  return {
    masterKey: path.join(dir, `${fqrn}.masterkey`),
    publicKey: path.join(dir, `${fqrn}.pub`),
    certKey: path.join(dir, `${fqrn}.key`),
    cert: path.join(dir, `${fqrn}.crt`),
  };
}

/** What signing a manifest needs. */
export interface SigningKeys {
  readonly certKey: KeyObject;
  readonly certPem: string;
  readonly certDer: Buffer;
}

/** What signing a whitelist needs, in addition. */
export interface MasterKeys {
  readonly masterKey: KeyObject;
  readonly masterPublicPem: string;
}

const RSA_BITS = 2048;

function samePublicKey(a: KeyObject, b: KeyObject): boolean {
  return a.export({ type: 'spki', format: 'der' }).equals(b.export({ type: 'spki', format: 'der' }));
}

async function readKeyFile(file: string, what: string, dir: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new CvmfsError('CVMFS_KEYS_MISSING', `${what} ${file} not found: is ${dir} the key directory of this repository?`);
    }
    throw new CvmfsError('CVMFS_KEYS_MISSING', `cannot read ${what} ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** Creates all four key files; refuses to overwrite existing keys. */
export async function generateKeys(dir: string, fqrn: string, now: Date): Promise<SigningKeys & MasterKeys> {
  const p = keyPaths(dir, fqrn);
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  for (const f of Object.values(p)) {
    if (await fs.access(f).then(() => true, () => false)) {
      throw new CvmfsError('CVMFS_KEYS_EXIST', `${f} already exists; remove the old keys or choose another key directory`);
    }
  }
  const master = generateKeyPairSync('rsa', { modulusLength: RSA_BITS });
  const cert = generateKeyPairSync('rsa', { modulusLength: RSA_BITS });
  const certPem = selfSignedCertificate(`${fqrn} CernVM-FS Release Managers`, cert.privateKey, cert.publicKey, now);
  const masterPublicPem = master.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  await fs.writeFile(p.masterKey, master.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  await fs.writeFile(p.certKey, cert.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  await fs.writeFile(p.publicKey, masterPublicPem, { mode: 0o644 });
  await fs.writeFile(p.cert, certPem, { mode: 0o644 });
  return { certKey: cert.privateKey, certPem, certDer: new X509Certificate(certPem).raw,
    masterKey: master.privateKey, masterPublicPem };
}

export async function loadSigningKeys(dir: string, fqrn: string): Promise<SigningKeys> {
  const p = keyPaths(dir, fqrn);
  const [keyPem, certPem] = await Promise.all([
    readKeyFile(p.certKey, 'certificate key', dir), readKeyFile(p.cert, 'certificate', dir)]);
  let certKey: KeyObject, x509: X509Certificate;
  try {
    certKey = createPrivateKey(keyPem);
    x509 = new X509Certificate(certPem);
  } catch (err) {
    throw new CvmfsError('CVMFS_KEYS_MISMATCH', `${p.certKey} or ${p.cert} is not a valid PEM key or certificate`, { cause: err });
  }
  if (!samePublicKey(createPublicKey(certKey), x509.publicKey)) {
    throw new CvmfsError('CVMFS_KEYS_MISMATCH', `${p.cert} does not belong to ${p.certKey}`);
  }
  return { certKey, certPem, certDer: x509.raw };
}

export async function loadMasterKeys(dir: string, fqrn: string): Promise<MasterKeys> {
  const p = keyPaths(dir, fqrn);
  const [masterPem, pubPem] = await Promise.all([
    readKeyFile(p.masterKey, 'master key', dir), readKeyFile(p.publicKey, 'master public key', dir)]);
  let masterKey: KeyObject, pub: KeyObject;
  try {
    masterKey = createPrivateKey(masterPem);
    pub = createPublicKey(pubPem);
  } catch (err) {
    throw new CvmfsError('CVMFS_KEYS_MISMATCH', `${p.masterKey} or ${p.publicKey} is not a valid PEM key`, { cause: err });
  }
  if (!samePublicKey(createPublicKey(masterKey), pub)) {
    throw new CvmfsError('CVMFS_KEYS_MISMATCH', `${p.publicKey} does not belong to ${p.masterKey}`);
  }
  return { masterKey, masterPublicPem: pubPem };
}
