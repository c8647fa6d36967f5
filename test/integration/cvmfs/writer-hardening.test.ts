/**
 * Holes in the writer: key directories reached through symlinks, over-long --path, the stale
 * writer-lock takeover racing itself, a writer publishing after its lock was taken over, and
 * uncoded errors printed by the CLI.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import t from 'tap';
import { DirStorage, ingest, initRepository, normalizeRepoPath, resign, type WriterLock } from '../../../cvmfs/index.js';
import type { LockStep } from '../../../cvmfs/writer/storage-dir.js';
import { makeRepo } from '../../lib/repo-fixture.js';
import { tarOf } from '../../lib/tar-of.js';

const good = () => tarOf([{ type: 'file', name: 'keep', content: 'kept' }]);
const lockFile = (dir: string) => path.join(dir, 'data/txn/writer.lock');
/** What is in data/txn besides the lock itself: must be nothing once the lock calls have settled. */
const sideFiles = (dir: string) => fs.readdirSync(path.join(dir, 'data/txn')).filter((n) => n !== 'writer.lock');

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await new Promise((r) => child.once('exit', r));
  return child.pid!;
}

/** Leaves a lock as a writer that died leaves it. */
async function staleLock(dir: string, pid?: number): Promise<string> {
  const content = `${pid ?? await deadPid()} ${randomBytes(16).toString('hex')} cvmfs-repo ingest /died\n`;
  fs.writeFileSync(lockFile(dir), content);
  return content;
}

/** A gate a lock hook waits on, with a promise that tells when the hook got there. */
function gate() {
  let open!: () => void, arrived!: () => void;
  const opened = new Promise<void>((r) => { open = r; });
  const reached = new Promise<void>((r) => { arrived = r; });
  return { open, reached, wait: () => { arrived(); return opened; } };
}

/** Resolves when `p` settles or `reached` resolves, whichever is first; tells which. */
const first = (reached: Promise<void>, p: Promise<unknown>) =>
  Promise.race([reached.then(() => 'hook' as const), p.then(() => 'settled' as const, () => 'settled' as const)]);

t.test('a key directory in the served tree is refused through symlinks too; nothing is written', async (t) => {
  const base = t.testdir();
  // The key directory reaches into the served tree through a symlink (dangling: the tree does not exist yet).
  fs.symlinkSync(path.join(base, 'repo1'), path.join(base, 'into-repo1'));
  await t.rejects(initRepository({ storage: new DirStorage(path.join(base, 'repo1')), keysDir: path.join(base, 'into-repo1', 'keys'), fqrn: 'one.example.org' }),
    { code: 'CVMFS_BAD_ARGUMENT', message: /inside the served tree.*through symlinks/ }, 'keys through a symlink into a tree yet to be made');
  t.notOk(fs.existsSync(path.join(base, 'repo1')), 'nothing created in the served tree');

  // The same with an existing (empty) tree, and a symlink to a directory inside it.
  fs.mkdirSync(path.join(base, 'repo2', 'sub'), { recursive: true });
  fs.symlinkSync(path.join(base, 'repo2', 'sub'), path.join(base, 'sub-link'));
  await t.rejects(initRepository({ storage: new DirStorage(path.join(base, 'repo2')), keysDir: path.join(base, 'sub-link'), fqrn: 'two.example.org' }),
    { code: 'CVMFS_BAD_ARGUMENT', message: /inside the served tree/ }, 'keys are a symlink to a directory of the tree');
  t.same(fs.readdirSync(path.join(base, 'repo2'), { recursive: true }), ['sub'], 'nothing written into the served tree');

  // A relative symlink whose target climbs with "..".
  fs.mkdirSync(path.join(base, 'elsewhere'));
  fs.symlinkSync('../repo2/sub', path.join(base, 'elsewhere', 'up'));
  await t.rejects(initRepository({ storage: new DirStorage(path.join(base, 'repo2')), keysDir: path.join(base, 'elsewhere', 'up', 'k'), fqrn: 'two.example.org' }),
    { code: 'CVMFS_BAD_ARGUMENT', message: /inside the served tree/ }, 'relative symlink with .. into the tree');

  // The served tree is reached through a symlink; the key directory is given by its real path.
  fs.mkdirSync(path.join(base, 'real3'));
  fs.symlinkSync(path.join(base, 'real3'), path.join(base, 'repo3'));
  await t.rejects(initRepository({ storage: new DirStorage(path.join(base, 'repo3')), keysDir: path.join(base, 'real3', 'keys'), fqrn: 'three.example.org' }),
    { code: 'CVMFS_BAD_ARGUMENT', message: /inside the served tree/ }, 'served tree through a symlink');
  t.same(fs.readdirSync(path.join(base, 'real3')), [], 'nothing written into the served tree');

  // Allowed: the served tree inside the key directory (the keys sit above what is served).
  const st = await initRepository({ storage: new DirStorage(path.join(base, 'k4', 'repo')), keysDir: path.join(base, 'k4'), fqrn: 'four.example.org' });
  t.equal(st.manifest.revision, 1, 'a tree inside the key directory is fine');
  t.notOk(fs.readdirSync(path.join(base, 'k4', 'repo')).some((n) => n.includes('four.example.org')), 'keys not in the tree');
});

