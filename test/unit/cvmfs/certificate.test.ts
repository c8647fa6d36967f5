/** Regression: one serial in 128 began with a zero byte and made a non-minimal DER integer, which
 *  OpenSSL rejects ("illegal padding"): repository init then failed at random. */
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import t from 'tap';
import { selfSignedCertificate } from '../../../cvmfs/format/certificate.js';

t.test('every generated certificate parses', async (t) => {
  const k = generateKeyPairSync('rsa', { modulusLength: 1024 });
  let parsed = 0;
  for (let i = 0; i < 1500; i++) {
    const cert = new X509Certificate(selfSignedCertificate('repo.example.org CernVM-FS Release Managers', k.privateKey, k.publicKey, new Date()));
    if (cert.serialNumber.length === 32) parsed++;
  }
  t.equal(parsed, 1500, '1500 certificates, each with a 16-byte serial');
});
