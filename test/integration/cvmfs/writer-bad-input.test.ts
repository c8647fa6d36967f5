import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { Readable } from 'node:stream';
import t, { type Test } from 'tap';
import { compress } from 'zstd-napi';
import { DirStorage, ingest, initRepository, type CvmfsErrorCode } from '../../../cvmfs/index.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import { paxRecords, rawHeader, tarOf } from '../../lib/tar-of.js';

const good = () => tarOf([{ type: 'file', name: 'keep', content: 'kept' }]);

/** Ingests `input` expecting `code`; then the repository must be exactly at its previous revision. */
async function rejects(t: Test, repo: Fixture, name: string, input: Buffer | Readable, code: CvmfsErrorCode, message?: RegExp) {
  const before = repo.manifest();
  await t.rejects(repo.ingest('/layers/bad', input), { code, ...(message ? { message } : {}) }, `${name}: ${code}`);
  t.ok(repo.manifest().equals(before), `${name}: manifest unchanged`);
  const staging = fs.readdirSync(path.join(repo.dir, 'data/txn'));
  t.same(staging, [], `${name}: no staging leftovers, lock released`);
}

t.test('bad tar input is refused with a coded error naming the entry; the repository stays at its revision', async (t) => {
  const repo = await makeRepo(t.testdir());
  await repo.ingest('/layers/ok', await good());
  const okTar = await tarOf([{ type: 'file', name: 'a', content: 'x'.repeat(3000) }, { type: 'file', name: 'b', content: 'y' }]);

  await rejects(t, repo, 'truncated tar', okTar.subarray(0, 1200), 'CVMFS_TAR_CORRUPT', /truncated or corrupt/);
  await rejects(t, repo, 'tar without end marker', await tarOf([{ type: 'file', name: 'a', content: 'x' }], { omitEndMarker: true }), 'CVMFS_TAR_CORRUPT', /end-of-archive/);
  const badSum = Buffer.from(okTar); badSum.writeUInt8(badSum[0]! ^ 0x55, 0);
  await rejects(t, repo, 'corrupt tar header', badSum, 'CVMFS_TAR_CORRUPT');
  const gz = gzipSync(okTar);
  await rejects(t, repo, 'truncated gzip', gz.subarray(0, gz.length - 10), 'CVMFS_TAR_CORRUPT', /gzip/);
  const badGz = Buffer.from(gz); badGz.writeUInt16BE(badGz.readUInt16BE(20) ^ 0xffff, 20);
  await rejects(t, repo, 'corrupt gzip', badGz, 'CVMFS_TAR_CORRUPT', /gzip/);
  const zs = compress(okTar);
  await rejects(t, repo, 'truncated zstd', zs.subarray(0, zs.length - 8), 'CVMFS_TAR_CORRUPT', /zstd/);
  await rejects(t, repo, 'empty input', Buffer.alloc(0), 'CVMFS_TAR_CORRUPT', /empty/);
  await rejects(t, repo, 'not a tar', Buffer.from('hello world, this is not a tar archive at all\n'.repeat(20)), 'CVMFS_TAR_CORRUPT');

  await rejects(t, repo, 'dot-dot entry', await tarOf([{ type: 'file', name: 'a/../../etc/passwd', content: 'x' }]), 'CVMFS_TAR_PATH_ESCAPE', /a\/\.\.\/\.\.\/etc\/passwd/);
  await rejects(t, repo, 'absolute path', await tarOf([{ type: 'file', name: '/etc/passwd', content: 'x' }]), 'CVMFS_TAR_PATH_ESCAPE', /absolute/);
  await rejects(t, repo, 'write through a symlinked parent', await tarOf([
    { type: 'symlink', name: 'up', target: '../..' }, { type: 'file', name: 'up/evil', content: 'x' }]), 'CVMFS_TAR_PATH_ESCAPE', /"up\/evil".*symlink/);
  await rejects(t, repo, 'write through an absolute symlink', await tarOf([
    { type: 'symlink', name: 'etc', target: '/etc' }, { type: 'directory', name: 'etc/cron.d' }]), 'CVMFS_TAR_PATH_ESCAPE', /etc\/cron\.d/);
  await rejects(t, repo, 'hardlink target escaping', await tarOf([{ type: 'link', name: 'h', target: '../outside' }]), 'CVMFS_TAR_PATH_ESCAPE', /hardlink target of "h"/);
  await rejects(t, repo, 'hardlink to a missing target', await tarOf([{ type: 'link', name: 'h', target: 'nowhere' }]), 'CVMFS_TAR_HARDLINK_MISSING', /"h" points to "nowhere"/);
  await rejects(t, repo, 'hardlink to a later entry', await tarOf([{ type: 'link', name: 'h', target: 'later' }, { type: 'file', name: 'later' }]), 'CVMFS_TAR_HARDLINK_MISSING');
  await rejects(t, repo, 'NUL in a name', await tarOf([{ type: 'file', name: 'x', content: 'x', pax: { path: Buffer.from('bad\0name') } }]), 'CVMFS_TAR_BAD_NAME', /NUL/);
  await rejects(t, repo, 'name over 255 bytes', await tarOf([{ type: 'file', name: `d/${'n'.repeat(256)}`, content: 'x' }]), 'CVMFS_TAR_NAME_TOO_LONG', /256 bytes/);
  const deep = Array.from({ length: 40 }, () => 'p'.repeat(120)).join('/');
  await rejects(t, repo, 'path over 4096 bytes', await tarOf([{ type: 'file', name: deep, content: 'x' }]), 'CVMFS_TAR_PATH_TOO_LONG');
  await rejects(t, repo, 'xattr value over 255 bytes', await tarOf([{ type: 'file', name: 'x', content: 'x', pax: { 'SCHILY.xattr.user.big': 'v'.repeat(300) } }]), 'CVMFS_BAD_XATTR', /entry "x"/);
  const sparse = Buffer.concat([rawHeader('sparse', 'S', 0), Buffer.alloc(1024)]);
  await rejects(t, repo, 'unsupported entry type', sparse, 'CVMFS_TAR_UNSUPPORTED_ENTRY');
  await rejects(t, repo, 'file over a file-parent', await tarOf([{ type: 'file', name: 'f', content: 'x' }, { type: 'file', name: 'f/g', content: 'y' }]), 'CVMFS_PATH_CONFLICT');

  const read = await repo.read();
  t.same(read.problems, [], 'repository still verifies');
  t.equal(read.revision, 2, 'still revision 2');
  t.equal(read.entries.get('/layers/ok/keep')!.content!.toString(), 'kept');
  t.notOk(read.entries.has('/layers/bad'), 'nothing referenced at the failed path');
  t.ok(paxRecords({ a: 'b' }).length > 0);
});

