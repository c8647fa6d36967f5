/**
 * The client cache is private to its owner, and unsigned local state never overrides what the
 * server signed. "Another user" is simulated with chown to an unused uid and with g+w/o+w modes.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import t from 'tap';
import { ingest, ObjectCache, openRepository, parseWhitelist, openLetter, serveRepository, type RepositoryOptions } from '../../../cvmfs/index.js';
import { deadUrl, faultyServer } from '../../lib/faulty-server.js';
import { makeRepo, type Fixture } from '../../lib/repo-fixture.js';
import { notRoot, skipLoudly } from '../../lib/skip.js';
import { tarOf } from '../../lib/tar-of.js';

const OTHER_UID = 4242;
const CLI = path.resolve('dist/cvmfs/cli.js');

const pubOf = (repo: Fixture) => fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8');

function opts(repo: Fixture, servers: string[], cacheDir: string, extra: Partial<RepositoryOptions> = {}): RepositoryOptions {
  return { fqrn: repo.fqrn, servers, cacheDir, publicKeys: [{ name: 'repo.pub', pem: pubOf(repo) }],
    timeoutMs: 2000, maxRetries: 0, backoffInitMs: 10, ...extra };
}

async function fileRepo(base: string, fqrn: string, content: string, clock?: { now(): Date }): Promise<Fixture> {
  const repo = await makeRepo(base, fqrn);
  await ingest({ storage: repo.storage, keysDir: repo.keys, path: '/layers/x', input: Readable.from([await tarOf([{ type: 'file', name: 'f', content }])]),
    ...(clock ? { clock } : {}) });
  return repo;
}

const isRealDir = (p: string) => { const st = fs.lstatSync(p); return st.isDirectory() && !st.isSymbolicLink(); };
const modeOf = (p: string) => fs.statSync(p).mode & 0o777;

t.test('txn/, object directories and objects that are symlinks are replaced or dropped, never followed', async (t) => {
  const base = t.testdir();
  const canary = path.join(base, 'canary');
  fs.mkdirSync(canary);
  for (const n of ['precious', 'also-precious']) fs.writeFileSync(path.join(canary, n), `keep ${n}`);
  const cache = path.join(base, 'cache');
  fs.mkdirSync(cache, { mode: 0o700 });
  fs.symlinkSync(canary, path.join(cache, 'txn'));
  fs.symlinkSync(canary, path.join(cache, 'ab'));
  fs.mkdirSync(path.join(cache, '00'), { mode: 0o700 });
  const objectName = '1'.repeat(38);
  fs.symlinkSync(path.join(canary, 'precious'), path.join(cache, '00', objectName));

  const c = await ObjectCache.open(cache);
  t.same(fs.readdirSync(canary).sort(), ['also-precious', 'precious'], 'the canary keeps its files');
  t.equal(fs.readFileSync(path.join(canary, 'precious'), 'utf8'), 'keep precious', 'and their bytes');
  t.ok(isRealDir(path.join(cache, 'txn')), 'txn/ is now a real directory');
  t.ok(isRealDir(path.join(cache, 'ab')), 'ab/ is now a real directory');
  t.equal(modeOf(path.join(cache, 'txn')), 0o700, 'made 0700');
  t.notOk(fs.existsSync(path.join(cache, '00', objectName)), 'a symlinked object is dropped');
  t.notOk(c.lookup(`00${objectName}`), 'and not counted as cached');
  t.equal(c.usedBytes, 0);

  const tmp = c.tempFile();
  const st = fs.lstatSync(tmp);
  t.ok(st.isFile() && st.size === 0 && (st.mode & 0o777) === 0o600, 'scratch files are created (exclusively) at once, 0600');
  await c.abort(tmp);

  fs.writeFileSync(path.join(cache, '02', 'x'.repeat(38)), 'object');
  fs.rmSync(path.join(cache, '02', 'x'.repeat(38)));
  fs.symlinkSync(path.join(canary, 'precious'), path.join(cache, '02', 'x'.repeat(38)));
  await t.rejects(c.readObject(`02${'x'.repeat(38)}`), { code: 'ELOOP' }, 'cached files are opened with O_NOFOLLOW');
});

t.test('a cache directory another user owns is refused, and so is one below such a directory', async (t) => {
  if (notRoot()) { skipLoudly(t, 'SKIPPED: chown to another uid needs root'); return; }
  const base = t.testdir();
  const repo = await fileRepo(path.join(base, 'r'), 'own.example.org', 'hello');
  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => srv.close());

  const theirs = path.join(base, 'theirs');
  fs.mkdirSync(theirs, { mode: 0o700 });
  fs.chownSync(theirs, OTHER_UID, OTHER_UID);
  await t.rejects(ObjectCache.open(theirs), { code: 'CVMFS_CACHE_UNSAFE', message: /owned by uid 4242, not by this user/ });
  await t.rejects(openRepository(opts(repo, [srv.url], theirs)), { code: 'CVMFS_CACHE_UNSAFE' }, 'openRepository refuses it too');
  t.same(fs.readdirSync(theirs), [], 'nothing was written into it');

  const below = path.join(base, 'their-parent');
  fs.mkdirSync(below, { mode: 0o755 });
  fs.chownSync(below, OTHER_UID, OTHER_UID);
  await t.rejects(ObjectCache.open(path.join(below, 'cache')), { code: 'CVMFS_CACHE_UNSAFE', message: /lies below .*their-parent, which uid 4242 owns/ },
    'its owner could swap the cache for a directory of theirs');

  const mine = path.join(base, 'mine');
  await ObjectCache.open(mine);
  fs.chownSync(path.join(mine, 'txn'), OTHER_UID, OTHER_UID);
  await t.rejects(ObjectCache.open(mine), { code: 'CVMFS_CACHE_UNSAFE', message: /holds txn\/, which uid 4242 owns/ }, 'a subdirectory of another user');
});

t.test('a group- or other-writable cache directory is refused; a new one is created 0700 with its parents', async (t) => {
  const base = t.testdir();
  for (const mode of [0o770, 0o707, 0o777]) {
    const d = path.join(base, `m${mode.toString(8)}`);
    fs.mkdirSync(d);
    fs.chmodSync(d, mode);
    await t.rejects(ObjectCache.open(d), { code: 'CVMFS_CACHE_UNSAFE', message: /is writable by/ }, `mode ${mode.toString(8)} refused`);
    t.same(fs.readdirSync(d), [], 'nothing was written into it');
  }
  const writableParent = path.join(base, 'open');
  fs.mkdirSync(writableParent);
  fs.chmodSync(writableParent, 0o777);
  await t.rejects(ObjectCache.open(path.join(writableParent, 'cache')), { code: 'CVMFS_CACHE_UNSAFE', message: /lies below .*open, which group or others may write/ },
    'below a world-writable directory without the sticky bit');
  fs.chmodSync(writableParent, 0o1777);
  await ObjectCache.open(path.join(writableParent, 'cache'));
  t.pass('below a sticky world-writable directory (as /tmp) is fine');

  const readable = path.join(base, 'readable');
  fs.mkdirSync(readable);
  fs.chmodSync(readable, 0o755);
  await ObjectCache.open(readable);
  t.pass('a 0755 directory of ours is accepted');

  // As the driver does: <CVMFSGD_CACHE_DIR>/<fqrn>, neither existing yet.
  const nested = path.join(base, 'state', 'cache', 'some.example.org');
  await ObjectCache.open(nested);
  for (const d of [path.join(base, 'state'), path.join(base, 'state', 'cache'), nested, path.join(nested, 'txn'), path.join(nested, 'ff')]) {
    t.equal(modeOf(d), 0o700, `${path.relative(base, d)} created 0700`);
  }
});

t.test('a cache directory that is a symlink is refused', async (t) => {
  const base = t.testdir();
  const real = path.join(base, 'real');
  fs.mkdirSync(real, { mode: 0o700 });
  fs.symlinkSync(real, path.join(base, 'link'));
  await t.rejects(ObjectCache.open(path.join(base, 'link')), { code: 'CVMFS_CACHE_UNSAFE', message: /is a symbolic link/ });
  t.same(fs.readdirSync(real), [], 'nothing was written through it');
});

t.test('breadcrumb attack: a cache filled from another repository of the same name never overrides the signed manifest', async (t) => {
  const base = t.testdir();
  const fqrn = 'same.example.org';
  const genuine = await fileRepo(path.join(base, 'genuine'), fqrn, 'genuine bytes');
  const attacker = await fileRepo(path.join(base, 'attacker'), fqrn, 'ATTACKER BYTES', { now: () => new Date(Date.now() + 86_400_000) });
  const gsrv = await serveRepository({ dir: genuine.dir, fqrn });
  const asrv = await serveRepository({ dir: attacker.dir, fqrn });
  t.teardown(() => Promise.all([gsrv.close(), asrv.close()]));

  const fill = async (cache: string) => {
    const r = await openRepository(opts(attacker, [asrv.url], cache));
    t.equal((await r.readFile('/layers/x/f')).toString(), 'ATTACKER BYTES', 'the attacker fills the cache from their repository');
    const crumb = `${r.rootHash}T${Math.floor(Date.now() / 1000) + 86_400}R${r.revision}`;
    await r.close();
    // The unsigned breadcrumb of earlier versions, with the later publish time.
    fs.writeFileSync(path.join(cache, `cvmfschecksum.${fqrn}`), crumb);
  };
  const cache = path.join(base, 'cache');
  await fill(cache);

  const logs: string[] = [];
  const r = await openRepository(opts(genuine, [gsrv.url], cache, { log: (l) => logs.push(l) }));
  t.teardown(() => r.close());
  t.equal((await r.readFile('/layers/x/f')).toString(), 'genuine bytes', 'the genuine server and key win');
  t.equal(r.revision, 2);
  t.notOk(r.isOffline);
  t.match(logs.join('\n'), /ignoring the cached revision: CVMFS_BAD_SIGNATURE/, 'the attacker\'s letters failed verification');

  const cache2 = path.join(base, 'cache2');
  await fill(cache2);
  await t.rejects(openRepository(opts(genuine, [await deadUrl(fqrn)], cache2)), { code: 'CVMFS_ALL_SERVERS_FAILED' },
    'offline, the attacker\'s revision is not served either');
});

t.test('offline mode serves the revision this user cached, after verifying its letters again', async (t) => {
  const base = t.testdir();
  const repo = await fileRepo(base, 'off.example.org', 'cached content');
  const srv = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => srv.close());
  const cache = path.join(base, 'cache');
  const on = await openRepository(opts(repo, [srv.url], cache));
  t.equal((await on.readFile('/layers/x/f')).toString(), 'cached content');
  await on.close();
  t.ok(fs.existsSync(path.join(cache, `cvmfsletters.${repo.fqrn}`)), 'the signed letters are kept in the cache');

  srv.mode = '503';
  const wl = parseWhitelist(openLetter(fs.readFileSync(path.join(repo.dir, '.cvmfswhitelist')), 'whitelist').body);
  const logs: string[] = [];
  const off = await openRepository(opts(repo, [srv.url], cache, { log: (l) => logs.push(l) }));
  t.ok(off.isOffline, 'offline');
  t.equal(off.revision, 2);
  t.equal((await off.readFile('/layers/x/f')).toString(), 'cached content', 'cached file reads');
  t.equal((await off.getxattr('/', 'user.expires')).toString(), wl.expires, 'the cached whitelist was read and verified (user.expires)');
  t.match(logs.join('\n'), /serving cached revision 2 offline \(its letters verified again\)/);
  await off.close();

  const later = await openRepository(opts(repo, [srv.url], cache, { clock: { now: () => new Date(Date.now() + 40 * 86_400_000) }, log: (l) => logs.push(l) }));
  t.ok(later.isOffline, 'an expired whitelist is accepted offline for the cached revision');
  t.match(logs.join('\n'), /whitelist expired at \d{14} UTC, accepted offline/);
  await later.close();

  const other = await makeRepo(path.join(base, 'other'), 'off.example.org');
  await t.rejects(openRepository({ ...opts(repo, [srv.url], cache), publicKeys: [{ name: 'other.pub', pem: pubOf(other) }] }),
    { code: 'CVMFS_ALL_SERVERS_FAILED' }, 'letters that do not verify with the configured key are not served offline');
});

t.test('a tampered cached manifest is ignored; a newer signed cached revision is kept against an older one', async (t) => {
  const base = t.testdir();
  const repo = await fileRepo(base, 'tamper.example.org', 'v2');
  const rev2 = repo.manifest();
  await repo.ingest('/layers/y', await tarOf([{ type: 'file', name: 'g', content: 'v3' }]));
  const srv = await faultyServer(repo.dir, repo.fqrn);
  t.teardown(() => srv.close());
  const cache = path.join(base, 'cache');
  await (await openRepository(opts(repo, [srv.url], cache))).close();

  // Rollback: the server (or a proxy) replays the older, validly signed revision 2.
  srv.override.set('.cvmfspublished', rev2);
  const logs: string[] = [];
  const kept = await openRepository(opts(repo, [srv.url], cache, { log: (l) => logs.push(l) }));
  t.equal(kept.revision, 3, 'the newer signed cached revision is kept');
  t.equal((await kept.readFile('/layers/y/g')).toString(), 'v3');
  t.match(logs.join('\n'), /servers publish revision 2, older than the cached signed revision 3/);
  await kept.close();
  srv.override.clear();

  // Tamper: a later publish time, without a valid signature.
  const c = await ObjectCache.open(cache);
  const letters = (await c.readLetters(repo.fqrn))!;
  t.ok(letters.manifest.equals(repo.manifest()), 'the cache holds the manifest bytes as served');
  const text = letters.manifest.toString('latin1').replace(/\nT(\d+)\n/, (_m, n: string) => `\nT${Number(n) + 86_400}\n`);
  await c.writeLetters(repo.fqrn, { ...letters, manifest: Buffer.from(text, 'latin1') });

  srv.mode = '503';
  const offLogs: string[] = [];
  await t.rejects(openRepository(opts(repo, [srv.url], cache, { log: (l) => offLogs.push(l) })), { code: 'CVMFS_ALL_SERVERS_FAILED' },
    'offline, a tampered cached manifest is not served');
  t.match(offLogs.join('\n'), /ignoring the cached revision: CVMFS_BAD_SIGNATURE: manifest body does not match its hash line/);

  srv.mode = 'ok';
  const r = await openRepository(opts(repo, [srv.url], cache, { maxTtlSeconds: 1 }));
  t.teardown(() => r.close());
  t.equal(r.revision, 3, 'online, the server\'s signed revision is used');
  t.ok((await c.readLetters(repo.fqrn))!.manifest.equals(repo.manifest()), 'and its letters replace the tampered ones');

  await repo.ingest('/layers/z', await tarOf([{ type: 'file', name: 'h', content: 'v4' }]));
  t.equal(await r.refresh(), true, 'refresh switches to revision 4');
  t.ok((await c.readLetters(repo.fqrn))!.manifest.equals(repo.manifest()), 'refresh stores the new revision\'s letters');
});

t.test('cvmfs-repo ls without --cache uses a private per-user cache', async (t) => {
  if (!fs.existsSync(CLI)) { t.fail('dist/cvmfs/cli.js missing: run "npx tsc -p tsconfig.json" first'); return; }
  const base = t.testdir();
  const fqrn = `cli-cache-${process.pid}.example.org`;
  const repo = await fileRepo(path.join(base, 'r'), fqrn, 'hi');
  const srv = await serveRepository({ dir: repo.dir, fqrn });
  t.teardown(() => srv.close());
  const run = async (args: string[], env: NodeJS.ProcessEnv) => {
    try {
      const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI, ...args], { env });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
  const client = ['--url', srv.url, '--name', fqrn, '--pubkey', path.join(repo.keys, `${fqrn}.pub`)];
  const { XDG_CACHE_HOME: _x, ...env } = process.env;

  const xdg = path.join(base, 'xdg');
  let r = await run(['ls', ...client, '/layers/x'], { ...env, XDG_CACHE_HOME: xdg });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, / f\n/);
  const dir = path.join(xdg, 'cvmfs-graphdriver', fqrn);
  t.ok(isRealDir(dir), '$XDG_CACHE_HOME/cvmfs-graphdriver/<fqrn>');
  t.equal(modeOf(dir), 0o700, 'created 0700');
  t.equal(modeOf(path.join(xdg, 'cvmfs-graphdriver')), 0o700, 'its parent too');
  t.ok(fs.existsSync(path.join(dir, `cvmfsletters.${fqrn}`)), 'the cache was used');
  t.notOk(fs.existsSync(`/tmp/cvmfs-cache-${fqrn}`), 'no shared cache in /tmp');

  const home = path.join(base, 'home');
  fs.mkdirSync(home, { mode: 0o700 });
  r = await run(['cat', ...client, '/layers/x/f'], { ...env, HOME: home });
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'hi');
  t.equal(modeOf(path.join(home, '.cache', 'cvmfs-graphdriver', fqrn)), 0o700, 'else ~/.cache/cvmfs-graphdriver/<fqrn>, 0700');

  const shared = path.join(base, 'shared');
  fs.mkdirSync(shared);
  fs.chmodSync(shared, 0o777);
  r = await run(['ls', ...client, '--cache', shared], env);
  t.equal(r.code, 1);
  t.match(r.stderr, /CVMFS_CACHE_UNSAFE: cache directory .*shared is writable by/, 'an explicit --cache is checked too');
});
