/**
 * Thin images: a repository served on loopback holds a 2-layer image in which layer 2 deletes a
 * file and replaces directories (opaque marker, and a directory replaced by a file); a second
 * repository holds layers in DUCC's `.layers/<xx>/<digest>/layerfs` layout under a domain key.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Test } from 'tap';
import { serveRepository, type RepositoryServer } from '../../cvmfs/index.js';
import type { Daemon } from '../lib/dockerd.js';
import { makeRepo } from '../lib/repo-fixture.js';
import { tarOf } from '../lib/tar-of.js';

const run = promisify(execFile);
export const THIN_FQRN = 'thin.example.org';
export const DUCC_FQRN = 'unpacked.example.net';
/** Empty at start: docker2cvmfs converts into it during the tests (converted-images.ts). */
export const CONVERTED_FQRN = 'converted.example.org';
const DEAD_FQRN = 'dead.example.org';
const BIG_BYTES = 40 * 1024 * 1024;
const digest = (s: string) => createHash('sha256').update(s).digest('hex');
const d1 = digest('layer one'), d2 = digest('layer two'), dd1 = digest('ducc one'), dd2 = digest('ducc two');
const duccPath = (d: string) => `/.layers/${d.slice(0, 2)}/${d}/layerfs`;
const descriptor = (layers: { digest: string; url: string }[], version = '1.0') => JSON.stringify({ version, origin: 'e2e', layers });
export const goodDescriptor = () => descriptor([{ digest: d1, url: `cvmfs://${THIN_FQRN}/layers/${d1}` }, { digest: d2, url: `cvmfs://${THIN_FQRN}/layers/${d2}` }]);
const dockerRun = ['run', '--rm', '--network', 'none'];

export interface ThinRepositories {
  /** Host directory for the plugin's config mount: keys/ and repositories.json. */
  readonly configDir: string;
  /** CVMFSGD_SERVER_URL: the default pattern, which reaches THIN_FQRN. */
  readonly serverUrl: string;
  /** The repository docker2cvmfs writes (served, and configured in the plugin). */
  readonly converted: { readonly dir: string; readonly keys: string; readonly fqrn: string };
  close(): Promise<void>;
}

async function busyboxTree(dir: string): Promise<void> {
  fs.mkdirSync(path.join(dir, 'bin'), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(dir, 'bin/busybox'));
  for (const a of (await run('/bin/busybox', ['--list'])).stdout.split('\n').filter((x) => x && x !== 'busybox')) fs.symlinkSync('busybox', path.join(dir, 'bin', a));
}
const tarDir = async (dir: string) => (await run('tar', ['-C', dir, '-cf', '-', '.'], { encoding: 'buffer', maxBuffer: 1 << 27 })).stdout as unknown as Buffer;