t.test('wrong keys, unknown hash algorithm, bad paths, concurrent writers', async (t) => {
  const base = t.testdir();
  const repo = await makeRepo(path.join(base, 'one'), 'one.example.org');
  const other = await makeRepo(path.join(base, 'two'), 'two.example.org');
  const tar = await good();
  const before = repo.manifest();
  await t.rejects(ingest({ storage: repo.storage, keysDir: other.keys, path: '/x', input: Readable.from([tar]) }),
    { code: 'CVMFS_KEYS_MISSING', message: /one\.example\.org\.(key|crt) not found/ }, 'key directory of another repository');
  for (const ext of ['key', 'crt']) fs.copyFileSync(path.join(other.keys, `two.example.org.${ext}`), path.join(base, `one.example.org.${ext}`));
  await t.rejects(ingest({ storage: repo.storage, keysDir: base, path: '/x', input: Readable.from([tar]) }),
    { code: 'CVMFS_KEYS_MISMATCH', message: /not listed in the whitelist/ }, 'keys named right but not whitelisted');
  fs.copyFileSync(path.join(repo.keys, 'one.example.org.key'), path.join(base, 'one.example.org.key'));
  await t.rejects(ingest({ storage: repo.storage, keysDir: base, path: '/x', input: Readable.from([tar]) }),
    { code: 'CVMFS_KEYS_MISMATCH', message: /does not belong/ }, 'certificate of another key');
  await t.rejects(ingest({ storage: repo.storage, keysDir: repo.keys, path: 'relative', input: Readable.from([tar]) }), { code: 'CVMFS_BAD_ARGUMENT' });
  await t.rejects(ingest({ storage: repo.storage, keysDir: repo.keys, path: '/', input: Readable.from([tar]) }), { code: 'CVMFS_BAD_ARGUMENT' });
  await t.rejects(ingest({ storage: repo.storage, keysDir: repo.keys, path: '/a/../b', input: Readable.from([tar]) }), { code: 'CVMFS_BAD_ARGUMENT' });
  await repo.ingest('/file-parent', await tarOf([{ type: 'file', name: 'f', content: 'x' }]));
  await t.rejects(repo.ingest('/file-parent/f/below', tar), { code: 'CVMFS_PATH_CONFLICT', message: /\/file-parent\/f is not a directory/ });
  t.equal(repo.manifest().subarray(0, 20).equals(before.subarray(0, 20)), false, 'the one good ingest moved on');

  await t.rejects(initRepository({ storage: new DirStorage(path.join(base, 'x')), keysDir: path.join(base, 'xk'), fqrn: 'x.example.org', algo: 'md5' as never }),
    { code: 'CVMFS_UNKNOWN_HASH_ALGORITHM' });
  await t.rejects(initRepository({ storage: new DirStorage(path.join(base, 'y')), keysDir: path.join(base, 'yk'), fqrn: 'y.example.org', algo: 'rmd160' }),
    { code: 'CVMFS_UNKNOWN_HASH_ALGORITHM' });
  await t.rejects(initRepository({ storage: repo.storage, keysDir: path.join(base, 'zk'), fqrn: 'one.example.org' }), { code: 'CVMFS_REPO_EXISTS' });
  await t.rejects(initRepository({ storage: new DirStorage(path.join(base, 'w')), keysDir: repo.keys, fqrn: 'one.example.org' }), { code: 'CVMFS_KEYS_EXIST' });
  await t.rejects(initRepository({ storage: new DirStorage(path.join(base, 'v')), keysDir: path.join(base, 'v', 'keys'), fqrn: 'v.example.org' }),
    { code: 'CVMFS_BAD_ARGUMENT', message: /inside the served tree/ });
  await t.rejects(initRepository({ storage: new DirStorage(path.join(base, 'u')), keysDir: path.join(base, 'uk'), fqrn: 'not a name' }), { code: 'CVMFS_BAD_ARGUMENT' });

  const slow = new Readable({ read() {} });
  const first = repo.ingest('/slow', slow);
  await new Promise((r) => setTimeout(r, 200));
  await t.rejects(repo.ingest('/other', tar), { code: 'CVMFS_REPO_LOCKED', message: /another process/ }, 'second writer refused');
  slow.push(tar);
  slow.push(null);
  t.equal((await first).revision, 3, 'first writer finishes');
  t.same((await repo.read()).problems, []);
});

