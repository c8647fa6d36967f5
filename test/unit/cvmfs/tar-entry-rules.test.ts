/** The shared tar entry rules (cvmfs/tar/entry-rules.ts), one case per rule. */
import t from 'tap';
import type tar from 'tar-stream';
import { checkEntry, entryPath, isValidName, nameRole, type TarViolation } from '../../../cvmfs/tar/index.js';

class Refused extends Error { constructor(readonly code: TarViolation, msg: string) { super(msg); } }
const fail = (v: TarViolation, m: string) => new Refused(v, m);
const header = (h: Partial<tar.Header>): tar.Header => ({ name: 'x', type: 'file', mode: 0o644, ...h }) as tar.Header;

t.test('names', async (t) => {
  t.same(entryPath('./a//b/./c', fail).parts, ['a', 'b', 'c'], 'empty and . components dropped');
  t.throws(() => entryPath('a/../b', fail), { code: 'path-escape' });
  t.throws(() => entryPath('/etc/passwd', fail), { code: 'path-escape' });
  t.throws(() => entryPath('a\0b', fail), { code: 'bad-name', message: /\\0/ });
  t.throws(() => entryPath('x'.repeat(256), fail), { code: 'name-too-long' });
  t.doesNotThrow(() => entryPath('x'.repeat(255), fail), '255 bytes is the limit');
  t.throws(() => entryPath(Array.from({ length: 25 }, () => 'y'.repeat(200)).join('/'), fail), { code: 'path-too-long' });
  t.throws(() => entryPath('a', fail, { prefixBytes: 4095 }), { code: 'path-too-long' }, 'the prefix counts');
  for (const n of ['', '.', '..', 'a/b', 'a\0', 'z'.repeat(256)]) t.notOk(isValidName(n), `${JSON.stringify(n)} is no name`);
  t.ok(isValidName('...'));
});

t.test('whiteouts', async (t) => {
  t.same(nameRole('.wh.foo'), { kind: 'whiteout', target: 'foo' });
  t.same(nameRole('.wh...x'), { kind: 'whiteout', target: '..x' });
  t.same(nameRole('.wh..wh..opq'), { kind: 'opaque' });
  t.same(nameRole('.wh..wh.plnk'), { kind: 'aufs-meta' });
  for (const n of ['.wh.', '.wh..', '.wh...']) {
    t.equal(nameRole(n), undefined, `${n} names no file`);
    t.throws(() => entryPath(`d/${n}`, fail), { code: 'bad-whiteout', message: new RegExp(`d/${n.replace(/\./g, '\\.')}`) });
  }
  t.throws(() => entryPath('.wh.d/child', fail), { code: 'bad-whiteout', message: /cannot be a directory/ });
  t.same(entryPath('.wh..wh.plnk/123.4', fail).role, { kind: 'aufs-meta' }, 'AUFS hardlink store');
});

t.test('links, owners, modes, xattrs', async (t) => {
  t.throws(() => checkEntry(header({ type: 'symlink', linkname: '' }), fail), { code: 'bad-name' });
  t.equal(checkEntry(header({ type: 'symlink', linkname: '../../etc' }), fail).symlinkTarget, '../../etc', 'symlink targets are verbatim');
  t.throws(() => checkEntry(header({ type: 'link', linkname: '../x' }), fail), { code: 'path-escape', message: /hardlink target of "x"/ });
  t.throws(() => checkEntry(header({ uid: 0xffffffff }), fail), { code: 'bad-owner' });
  t.throws(() => checkEntry(header({ pax: { uid: '-1' } }), fail), { code: 'bad-owner' });
  t.equal(checkEntry(header({ uid: 5, pax: { uid: '70000' } }), fail).uid, 70000, 'PAX uid wins');
  t.equal(checkEntry(header({ mode: 0o170777 }), fail).mode, 0o777, 'only permission bits');
  t.throws(() => checkEntry(header({ type: 'socket' as tar.Header['type'] }), fail), { code: 'unsupported-type' });
  t.equal(checkEntry(header({ type: 'contiguous-file' }), fail).type, 'file');
  t.throws(() => checkEntry(header({ pax: { 'SCHILY.xattr.trusted.overlay.origin': 'x' } }), fail), { code: 'bad-xattr' });
  t.throws(() => checkEntry(header({ pax: { 'SCHILY.xattr.': 'x' } }), fail), { code: 'bad-xattr' });
  t.throws(() => checkEntry(header({ pax: { 'LIBARCHIVE.xattr.%zz': 'eA==' } }), fail), { code: 'bad-xattr' });
  const e = checkEntry(header({ pax: { 'SCHILY.xattr.security.capability': '\x01\x00\x00\x02', mtime: '1700000000.123456789' } }), fail);
  t.same([...e.xattrs.get('security.capability')!], [1, 0, 0, 2], 'binary xattr bytes');
  t.same([e.mtimeSeconds, e.mtimeNanos], [1700000000, 123456789]);
});