t.test('ingest and resign refuse keys that are in the served tree through a symlink', async (t) => {
  const base = t.testdir();
  const repo = await makeRepo(base);
  // The operator moved the keys into the tree and points --keys at them through a symlink.
  fs.cpSync(repo.keys, path.join(repo.dir, 'secret'), { recursive: true });
  fs.symlinkSync(path.join(repo.dir, 'secret'), path.join(base, 'keys-link'));
  const keysDir = path.join(base, 'keys-link');
  const manifest = repo.manifest();
  const whitelist = fs.readFileSync(path.join(repo.dir, '.cvmfswhitelist'));
  await t.rejects(ingest({ storage: repo.storage, keysDir, path: '/x', input: Readable.from([await good()]) }),
    { code: 'CVMFS_BAD_ARGUMENT', message: /inside the served tree/ }, 'ingest');
  await t.rejects(resign({ storage: repo.storage, keysDir }), { code: 'CVMFS_BAD_ARGUMENT', message: /inside the served tree/ }, 'resign');
  t.ok(repo.manifest().equals(manifest), 'manifest unchanged');
  t.ok(fs.readFileSync(path.join(repo.dir, '.cvmfswhitelist')).equals(whitelist), 'whitelist unchanged');
  t.same(sideFiles(repo.dir), [], 'no lock or staging leftovers');
  t.notOk(fs.existsSync(lockFile(repo.dir)));
});

t.test('ingest --path: components over 255 bytes and paths over 4096 bytes are refused', async (t) => {
  const repo = await makeRepo(t.testdir());
  await repo.ingest('/layers/ok', await good());
  const before = repo.manifest();
  const long = `/layers/${'n'.repeat(256)}`;
  await t.rejects(repo.ingest(long, await good()), { code: 'CVMFS_BAD_ARGUMENT', message: /the name "n{40}…" is 256 bytes; at most 255/ }, '256-byte component');
  await t.rejects(repo.ingest(`/${'é'.repeat(128)}`, await good()), { code: 'CVMFS_BAD_ARGUMENT', message: /256 bytes/ }, '128 two-byte characters are 256 bytes');
  const p4097 = `${`/${'p'.repeat(255)}`.repeat(15)}/${'q'.repeat(254)}/c`;
  t.equal(Buffer.byteLength(p4097), 4097);
  await t.rejects(repo.ingest(p4097, await good()), { code: 'CVMFS_BAD_ARGUMENT', message: /is 4097 bytes; at most 4096/ }, '4097-byte path');
  t.ok(repo.manifest().equals(before), 'manifest unchanged');
  t.same(sideFiles(repo.dir), [], 'no staging leftovers');
  const read = await repo.read();
  t.same(read.problems, []);
  t.equal(read.revision, 2, 'still revision 2');

  t.equal(normalizeRepoPath(`//a/${'n'.repeat(255)}/`), `/a/${'n'.repeat(255)}`, '255 bytes is fine');
  const p4096 = `${`/${'p'.repeat(255)}`.repeat(15)}/${'q'.repeat(255)}`;
  t.equal(normalizeRepoPath(p4096).length, 4096, '4096 bytes is fine');
  t.equal(normalizeRepoPath(`/x/${p4096.slice(3)}//`), `/x/${p4096.slice(3)}`, 'measured after normalisation');
});

