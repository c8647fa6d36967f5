import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { serveRepository, type RepositoryServer } from '../../cvmfs/index.js';
import { dockerUnavailable, startDaemon, type Daemon } from '../lib/dockerd.js';
import { makeRepo, type Fixture } from '../lib/repo-fixture.js';
import { tarOf } from '../lib/tar-of.js';

const run = promisify(execFile);
const FQRN = 'thin.example.org';
const BIG_BYTES = 40 * 1024 * 1024;
const digest = (s: string) => createHash('sha256').update(s).digest('hex');

const why = dockerUnavailable();
if (why) {
  const msg = `END-TO-END THIN IMAGE TESTS SKIPPED: ${why}`;
  console.error(`\n*** ${msg} ***\n`);
  t.comment(msg);
  t.plan(0, msg);
} else {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-thin-'));
  let d: Daemon, repo: Fixture, srv: RepositoryServer;
  const d1 = digest('layer one'), d2 = digest('layer two');
  const descriptor = (layers: { digest: string; url: string }[], version = '1.0') => JSON.stringify({ version, origin: 'e2e', layers });
  const good = () => descriptor([{ digest: d1, url: `cvmfs://${FQRN}/layers/${d1}` }, { digest: d2, url: `cvmfs://${FQRN}/layers/${d2}` }]);
  const importThin = async (tag: string, json: string) => d.docker(['import', '-', tag], { input: await tarOf([{ type: 'file', name: 'thin.json', content: json, mode: 0o600 }]) });

  t.before(async () => {
    repo = await makeRepo(path.join(work, 'repo'), FQRN);
    const l1 = path.join(work, 'l1');
    for (const dir of ['bin', 'etc/data', 'opt/dir/sub', 'tmp', 'replace/me']) fs.mkdirSync(path.join(l1, dir), { recursive: true });
    fs.copyFileSync('/bin/busybox', path.join(l1, 'bin/busybox'));
    for (const a of (await run('/bin/busybox', ['--list'])).stdout.split('\n').filter((x) => x && x !== 'busybox')) fs.symlinkSync('busybox', path.join(l1, 'bin', a));
    fs.writeFileSync(path.join(l1, 'etc/data/a'), 'A\n');
    fs.writeFileSync(path.join(l1, 'etc/data/b'), 'B\n');
    fs.writeFileSync(path.join(l1, 'opt/dir/x'), 'X\n');
    fs.writeFileSync(path.join(l1, 'opt/dir/sub/y'), 'Y\n');
    fs.writeFileSync(path.join(l1, 'replace/me/file'), 'old\n');
    fs.writeFileSync(path.join(l1, 'big.bin'), randomBytes(BIG_BYTES));
    await repo.ingest(`/layers/${d1}`, (await run('tar', ['-C', l1, '-cf', '-', '.'], { encoding: 'buffer', maxBuffer: 1 << 27 })).stdout as unknown as Buffer);
    await repo.ingest(`/layers/${d2}`, await tarOf([
      { type: 'file', name: 'etc/data/.wh.a' }, { type: 'file', name: 'opt/dir/.wh..wh..opq' }, { type: 'file', name: 'opt/dir/z', content: 'Z\n' },
      { type: 'file', name: '.wh.replace' }, { type: 'file', name: 'replace', content: 'now a file\n' },
    ]));
    srv = await serveRepository({ dir: repo.dir, fqrn: FQRN });
    const cfg = path.join(work, 'cfg');
    fs.mkdirSync(path.join(cfg, 'keys'), { recursive: true });
    fs.copyFileSync(path.join(repo.keys, `${FQRN}.pub`), path.join(cfg, 'keys', `${FQRN}.pub`));
    fs.copyFileSync(path.join(repo.keys, `${FQRN}.pub`), path.join(cfg, 'keys', 'dead.example.org.pub'));
    fs.writeFileSync(path.join(cfg, 'repositories.json'), JSON.stringify({ 'dead.example.org': { servers: ['http://127.0.0.1:9/cvmfs/dead.example.org'] } }));
    d = await startDaemon({ pluginEnv: { CVMFSGD_SERVER_URL: srv.url.replace(FQRN, '@fqrn@'), CVMFSGD_CONFIG_DIR: cfg } });
    await importThin('thin:1', good());
  });
  t.teardown(async () => { await d?.stop(); await srv?.close(); fs.rmSync(work, { recursive: true, force: true }); });

  const mountRoot = () => path.join(d.home, 'cvmfs', FQRN);
  const fuseMounts = () => fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').filter((l) => l.includes(`${mountRoot()} fuse`));

  t.test('docker run of a thin image sees the right tree: deletions, opaque and replaced directories, no markers', async (t) => {
    const out = (await d.docker(['run', '--rm', '--network', 'none', 'thin:1', 'sh', '-c',
      'ls -A /etc/data; echo --; ls -A /opt/dir; echo --; cat /opt/dir/z /replace; ls -A / | grep -cE "^(thin.json|\\.cvmfscatalog|\\.wh\\..*)$"; true'])).stdout;
    t.equal(out, 'b\n--\nz\n--\nZ\nnow a file\n0\n', 'a deleted, opaque dir replaced, directory replaced by a file, no markers');
  });

  t.test('bytes fetched are about the bytes read; a second container reuses the mount', async (t) => {
    await d.docker(['run', '-d', '--name', 'keep1', '--network', 'none', 'thin:1', 'sh', '-c', 'cat /etc/data/b; sleep 600']);
    await d.docker(['run', '-d', '--name', 'keep2', '--network', 'none', 'thin:1', 'sleep', '600']);
    t.equal(fuseMounts().length, 1, 'one FUSE mount for two containers');
    const counters = JSON.parse((await run('getfattr', ['--only-values', '-n', 'user.counters', mountRoot()])).stdout) as { bytesFetched: number };
    t.ok(counters.bytesFetched < BIG_BYTES / 8, `fetched ${counters.bytesFetched} bytes; the image holds a ${BIG_BYTES}-byte file never read`);
    await d.docker(['rm', '-f', 'keep1', 'keep2']);
    t.same(fuseMounts(), [], 'unmounted when the last user is gone');
  });

  t.test('commit on a thin image is a local layer on top; docker build FROM it works', async (t) => {
    await d.docker(['run', '--name', 'c1', '--network', 'none', 'thin:1', 'sh', '-c', 'echo local > /etc/data/new; rm /etc/data/b']);
    await d.docker(['commit', 'c1', 'thin:2']);
    await d.docker(['rm', 'c1']);
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'thin:2', 'sh', '-c', 'ls /etc/data; cat /opt/dir/z'])).stdout, 'new\nZ\n');
    const ctx = path.join(work, 'ctx');
    fs.mkdirSync(ctx, { recursive: true });
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), 'FROM thin:2\nRUN echo step > /step\n');
    await d.docker(['build', '-q', '-t', 'thin:3', ctx]);
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'thin:3', 'cat', '/step', '/etc/data/new'])).stdout, 'step\nlocal\n');
    await d.docker(['rmi', 'thin:3', 'thin:2']);
  });

  t.test('plugin restart with no running containers, then run again', async (t) => {
    await d.restartPlugin();
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'thin:1', 'cat', '/etc/data/b'])).stdout, 'B\n');
  });

  t.test('bad descriptors and unreachable repositories fail docker run clearly; dockerd and the plugin stay healthy', async (t) => {
    const cases: [string, string, RegExp][] = [
      ['bad:json', '{not json', /DRIVER_THIN_INVALID: thin\.json: is not JSON/],
      ['bad:version', descriptor([{ digest: d1, url: `cvmfs://${FQRN}/layers/${d1}` }], '9.9'), /DRIVER_THIN_INVALID: thin\.json: version "9\.9" is not supported/],
      ['bad:escape', descriptor([{ digest: d1, url: `cvmfs://${FQRN}/layers/../../etc` }]), /DRIVER_THIN_INVALID: .*leaves its repository/],
      ['bad:missing', descriptor([{ digest: digest('nope'), url: `cvmfs://${FQRN}/layers/${digest('nope')}` }]), new RegExp(`DRIVER_THIN_LAYER_MISSING: layer sha256:${digest('nope')} is not in repository ${FQRN}`)],
      ['bad:unreachable', descriptor([{ digest: d1, url: `cvmfs://dead.example.org/layers/${d1}` }]), /DRIVER_REPOSITORY_UNAVAILABLE: cannot open repository dead\.example\.org/],
      ['bad:unconfigured', descriptor([{ digest: d1, url: `cvmfs://other.example.com/layers/${d1}` }]), /DRIVER_REPOSITORY_UNCONFIGURED: repository other\.example\.com is not configured/],
    ];
    for (const [tag, json, message] of cases) {
      await importThin(tag, json);
      const r = await d.docker(['run', '--rm', '--network', 'none', tag, 'true'], { allowFail: true });
      t.not(r.code, 0, `${tag}: docker run fails`);
      t.match(r.stderr, message, `${tag}: the error says why`);
      await d.docker(['rmi', tag]);
    }
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'thin:1', 'cat', '/opt/dir/z'])).stdout, 'Z\n', 'still healthy');
  });
}
