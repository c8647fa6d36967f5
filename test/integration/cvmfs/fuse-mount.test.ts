import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import os from 'node:os';
import t, { type Test } from 'tap';
import { openRepository, serveRepository } from '../../../cvmfs/index.js';
import { mountRepository } from '../../../cvmfs/fuse/index.js';
import { faultyServer } from '../../lib/faulty-server.js';
import { skipWithoutFuse } from '../../lib/fuse-gate.js';
import { makeRepo } from '../../lib/repo-fixture.js';
import { tarOf } from '../../lib/tar-of.js';

const run = promisify(execFile);
/** Everything that touches the mount runs in a child process: this process serves it. */
const sh = (cmd: string) => run('bash', ['-c', cmd], { maxBuffer: 1 << 26 }).then((r) => r.stdout, (e: { code: number; stdout: string; stderr: string }) => {
  throw Object.assign(new Error(`${cmd}: exit ${e.code}: ${e.stderr}`), { stdout: e.stdout, stderr: e.stderr });
});

/** A scratch directory torn down after the mount it holds: unmount first, then remove. */
function scratch(t: Test): { base: string; onTeardown: (fn: () => Promise<unknown> | unknown) => void } {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'fuse-test-'));
  const steps: (() => Promise<unknown> | unknown)[] = [];
  t.teardown(async () => {
    for (const fn of steps.reverse()) await Promise.resolve(fn()).catch(() => {});
    fs.rmSync(base, { recursive: true, force: true });
  });
  return { base, onTeardown: (fn) => { steps.push(fn); } };
}

const COMPARE = `
import os, sys, json
a, b = sys.argv[1], sys.argv[2]
out = []
for root, dirs, files in os.walk(a):
    for n in dirs + files:
        pa = os.path.join(root, n); pb = os.path.join(b, os.path.relpath(pa, a))
        sa, sb = os.lstat(pa), os.lstat(pb)
        for f in ('st_mode', 'st_uid', 'st_gid', 'st_nlink'):
            if getattr(sa, f) != getattr(sb, f): out.append(f'{pb}: {f} {getattr(sa, f)} != {getattr(sb, f)}')
        if int(sa.st_mtime) != int(sb.st_mtime): out.append(f'{pb}: mtime')
        if not os.path.isdir(pa) and sa.st_size != sb.st_size: out.append(f'{pb}: size')
        if os.path.islink(pa):
            if os.readlink(pa) != os.readlink(pb): out.append(f'{pb}: link target')
            continue
        for x in os.listxattr(pa, follow_symlinks=False):
            if not x.startswith('user.'): continue
            try: vb = os.getxattr(pb, x)
            except OSError as e: out.append(f'{pb}: xattr {x} missing ({e})'); continue
            if vb != os.getxattr(pa, x): out.append(f'{pb}: xattr {x} differs')
print(json.dumps(out))
`;