t.test('interrupted-ingest: a writer killed mid-stream leaves the previous revision served; the next writer takes over the lock', async (t) => {
  const repo = await makeRepo(t.testdir());
  await repo.ingest('/before', await good());
  const before = repo.manifest();
  const cli = path.resolve('dist/cvmfs/cli.js');
  if (!fs.existsSync(cli)) { t.fail('dist/cvmfs/cli.js missing: run "make build" first'); return; }
  const child = spawn(process.execPath, [cli, 'ingest', '--dir', repo.dir, '--keys', repo.keys, '--path', '/killed', '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
  const big = await tarOf(Array.from({ length: 40 }, (_, i) => ({ type: 'file' as const, name: `f${i}`, content: Buffer.alloc(1 << 20, i) })));
  child.stdin.write(big.subarray(0, big.length / 2));
  await new Promise((r) => setTimeout(r, 1500));
  t.ok(fs.existsSync(path.join(repo.dir, 'data/txn/writer.lock')), 'the writer holds the lock');
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  t.ok(repo.manifest().equals(before), 'manifest untouched by the killed writer');
  const read = await repo.read();
  t.same(read.problems, []);
  t.notOk(read.entries.has('/killed'));
  const r = await repo.ingest('/after', await good());
  t.equal(r.revision, 3, 'the stale lock of a dead process is taken over');
  t.same(fs.readdirSync(path.join(repo.dir, 'data/txn')), [], 'staging swept');
});
