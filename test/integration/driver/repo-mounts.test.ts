import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { serveRepository, type RepositoryServer } from '../../../cvmfs/index.js';
import { IdMapping } from '../../../driver/id-map.js';
import { RepoMounts, type RepositoryConfig } from '../../../driver/repo-mounts.js';
import { skipWithoutFuse } from '../../lib/fuse-gate.js';
import { makeRepo } from '../../lib/repo-fixture.js';
import { tarOf } from '../../lib/tar-of.js';

const run = promisify(execFile);
const FQRN = 'mounts.example.org';
/** Reads through the mount from a child process: this process serves it. */
const cat = (file: string) => run('cat', [file]).then((r) => r.stdout);
const fuseMountsAt = (root: string) => fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').filter((l) => l.split(' ')[1] === root).length;

async function setup(t: Test, idleUnmountMs: number, ids?: IdMapping): Promise<{ mounts: RepoMounts; root: string; logs: string[] }> {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'repo-mounts-'));
  const repo = await makeRepo(path.join(base, 'src'), FQRN);
  await repo.ingest('/layers/one', await tarOf([{ type: 'file', name: 'hello', content: 'hi\n' }, { type: 'file', name: 'owned', content: 'o', uid: 1000, gid: 70000 }]));
  const srv: RepositoryServer = await serveRepository({ dir: repo.dir, fqrn: FQRN });
  fs.mkdirSync(path.join(base, 'keys'));
  fs.copyFileSync(path.join(repo.keys, `${FQRN}.pub`), path.join(base, 'keys', `${FQRN}.pub`));
  const config: RepositoryConfig = { servers: [srv.url], keysDir: path.join(base, 'keys'), cacheDir: path.join(base, 'cache'), idleUnmountMs };
  const logs: string[] = [];
  const mounts = new RepoMounts(config, path.join(base, 'mnt'), (_l, m) => logs.push(m), ids);
  t.teardown(async () => {
    await mounts.releaseAll();
    await srv.close();
    fs.rmSync(base, { recursive: true, force: true });
  });
  return { mounts, root: path.join(base, 'mnt', FQRN), logs };
}

t.test('idle delay: a repository put and got again is not remounted; it is unmounted once idle', async (t) => {
  if (skipWithoutFuse(t)) return;
  const { mounts, root, logs } = await setup(t, 400);
  const a = await mounts.acquire(FQRN);
  t.equal(await cat(path.join(a.root, 'layers/one/hello')), 'hi\n');
  await a.release();
  t.equal(fuseMountsAt(root), 1, 'still mounted right after the last release');
  t.same(mounts.mounted(), [FQRN]);
  t.same(mounts.active(), [], 'with no users');
  const b = await mounts.acquire(FQRN);
  t.equal(logs.filter((l) => l.startsWith('mounted')).length, 1, 'the second user reuses the first mount');
  await b.release();
  await new Promise((r) => setTimeout(r, 1200));
  t.equal(fuseMountsAt(root), 0, 'unmounted after the idle delay');
  t.same(mounts.mounted(), []);
});

t.test('re-acquired while being unmounted: the new mount waits for the old one to go', async (t) => {
  if (skipWithoutFuse(t)) return;
  const { mounts, root, logs } = await setup(t, 0);
  const a = await mounts.acquire(FQRN);
  const unmounting = a.release();
  const b = await mounts.acquire(FQRN);
  await unmounting;
  t.equal(fuseMountsAt(root), 1, 'exactly one mount afterwards');
  t.equal(await cat(path.join(b.root, 'layers/one/hello')), 'hi\n', 'and it serves');
  t.same(logs.filter((l) => /^(mounted|unmounted)/.test(l)).map((l) => l.split(' ')[0]), ['mounted', 'unmounted', 'mounted'], 'unmount finished before the remount');
  await b.release();
  t.equal(fuseMountsAt(root), 0, 'idle delay 0 unmounts at once');
});

t.test('mounts left by a dead plugin process are swept', async (t) => {
  if (skipWithoutFuse(t)) return;
  const { mounts, root } = await setup(t, 0);
  fs.mkdirSync(root, { recursive: true });
  await run('mount', ['-t', 'tmpfs', 'stale', root]);
  t.same(await mounts.sweepStale(), [root], 'reports the stale mount');
  t.equal(fuseMountsAt(root), 0, 'and unmounts it');
});

t.test('with a user namespace map, owners are presented in its host range', async (t) => {
  if (skipWithoutFuse(t)) return;
  const map = [{ containerId: 0, hostId: 100000, size: 65536 }];
  const { mounts } = await setup(t, 0, new IdMapping(map, map));
  const a = await mounts.acquire(FQRN);
  const owners = (await run('stat', ['-c', '%u:%g', path.join(a.root, 'layers/one/hello'), path.join(a.root, 'layers/one/owned')])).stdout;
  t.equal(owners, '100000:100000\n101000:65534\n', 'root → 100000, 1000 → 101000, an unmapped gid → overflow');
  await a.release();
});