export async function prepareThinRepositories(work: string): Promise<ThinRepositories> {
  const thin = await makeRepo(path.join(work, 'thin'), THIN_FQRN);
  const l1 = path.join(work, 'l1');
  await busyboxTree(l1);
  for (const dir of ['etc/data', 'opt/dir/sub', 'tmp', 'replace/me']) fs.mkdirSync(path.join(l1, dir), { recursive: true });
  fs.writeFileSync(path.join(l1, 'etc/data/a'), 'A\n');
  fs.writeFileSync(path.join(l1, 'etc/data/b'), 'B\n');
  fs.writeFileSync(path.join(l1, 'opt/dir/x'), 'X\n');
  fs.writeFileSync(path.join(l1, 'opt/dir/sub/y'), 'Y\n');
  fs.writeFileSync(path.join(l1, 'replace/me/file'), 'old\n');
  fs.writeFileSync(path.join(l1, 'big.bin'), randomBytes(BIG_BYTES));
  await thin.ingest(`/layers/${d1}`, await tarDir(l1));
  fs.rmSync(l1, { recursive: true, force: true });
  await thin.ingest(`/layers/${d2}`, await tarOf([
    { type: 'file', name: 'etc/data/.wh.a' }, { type: 'file', name: 'opt/dir/.wh..wh..opq' }, { type: 'file', name: 'opt/dir/z', content: 'Z\n' },
    { type: 'file', name: '.wh.replace' }, { type: 'file', name: 'replace', content: 'now a file\n' },
  ]));

  const ducc = await makeRepo(path.join(work, 'ducc'), DUCC_FQRN);
  const b = path.join(work, 'ducc-bb');
  await busyboxTree(b);
  await ducc.ingest(duccPath(dd1), await tarDir(b));
  fs.rmSync(b, { recursive: true, force: true });
  await ducc.ingest(duccPath(dd2), await tarOf([{ type: 'file', name: 'etc/hello', content: 'from cvmfs\n' }, { type: 'file', name: 'bin/.wh.ls' }]));

  const converted = await makeRepo(path.join(work, 'converted'), CONVERTED_FQRN);
  const servers: RepositoryServer[] = [await serveRepository({ dir: thin.dir, fqrn: THIN_FQRN }), await serveRepository({ dir: ducc.dir, fqrn: DUCC_FQRN }),
    await serveRepository({ dir: converted.dir, fqrn: CONVERTED_FQRN })];
  const configDir = path.join(work, 'cfg');
  fs.mkdirSync(path.join(configDir, 'keys'), { recursive: true });
  fs.copyFileSync(path.join(thin.keys, `${THIN_FQRN}.pub`), path.join(configDir, 'keys', `${THIN_FQRN}.pub`));
  fs.copyFileSync(path.join(thin.keys, `${THIN_FQRN}.pub`), path.join(configDir, 'keys', `${DEAD_FQRN}.pub`));
  fs.copyFileSync(path.join(ducc.keys, `${DUCC_FQRN}.pub`), path.join(configDir, 'keys', 'example.net.pub'));
  fs.copyFileSync(path.join(converted.keys, `${CONVERTED_FQRN}.pub`), path.join(configDir, 'keys', `${CONVERTED_FQRN}.pub`));
  fs.writeFileSync(path.join(configDir, 'repositories.json'), JSON.stringify({
    [DUCC_FQRN]: { servers: [servers[1]!.url] },
    [DEAD_FQRN]: { servers: [`http://127.0.0.1:9/cvmfs/${DEAD_FQRN}`] },
    [CONVERTED_FQRN]: { servers: [servers[2]!.url] },
  }));
  return {
    configDir, serverUrl: servers[0]!.url.replace(THIN_FQRN, '@fqrn@'), converted: { dir: converted.dir, keys: converted.keys, fqrn: CONVERTED_FQRN },
    close: async () => { for (const s of servers) await s.close(); },
  };
}

export const importThin = async (d: Daemon, tag: string, json: string) =>
  d.docker(['import', '-', tag], { input: await tarOf([{ type: 'file', name: 'thin.json', content: json, mode: 0o600 }]) });
const mountRoot = (d: Daemon, fqrn: string) => path.join(d.home, 'cvmfs', fqrn);
const fuseMounts = (d: Daemon, fqrn: string) => fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').filter((l) => l.includes(`${mountRoot(d, fqrn)} fuse`));
async function waitUnmounted(d: Daemon, fqrn: string, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 200))) if (fuseMounts(d, fqrn).length === 0) return true;
  return false;
}