t.test('stale lock takeover: a takeover never removes the lock another writer just took', async (t) => {
  const repo = await makeRepo(t.testdir());
  const dir = repo.dir;

  // B sees the stale lock; before B acts, A takes it over; then B goes on and moves A's lock aside.
  const stale = await staleLock(dir);
  const g = gate();
  const b = new DirStorage(dir, { lockHook: (s: LockStep) => (s === 'stale-seen' ? g.wait() : undefined) });
  const pB = b.lock('writer B');
  t.equal(await first(g.reached, pB), 'hook', 'B stops after seeing the stale lock');
  t.equal(fs.readFileSync(lockFile(dir), 'utf8'), stale);
  const lockA = await new DirStorage(dir).lock('writer A');
  t.match(fs.readFileSync(lockFile(dir), 'utf8'), /^\d+ [0-9a-f]{32} writer A\n$/, 'A took over the stale lock');
  g.open();
  await t.rejects(pB, { code: 'CVMFS_REPO_LOCKED', message: /another process \(pid \d+: writer A\)/ }, 'B finds A\'s lock put back');
  await t.resolves(lockA.verify(), 'A still holds its lock');
  t.match(fs.readFileSync(lockFile(dir), 'utf8'), /writer A/);
  t.same(sideFiles(dir), [], 'no side files left');
  await lockA.release();
  t.notOk(fs.existsSync(lockFile(dir)), 'released');
});

t.test('stale lock takeover: a lock that cannot be put back is lost, and its holder learns it', async (t) => {
  const repo = await makeRepo(t.testdir());
  const dir = repo.dir;
  await staleLock(dir);
  const seen = gate(), moved = gate();
  const b = new DirStorage(dir, { lockHook: (s: LockStep) => (s === 'stale-seen' ? seen.wait() : moved.wait()) });
  const pB = b.lock('writer B');
  t.equal(await first(seen.reached, pB), 'hook');
  const lockA = await new DirStorage(dir).lock('writer A');
  seen.open();
  t.equal(await first(moved.reached, pB), 'hook', 'B moved A\'s lock aside');
  t.notOk(fs.existsSync(lockFile(dir)), 'no lock in place for a moment');
  const lockC = await new DirStorage(dir).lock('writer C');
  moved.open();
  await t.rejects(pB, { code: 'CVMFS_REPO_LOCKED', message: /writer C/ }, 'B cannot put A\'s lock back over C\'s, and gives up');
  await t.rejects(lockA.verify(), { code: 'CVMFS_REPO_LOCKED', message: /no longer held by this writer.*writer C/ }, 'A knows it lost the lock');
  await t.resolves(lockC.verify(), 'C holds the lock');
  await lockA.release();
  t.match(fs.readFileSync(lockFile(dir), 'utf8'), /writer C/, 'A\'s release leaves C\'s lock alone');
  t.same(sideFiles(dir), [], 'no side files left');
  await lockC.release();
  t.notOk(fs.existsSync(lockFile(dir)));
});

t.test('stale lock takeover under contention: exactly one writer holds the lock each round', async (t) => {
  const repo = await makeRepo(t.testdir());
  const dir = repo.dir;
  const ROUNDS = 60, WRITERS = 8;
  let doubleGrants = 0;
  const dead = await deadPid();
  for (let round = 0; round < ROUNDS; round++) {
    await staleLock(dir, dead);
    // Staggered by up to 3 ms, so that some writers read the stale lock while others already took over.
    const results = await Promise.allSettled(Array.from({ length: WRITERS }, (_, i) =>
      new Promise((r) => setTimeout(r, Math.random() * 3)).then(() => new DirStorage(dir).lock(`writer ${i}`))));
    const granted = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as { code?: string }] : []));
    const holding: WriterLock[] = [];
    for (const l of granted) if (await l.verify().then(() => true, () => false)) holding.push(l);
    if (holding.length !== 1 || !refused.every((e) => e.code === 'CVMFS_REPO_LOCKED') || sideFiles(dir).length) {
      t.fail(`round ${round}: ${holding.length} holders, ${granted.length} granted, refusals ${refused.map((e) => e.code).join(',')}, side files ${sideFiles(dir).join(',')}`);
      return;
    }
    doubleGrants += granted.length - 1; // granted, then lost to the put-back race: verify() says so
    for (const l of granted) await l.release();
    if (fs.existsSync(lockFile(dir))) { t.fail(`round ${round}: lock left after every release`); return; }
  }
  t.pass(`${ROUNDS} rounds of ${WRITERS} writers: one holder each (${doubleGrants} grants later lost and detected by verify)`);
});

