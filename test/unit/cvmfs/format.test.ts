import { execFileSync } from 'node:child_process';
import { constants, createHash, generateKeyPairSync, publicDecrypt, verify, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { inflateSync } from 'node:zlib';
import Database from 'better-sqlite3';
import t from 'tap';
import {
  CatalogDatabase, catalogFlags, encodeObject, encodeXattrs, decodeXattrs, fingerprintOf, makedev, majorOf, minorOf,
  manifestBody, openLetter, parseManifest, parseTextualHash, parseWhitelist, pathKey, parentPathOf, selfSignedCertificate,
  signManifest, signWhitelist, textualHash, digestOf, whitelistBody, whitelistExpired, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR,
  COUNTER_FIELDS, DIR_SIZE, manifestSignatureValid, whitelistSignatureValid,
} from '../../../cvmfs/index.js';

t.test('md5 path keys split into signed little-endian halves; root is ""', async (t) => {
  const d = createHash('md5').update('/a/b').digest();
  t.same(pathKey('/a/b'), [d.readBigInt64LE(0), d.readBigInt64LE(8)]);
  const [r1, r2] = pathKey('');
  const root = Buffer.alloc(16);
  root.writeBigInt64LE(r1, 0); root.writeBigInt64LE(r2, 8);
  t.equal(root.toString('hex'), 'd41d8cd98f00b204e9800998ecf8427e');
  t.ok(pathKey('/x').some((h) => h < 0n) || pathKey('/y').some((h) => h < 0n), 'negative halves occur (signed)');
  t.equal(parentPathOf('/a/b'), '/a');
  t.equal(parentPathOf('/a'), '');
});

t.test('flag values match the stored values of docs/cvmfs-format.md §11.8', async (t) => {
  t.equal(catalogFlags({ kind: 'file', hasHash: true }), 4);
  t.equal(catalogFlags({ kind: 'file', hasHash: true, algo: 'rmd160' }), 260);
  t.equal(catalogFlags({ kind: 'file', hasHash: true, algo: 'shake128' }), 516);
  t.equal(catalogFlags({ kind: 'file', hasHash: true, uncompressed: true }), 2052);
  t.equal(catalogFlags({ kind: 'file', chunked: true }), 68);
  t.equal(catalogFlags({ kind: 'dir' }), 1);
  t.equal(catalogFlags({ kind: 'dir', nestedMountpoint: true }), 3);
  t.equal(catalogFlags({ kind: 'dir', nestedRoot: true }), 33);
  t.equal(catalogFlags({ kind: 'symlink' }), 12);
  t.equal(catalogFlags({ kind: 'special' }), 20);
});

t.test('device numbers use glibc makedev', async (t) => {
  t.equal(makedev(8, 1), 0x801n);
  t.equal(makedev(0, 0), 0n);
  const big = makedev(4097, 300);
  t.equal(majorOf(big), 4097);
  t.equal(minorOf(big), 300);
});

t.test('xattr blob: 1-byte fields, keys sorted, round trip, limits', async (t) => {
  const blob = encodeXattrs(new Map([['user.b', Buffer.from('2')], ['user.a', Buffer.from([0, 255, 1])]]))!;
  t.same([...blob.subarray(0, 4)], [1, 2, 6, 3], 'version 1, count 2, then key/value lengths of user.a');
  t.equal(blob.toString('latin1', 4, 10), 'user.a');
  t.same(decodeXattrs(blob).get('user.a'), Buffer.from([0, 255, 1]));
  t.equal(encodeXattrs(new Map()), null, 'empty list is NULL');
  t.throws(() => encodeXattrs(new Map([['user.x', Buffer.alloc(256)]])), { code: 'CVMFS_BAD_XATTR' });
});

t.test('objects: zlib with header, hash over the stored bytes, path layout; the empty file', async (t) => {
  const e = encodeObject(new Uint8Array(0), '', 'sha1');
  t.same([...e.stored], [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
  t.equal(e.path, 'data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78');
  const s = encodeObject(Buffer.from('hello'), 'P', 'shake128');
  t.match(s.path, /^data\/[0-9a-f]{2}\/[0-9a-f]{38}-shake128P$/);
  t.equal(createHash('shake128', { outputLength: 20 }).update(s.stored).digest('hex') + '-shake128', s.textual);
  t.equal(inflateSync(s.stored).toString(), 'hello');
  t.same(parseTextualHash(s.textual).algo, 'shake128');
  t.throws(() => parseTextualHash('abc'), { code: 'CVMFS_BAD_HASH' });
});

const master = generateKeyPairSync('rsa', { modulusLength: 2048 });
const cert = generateKeyPairSync('rsa', { modulusLength: 2048 });
const certPem = selfSignedCertificate('test.example.org CernVM-FS Release Managers', cert.privateKey, cert.publicKey, new Date());

t.test('self-signed certificate parses and matches its key; openssl agrees on the fingerprint', async (t) => {
  const x = new X509Certificate(certPem);
  t.ok(x.verify(cert.publicKey), 'self-signature verifies');
  t.equal(x.subject, 'CN=test.example.org CernVM-FS Release Managers');
  t.equal(fingerprintOf('sha1', x.raw), x.fingerprint, 'fingerprint form equals X509Certificate.fingerprint (SHA-1)');
  try {
    const dir = t.testdir();
    fs.writeFileSync(path.join(dir, 'c.crt'), certPem);
    const out = execFileSync('openssl', ['x509', '-noout', '-fingerprint', '-sha1', '-in', path.join(dir, 'c.crt')]).toString();
    t.equal(out.trim().split('=')[1], fingerprintOf('sha1', x.raw));
  } catch (err) {
    t.comment(`openssl CLI not available, fingerprint cross-check skipped: ${(err as Error).message}`);
  }
});

t.test('manifest: body, hash line, PKCS#1 v1.5 SHA-1 signature over the hash line', async (t) => {
  const root = encodeObject(Buffer.from('catalog'), 'C', 'sha1');
  const body = manifestBody({ rootHash: root.textual, rootCatalogSize: 7n, rootPathMd5: 'd41d8cd98f00b204e9800998ecf8427e', ttlSeconds: 240,
    revision: 3, garbageCollectable: false, alternativeNames: false, fqrn: 'test.example.org', certificateHash: root.textual, publishTime: 1700000000 });
  t.equal(body, `C${root.textual}\nB7\nRd41d8cd98f00b204e9800998ecf8427e\nD240\nS3\nGno\nAno\nNtest.example.org\nX${root.textual}\nT1700000000\n`);
  const letter = signManifest(body, 'sha1', cert.privateKey);
  const sep = letter.indexOf('\n--\n');
  t.equal(letter.subarray(0, sep + 1).toString(), body, 'signed text includes the last newline, not --');
  const hashLine = createHash('sha1').update(body).digest('hex');
  t.equal(letter.subarray(sep + 4, sep + 4 + 41).toString(), hashLine + '\n');
  const sig = letter.subarray(sep + 4 + 41);
  t.equal(sig.length, 256, 'raw 2048-bit signature, nothing after it');
  t.ok(verify('sha1', Buffer.from(hashLine, 'ascii'), cert.publicKey, sig), 'node crypto verifies it');
  const opened = openLetter(letter, 'manifest');
  t.ok(manifestSignatureValid(opened, cert.publicKey));
  t.notOk(manifestSignatureValid(opened, master.publicKey), 'another key does not verify');
  t.equal(parseManifest(opened.body).revision, 3);
  const tampered = Buffer.from(letter);
  tampered[body.indexOf('S3') + 1] = '4'.charCodeAt(0);
  t.throws(() => openLetter(tampered, 'manifest'), { code: 'CVMFS_BAD_SIGNATURE' });
  t.throws(() => parseManifest('Cabc\n'), { code: 'CVMFS_BAD_HASH' });
  t.throws(() => parseManifest(`C${root.textual}\nD240\nS1\n`), { code: 'CVMFS_BAD_MANIFEST' }, 'R is required');
});

t.test('whitelist: raw RSA private-encrypt of the hash line, no DigestInfo; expiry at hour granularity', async (t) => {
  const now = new Date(Date.UTC(2026, 0, 1, 12, 30));
  const der = new X509Certificate(certPem).raw;
  const body = whitelistBody('test.example.org', der, 'sha1', now);
  t.match(body, /^20260101123000\nE20260131123000\nNtest\.example\.org\n([0-9A-F]{2}:){19}[0-9A-F]{2}\n$/);
  const letter = signWhitelist(body, master.privateKey);
  const opened = openLetter(letter, 'whitelist');
  const plain = publicDecrypt({ key: master.publicKey, padding: constants.RSA_PKCS1_PADDING }, opened.signature);
  t.equal(plain.toString('ascii'), createHash('sha1').update(body).digest('hex'), 'decrypts to the bare hash line');
  t.ok(whitelistSignatureValid(opened, master.publicKey));
  t.notOk(whitelistSignatureValid(opened, cert.publicKey));
  const w = parseWhitelist(opened.body);
  t.equal(w.fingerprints[0], fingerprintOf('sha1', der).replace(/:/g, '').toLowerCase());
  t.notOk(whitelistExpired(w, new Date(Date.UTC(2026, 0, 31, 11, 59))));
  t.ok(whitelistExpired(w, new Date(Date.UTC(2026, 0, 31, 12, 0))), 'expired from the expiry hour on');
});

t.test('catalog: exact DDL, rollback journal, root at rowid 1, all 24 counters, recount', async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'c.sqlite');
  const db = CatalogDatabase.create(file, { rootPrefix: null, revision: 1, lastModified: 1 });
  const base = { mtime: 1, mtimens: null, uid: 0, gid: 0, hardlinkGroup: 0, symlink: '', xattr: null };
  db.upsert('', { ...base, name: '', mode: S_IFDIR | 0o755, size: DIR_SIZE, flags: 1, linkcount: 3, hash: null });
  db.upsert('/d', { ...base, name: 'd', mode: S_IFDIR | 0o755, size: DIR_SIZE, flags: 1, linkcount: 2, hash: null });
  const obj = encodeObject(Buffer.from('x'), '', 'sha1');
  db.upsert('/d/f', { ...base, name: 'f', mode: S_IFREG | 0o644, size: 1n, flags: 4, linkcount: 1, hash: obj.digest,
    xattr: encodeXattrs(new Map([['user.k', Buffer.from('v')]])) });
  db.upsert('/d/big', { ...base, name: 'big', mode: S_IFREG | 0o644, size: 100n, flags: 68, linkcount: 1, hash: null });
  db.insertChunk('/d/big', { offset: 0n, size: 60n, hash: obj.digest });
  db.insertChunk('/d/big', { offset: 60n, size: 40n, hash: obj.digest });
  db.upsert('/l', { ...base, name: 'l', mode: S_IFLNK | 0o777, size: 1n, flags: 12, linkcount: 1, hash: null, symlink: 'd' });
  db.upsert('/c', { ...base, name: 'c', mode: S_IFCHR | 0o600, size: makedev(1, 3), flags: 20, linkcount: 1, hash: null });
  db.setNestedCatalog({ path: '/n', hash: obj.textual, size: 10n });
  const c = db.computeSelfCounters();
  t.same(c, { regular: 2n, symlink: 1n, special: 1n, dir: 2n, nested: 1n, chunked: 1n, chunks: 2n, file_size: 101n,
    chunked_size: 100n, xattr: 1n, external: 0n, external_file_size: 0n });
  db.setCounters('self', c);
  db.update('', { ...base, name: '', mode: S_IFDIR | 0o755, size: DIR_SIZE, flags: 1, linkcount: 4, hash: null });
  t.equal(db.lookup('')!.rowid, 1, 'update keeps the root at rowid 1');
  t.same(db.list('/d').map((e) => e.name).sort(), ['big', 'f']);
  t.same(db.removeSubtree('/d').length, 0);
  t.equal(db.lookup('/d/f'), undefined, 'subtree removed');
  t.equal(db.chunks('/d/big').length, 0, 'chunks of removed files removed');
  db.finalize();
  db.close();
  const bytes = fs.readFileSync(file);
  t.same([bytes[18], bytes[19]], [1, 1], 'header bytes 18/19 = 1: rollback journal, not WAL');
  const raw = new Database(file, { readonly: true });
  const tables = (raw.prepare("SELECT name FROM sqlite_master WHERE type IN ('table','index') ORDER BY name").all() as { name: string }[]).map((r) => r.name);
  t.same(tables.filter((n) => !n.startsWith('sqlite_')), ['bind_mountpoints', 'catalog', 'chunks', 'idx_catalog_parent', 'nested_catalogs', 'properties', 'statistics']);
  const cols = (raw.prepare('PRAGMA table_info(catalog)').all() as { name: string }[]).map((r) => r.name);
  t.same(cols, ['md5path_1', 'md5path_2', 'parent_1', 'parent_2', 'hardlinks', 'hash', 'size', 'mode', 'mtime', 'mtimens', 'flags', 'name', 'symlink', 'uid', 'gid', 'xattr']);
  const counters = (raw.prepare('SELECT counter FROM statistics').all() as { counter: string }[]).map((r) => r.counter).sort();
  t.same(counters, COUNTER_FIELDS.flatMap((f) => [`self_${f}`, `subtree_${f}`]).sort(), 'all 24 counters');
  t.same(raw.prepare("SELECT value FROM properties WHERE key IN ('schema','schema_revision') ORDER BY key").all(), [{ value: '2.5' }, { value: '7' }]);
  raw.close();
});

t.test('textual hashes and digests agree', async (t) => {
  t.equal(textualHash('sha1', digestOf('sha1', 'abc')), 'a9993e364706816aba3e25717850c26c9cd0d89d');
  t.equal(textualHash('shake128', digestOf('shake128', '')).length, 49);
});