t.test('round trip through a real FUSE mount: diff -r, modes, owners, links, xattrs, inodes', async (t) => {
  if (skipWithoutFuse(t)) return;
  const { base, onTeardown } = scratch(t);
  fs.writeFileSync(path.join(base, 'compare.py'), COMPARE);
  const src = path.join(base, 'src');
  fs.mkdirSync(path.join(src, 'etc/deep/a/b/c/d/e/f/g'), { recursive: true });
  fs.writeFileSync(path.join(src, 'etc/deep/a/b/c/d/e/f/g/leaf'), 'deep');
  for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(src, 'etc', `f${i}`), randomBytes(i * 997));
  fs.writeFileSync(path.join(src, 'big.bin'), randomBytes(24 * 1024 * 1024 + 5));
  fs.writeFileSync(path.join(src, 'empty'), '');
  fs.linkSync(path.join(src, 'etc/f3'), path.join(src, 'hardlink-to-f3'));
  fs.symlinkSync('etc/f1', path.join(src, 'rel-link'));
  fs.symlinkSync('/nonexistent/abs', path.join(src, 'abs-link'));
  fs.chmodSync(path.join(src, 'etc/f2'), 0o4750);
  fs.chownSync(path.join(src, 'etc/f4'), 1234, 5678);
  fs.utimesSync(path.join(src, 'etc/f5'), 1_000_000_000, 1_000_000_000);
  await sh(`setfattr -n user.color -v blue '${src}/etc/f6' && setfattr -n user.bin -v 0x00ff01 '${src}/etc/f7'`);
  const tgz = await run('tar', ['--xattrs', '--xattrs-include=user.*', '-C', src, '-czf', path.join(base, 'l.tgz'), '.']);
  void tgz;
  const repo = await makeRepo(path.join(base, 'r'), 'fuse.example.org');
  await repo.ingest('/layers/x', fs.readFileSync(path.join(base, 'l.tgz')));
  await repo.ingest('/vars', await tarOf([{ type: 'symlink', name: 'arch', target: '$(CVMFS_TEST_ARCH:-amd64)/lib' }]));
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  onTeardown(() => srv.close());
  const r = await openRepository({ fqrn: repo.fqrn, servers: [srv.url], cacheDir: path.join(base, 'cache'), env: { CVMFS_TEST_ARCH: 'riscv' },
    publicKeys: [{ name: 'pub', pem: fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8') }] });
  onTeardown(() => r.close());
  const mnt = path.join(base, 'mnt');
  fs.mkdirSync(mnt);
  const m = await mountRepository(r, { mountpoint: mnt });
  onTeardown(() => m.unmount());
  const mounts = await sh('cat /proc/self/mounts');
  t.match(mounts, new RegExp(`${mnt} fuse\\.cvmfs ro,`), 'mounted read-only');

  const diff = await sh(`diff -r --no-dereference -x .cvmfscatalog '${src}' '${mnt}/layers/x' && echo SAME`);
  t.match(diff, /SAME/, 'diff -r finds no difference');
  const problems = JSON.parse(await sh(`python3 '${base}/compare.py' '${src}' '${mnt}/layers/x'`)) as string[];
  t.same(problems, [], 'modes, owners, link counts, mtimes, link targets and xattrs match');
  const ino = await sh(`stat -c '%i' '${mnt}' '${mnt}/layers/x/etc/f3' '${mnt}/layers/x/hardlink-to-f3' '${mnt}/layers/x/etc/f3'`);
  const [root, f3, h3, f3again] = ino.trim().split('\n').map(Number);
  t.equal(root, 256, 'root inode 256');
  t.equal(f3, h3, 'hardlinks share an inode');
  t.equal(f3, f3again, 'inodes are stable');
  t.equal((await sh(`readlink '${mnt}/vars/arch'`)).trim(), 'riscv/lib', '$(VAR:-default) expanded on readlink');
  // Linux refuses user.* xattrs on symlinks before FUSE sees the request: user.rawlink is API-only
  // (covered in reader.test.ts).
  const counters = JSON.parse(await sh(`getfattr --only-values -n user.counters '${mnt}'`));
  t.ok(counters.objectsFetched > 0, 'counters readable through the user.counters xattr');
  t.match(await sh(`df -i '${mnt}' | tail -1`), /\s\d+\s+\d+\s+0\s/, 'statfs reports the entry count');
  await t.rejects(sh(`touch '${mnt}/layers/x/newfile'`), /Read-only file system|Permission denied/, 'read-only');
  const seek = await sh(`dd if='${mnt}/layers/x/big.bin' bs=1 skip=20000000 count=16 status=none | od -An -tx1`);
  const expect = fs.readFileSync(path.join(src, 'big.bin')).subarray(20_000_000, 20_000_016);
  t.equal(seek.replace(/\s+/g, ''), expect.toString('hex'), 'read at an offset of a chunked file');
  await m.unmount();
  t.notMatch(await sh('cat /proc/self/mounts'), mnt, 'unmounted');
});

t.test('corrupted-object through FUSE: the read fails with EIO and no wrong byte is returned', async (t) => {
  if (skipWithoutFuse(t)) return;
  const { base, onTeardown } = scratch(t);
  const repo = await makeRepo(path.join(base, 'r'), 'eio.example.org');
  await repo.ingest('/l', await tarOf([{ type: 'file', name: 'good', content: 'fine' }, { type: 'file', name: 'bad', content: randomBytes(5000) }]));
  const srv = await faultyServer(repo.dir, repo.fqrn);
  onTeardown(() => srv.close());
  const r = await openRepository({ fqrn: repo.fqrn, servers: [srv.url], cacheDir: path.join(base, 'cache'), maxRetries: 0,
    publicKeys: [{ name: 'pub', pem: fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8') }] });
  onTeardown(() => r.close());
  srv.corrupt.add((await r.stat('/l/bad')).hash!.slice(2));
  const mnt = path.join(base, 'mnt');
  fs.mkdirSync(mnt);
  const m = await mountRepository(r, { mountpoint: mnt });
  onTeardown(() => m.unmount());
  t.equal(await sh(`cat '${mnt}/l/good'`), 'fine');
  const err = await sh(`cat '${mnt}/l/bad' > '${base}/out'`).then(() => null, (e: { stderr: string }) => e.stderr);
  t.match(err, /Input\/output error/, 'EIO');
  t.equal(fs.statSync(path.join(base, 'out')).size, 0, 'no byte reached the reader');
});

t.test('cvmfs-repo mount: refuses a tampered repository with a clear message; mounts and unmounts on SIGTERM', async (t) => {
  if (skipWithoutFuse(t)) return;
  const cli = path.resolve('dist/cvmfs/cli.js');
  if (!fs.existsSync(cli)) { t.fail('dist/cvmfs/cli.js missing: run "make build" first'); return; }
  const { base, onTeardown } = scratch(t);
  const repo = await makeRepo(path.join(base, 'r'), 'cli.example.org');
  await repo.ingest('/l', await tarOf([{ type: 'file', name: 'hello', content: 'hello\n' }]));
  const srv = await faultyServer(repo.dir, repo.fqrn);
  onTeardown(() => srv.close());
  const mnt = path.join(base, 'mnt');
  fs.mkdirSync(mnt);
  const args = ['mount', '--url', srv.url, '--name', repo.fqrn, '--pubkey', path.join(repo.keys, `${repo.fqrn}.pub`), '--cache', path.join(base, 'cache'), mnt];
  const manifest = fs.readFileSync(path.join(repo.dir, '.cvmfspublished'));
  const tampered = Buffer.from(manifest);
  tampered.writeUInt8(tampered[manifest.indexOf('\nT') + 3]! ^ 1, manifest.indexOf('\nT') + 3);
  srv.override.set('.cvmfspublished', tampered);
  const refused = await run(process.execPath, [cli, ...args], { timeout: 30_000 }).then(() => null, (e: { code: number; stderr: string }) => e);
  t.equal(refused?.code, 1, 'exit 1');
  t.match(refused?.stderr, /CVMFS_BAD_SIGNATURE: manifest body does not match its hash line/, 'says why');
  srv.override.clear();

  const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  onTeardown(async () => { if (child.exitCode === null) { child.kill('SIGKILL'); await sh(`fusermount -uz '${mnt}' || true`); } });
  let out = '';
  child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  for (let i = 0; i < 100 && !out.includes('mounted'); i++) await new Promise((r) => setTimeout(r, 100));
  t.match(out, /mounted cli\.example\.org revision 2/);
  t.equal(await sh(`cat '${mnt}/l/hello'`), 'hello\n');
  child.kill('SIGTERM');
  const code = await new Promise((r) => child.once('exit', r));
  t.equal(code, 0, 'clean exit on SIGTERM');
  t.match(out, /unmounted/);
  t.notMatch(await sh('cat /proc/self/mounts'), mnt, 'mount gone');
});