t.test('a writer whose lock was taken over does not write the manifest, nor remove the new lock', async (t) => {
  const repo = await makeRepo(t.testdir());
  await repo.ingest('/before', await good());
  const before = repo.manifest();
  const slow = new Readable({ read() {} });
  const pending = repo.ingest('/stolen', slow);
  pending.catch(() => {});
  for (let i = 0; i < 100 && !fs.existsSync(lockFile(repo.dir)); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(fs.existsSync(lockFile(repo.dir)), 'the writer holds the lock');
  // Another writer takes the lock over (as a takeover race can leave it): the file is replaced.
  const thief = `${process.pid} ${randomBytes(16).toString('hex')} thief\n`;
  fs.writeFileSync(`${lockFile(repo.dir)}.x`, thief);
  fs.renameSync(`${lockFile(repo.dir)}.x`, lockFile(repo.dir));
  slow.push(await good());
  slow.push(null);
  await t.rejects(pending, { code: 'CVMFS_REPO_LOCKED', message: /no longer held by this writer \(now pid \d+: thief\)/ });
  t.ok(repo.manifest().equals(before), 'manifest not written');
  t.equal(fs.readFileSync(lockFile(repo.dir), 'utf8'), thief, 'the other writer\'s lock is left in place');
  const read = await repo.read();
  t.same(read.problems, []);
  t.equal(read.revision, 2);
  t.notOk(read.entries.has('/stolen'));

  // resign: the whitelist is not written either.
  fs.rmSync(lockFile(repo.dir));
  class StolenStorage extends DirStorage {
    override async lock(owner: string): Promise<WriterLock> {
      const l = await super.lock(owner);
      fs.writeFileSync(lockFile(this.location), thief);
      return l;
    }
  }
  const whitelist = fs.readFileSync(path.join(repo.dir, '.cvmfswhitelist'));
  await t.rejects(resign({ storage: new StolenStorage(repo.dir), keysDir: repo.keys, days: 7 }), { code: 'CVMFS_REPO_LOCKED' }, 'resign');
  t.ok(fs.readFileSync(path.join(repo.dir, '.cvmfswhitelist')).equals(whitelist), 'whitelist not written');
  fs.rmSync(lockFile(repo.dir));
  t.equal((await repo.ingest('/after', await good())).revision, 3, 'the next writer works');
});

t.test('the CLI prints every error with a code', async (t) => {
  const CLI = path.resolve('dist/cvmfs/cli.js');
  if (!fs.existsSync(CLI)) { t.fail('dist/cvmfs/cli.js missing: run "make build" first'); return; }
  const cli = (args: string[]) => {
    const p = promisify(execFile)(process.execPath, [CLI, ...args]);
    p.child.stdin?.end(); // an empty standard input, should a command read it
    return p.then((r) => ({ code: 0, ...r }), (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }));
  };
  const repo = await makeRepo(t.testdir());
  let r = await cli(['ingest', '--dir', repo.dir, '--keys', repo.keys, '--path', '/x', path.join(repo.dir, 'no-such.tar')]);
  t.equal(r.code, 1);
  t.match(r.stderr, /^cvmfs-repo: CVMFS_IO_FAILED: ENOENT: no such file or directory, open '.*no-such\.tar'\n$/, 'a missing input file');
  r = await cli(['ingest', '--dir', repo.dir, '--keys', repo.keys, '--path', `/${'n'.repeat(301)}`, '-']);
  t.equal(r.code, 1);
  t.match(r.stderr, /^cvmfs-repo: CVMFS_BAD_ARGUMENT: .*301 bytes; at most 255/, 'a 301-byte --path component');
  r = await cli(['ingest', '--dir', repo.dir, '--path', '/x']);
  t.equal(r.code, 2);
  t.match(r.stderr, /^cvmfs-repo: CVMFS_BAD_ARGUMENT: missing --keys/, 'usage errors too');
  r = await cli(['info', '--dir', repo.dir, '--bogus']);
  t.match(r.stderr, /^cvmfs-repo: CVMFS_BAD_ARGUMENT: Unknown option '--bogus'/);
});