export function thinImageTests(t: Test, daemon: () => Daemon): void {
  t.test('thin image: docker run sees the right tree (deletions, opaque and replaced directories, no markers)', async (t) => {
    const d = daemon();
    await importThin(d, 'thin:1', goodDescriptor());
    const out = (await d.docker([...dockerRun, 'thin:1', 'sh', '-c',
      'ls -A /etc/data; echo --; ls -A /opt/dir; echo --; cat /opt/dir/z /replace; ls -A / | grep -cE "^(thin.json|\\.cvmfscatalog|\\.wh\\..*)$"; true'])).stdout;
    t.equal(out, 'b\n--\nz\n--\nZ\nnow a file\n0\n', 'a deleted, opaque dir replaced, directory replaced by a file, no markers');
  });

  t.test('thin image in DUCC layout, repository under a domain key', async (t) => {
    const d = daemon();
    await importThin(d, 'ducc:1', descriptor([{ digest: dd1, url: `cvmfs://${DUCC_FQRN}${duccPath(dd1)}` }, { digest: dd2, url: `cvmfs://${DUCC_FQRN}${duccPath(dd2)}` }]));
    const out = (await d.docker([...dockerRun, 'ducc:1', 'sh', '-c', 'cat /etc/hello; ls /bin/ls 2>/dev/null || echo ls-deleted'])).stdout;
    t.equal(out, 'from cvmfs\nls-deleted\n');
    await d.docker(['rmi', 'ducc:1']);
  });

  t.test('thin image: bytes fetched are about the bytes read; a second container reuses the mount; unmounted after the last', async (t) => {
    const d = daemon();
    await d.docker(['run', '-d', '--name', 'keep1', '--network', 'none', 'thin:1', 'sh', '-c', 'cat /etc/data/b; sleep 600']);
    await d.docker(['run', '-d', '--name', 'keep2', '--network', 'none', 'thin:1', 'sleep', '600']);
    // The host shows each mount of a managed plugin twice (a shared peer group): count distinct ones.
    t.equal(new Set(fuseMounts(d, THIN_FQRN)).size, 1, 'one FUSE mount for two containers');
    t.match((await d.docker(['info'])).stdout, new RegExp(`Repositories mounted: ${THIN_FQRN.replace(/\./g, '\\.')} \\(2\\)`), 'the plugin counts two users of it');
    const counters = JSON.parse((await run('getfattr', ['--only-values', '-n', 'user.counters', mountRoot(d, THIN_FQRN)])).stdout) as { bytesFetched: number };
    t.ok(counters.bytesFetched < BIG_BYTES / 8, `fetched ${counters.bytesFetched} bytes; the image holds a ${BIG_BYTES}-byte file never read`);
    await d.docker(['rm', '-f', 'keep1', 'keep2']);
    t.ok(await waitUnmounted(d, THIN_FQRN, 20_000), 'unmounted once the last user is gone and the idle delay has passed');
  });

  t.test('thin image: commit is a local layer on top; docker build FROM it works', async (t) => {
    const d = daemon();
    await d.docker(['run', '--name', 'c1', '--network', 'none', 'thin:1', 'sh', '-c', 'echo local > /etc/data/new; rm /etc/data/b']);
    await d.docker(['commit', 'c1', 'thin:2']);
    await d.docker(['rm', 'c1']);
    t.equal((await d.docker([...dockerRun, 'thin:2', 'sh', '-c', 'ls /etc/data; cat /opt/dir/z'])).stdout, 'new\nZ\n');
    const ctx = path.join(d.dir, 'ctx-thin');
    fs.mkdirSync(ctx, { recursive: true });
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), 'FROM thin:2\nRUN echo step > /step\n');
    await d.docker(['build', '-q', '-t', 'thin:3', ctx]);
    t.equal((await d.docker([...dockerRun, 'thin:3', 'cat', '/step', '/etc/data/new'])).stdout, 'step\nlocal\n');
    await d.docker(['rmi', 'thin:3', 'thin:2']);
  });

  t.test('thin image: bad descriptors and unreachable repositories fail docker run clearly; dockerd and the plugin stay healthy', async (t) => {
    const d = daemon();
    const cases: [string, string, RegExp][] = [
      ['bad:json', '{not json', /DRIVER_THIN_INVALID: thin\.json: is not JSON/],
      ['bad:version', descriptor([{ digest: d1, url: `cvmfs://${THIN_FQRN}/layers/${d1}` }], '9.9'), /DRIVER_THIN_INVALID: thin\.json: version "9\.9" is not supported/],
      ['bad:escape', descriptor([{ digest: d1, url: `cvmfs://${THIN_FQRN}/layers/../../etc` }]), /DRIVER_THIN_INVALID: .*leaves its repository/],
      ['bad:missing', descriptor([{ digest: digest('nope'), url: `cvmfs://${THIN_FQRN}/layers/${digest('nope')}` }]), new RegExp(`DRIVER_THIN_LAYER_MISSING: layer sha256:${digest('nope')} is not in repository ${THIN_FQRN}`)],
      ['bad:unreachable', descriptor([{ digest: d1, url: `cvmfs://${DEAD_FQRN}/layers/${d1}` }]), /DRIVER_REPOSITORY_UNAVAILABLE: cannot open repository dead\.example\.org/],
      ['bad:unconfigured', descriptor([{ digest: d1, url: `cvmfs://other.example.com/layers/${d1}` }]), /DRIVER_REPOSITORY_UNCONFIGURED: repository other\.example\.com is not configured/],
    ];
    for (const [tag, json, message] of cases) {
      await importThin(d, tag, json);
      const r = await d.docker([...dockerRun, tag, 'true'], { allowFail: true });
      t.not(r.code, 0, `${tag}: docker run fails`);
      t.match(r.stderr, message, `${tag}: the error says why`);
      await d.docker(['rmi', tag]);
    }
    t.equal((await d.docker([...dockerRun, 'thin:1', 'cat', '/opt/dir/z'])).stdout, 'Z\n', 'still healthy');
  });
}
