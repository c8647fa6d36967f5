/**
 * A minimal DER encoder for the self-signed release-manager certificate that cvmfs_server makes
 * with `openssl req` + `openssl x509 -req` (docs/cvmfs-format.md §8). Clients check neither dates
 * nor a chain; trust comes from the whitelist fingerprint. Node cannot create certificates itself.
 */
import { randomBytes, sign, type KeyObject } from 'node:crypto';

const der = {
  len(n: number): Buffer {
    if (n < 0x80) return Buffer.from([n]);
    const bytes: number[] = [];
    for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
    return Buffer.from([0x80 | bytes.length, ...bytes]);
  },
  tlv(tag: number, content: Buffer): Buffer { return Buffer.concat([Buffer.from([tag]), der.len(content.length), content]); },
  seq(...items: Buffer[]): Buffer { return der.tlv(0x30, Buffer.concat(items)); },
  set(...items: Buffer[]): Buffer { return der.tlv(0x31, Buffer.concat(items)); },
  /** DER integers are minimal: no leading zero byte unless the next one has its high bit set. */
  uint(bytes: Buffer): Buffer {
    let b = bytes;
    while (b.length > 1 && b[0] === 0 && ((b[1] ?? 0) & 0x80) === 0) b = b.subarray(1);
    return der.tlv(0x02, (b[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.from([0]), b]) : b);
  },
  oid(dotted: string): Buffer {
    const [a, b, ...rest] = dotted.split('.').map(Number);
    const out = [40 * a! + b!];
    for (const n of rest) {
      const groups: number[] = [];
      for (let v = n; ; v = Math.floor(v / 128)) { groups.unshift(v % 128); if (v < 128) break; }
      out.push(...groups.map((g, i) => (i < groups.length - 1 ? g | 0x80 : g)));
    }
    return der.tlv(0x06, Buffer.from(out));
  },
  time(d: Date): Buffer {
    const iso = d.toISOString().replace(/\D/g, '').slice(0, 14);
    return d.getUTCFullYear() < 2050
      ? der.tlv(0x17, Buffer.from(iso.slice(2) + 'Z', 'ascii'))
      : der.tlv(0x18, Buffer.from(iso + 'Z', 'ascii'));
  },
};

const SHA256_WITH_RSA = der.seq(der.oid('1.2.840.113549.1.1.11'), Buffer.from([0x05, 0x00]));

function name(commonName: string): Buffer {
  return der.seq(der.set(der.seq(der.oid('2.5.4.3'), der.tlv(0x0c, Buffer.from(commonName, 'utf8')))));
}

/** Returns a PEM X.509 v1 certificate for `publicKey`, self-signed with `privateKey`. */
export function selfSignedCertificate(commonName: string, privateKey: KeyObject, publicKey: KeyObject,
  now: Date, days = 365): string {
  const serial = randomBytes(16);
  serial[0] = 0x40 | (serial[0]! & 0x3f); // positive, and 16 bytes long whatever the draw
  const tbs = der.seq(
    der.uint(serial),
    SHA256_WITH_RSA,
    name(commonName),
    der.seq(der.time(now), der.time(new Date(now.getTime() + days * 86_400_000))),
    name(commonName),
    publicKey.export({ type: 'spki', format: 'der' }),
  );
  const signature = sign('sha256', tbs, privateKey);
  const cert = der.seq(tbs, SHA256_WITH_RSA, der.tlv(0x03, Buffer.concat([Buffer.from([0]), signature])));
  const b64 = cert.toString('base64').match(/.{1,64}/g)!.join('\n');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}
