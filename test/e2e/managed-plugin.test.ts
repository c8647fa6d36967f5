import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { serveRepository, type RepositoryServer } from '../../cvmfs/index.js';
import { busyboxRootfsTar, DOCKER, DOCKERD, dockerUnavailable } from '../lib/dockerd.js';
import { makeRepo } from '../lib/repo-fixture.js';
import { tarOf } from '../lib/tar-of.js';

const run = promisify(execFile);
const FQRN = 'managed.example.org';

const why = dockerUnavailable();
if (why) {
  const msg = `END-TO-END MANAGED PLUGIN TESTS SKIPPED: ${why}`;
  console.error(`\n*** ${msg} ***\n`);
  t.comment(msg);
  t.plan(0, msg);
} else {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-managed-'));
  const name = `cvmfsgd-managed-${randomBytes(3).toString('hex')}`;
  const sock = path.join(dir, 'docker.sock');
  const env = { ...process.env, DOCKER_HOST: `unix://${sock}` };
  let daemon: ChildProcess | undefined;
  let srv: RepositoryServer | undefined;

  const docker = async (args: string[], input?: Buffer) => {
    const p = run(DOCKER, args, { env, maxBuffer: 1 << 27 });
    if (input) p.child.stdin!.end(input); else p.child.stdin?.end();
    try { return (await p).stdout; } catch (err) { throw new Error(`docker ${args.join(' ')}: ${(err as { stderr: string }).stderr}`); }
  };
  const startDockerd = async (extra: string[]) => {
    const log = fs.openSync(path.join(dir, 'dockerd.log'), 'a');
    daemon = spawn(DOCKERD, [...extra, '--data-root', path.join(dir, 'root'), '--exec-root', path.join(dir, 'exec'), '-H', `unix://${sock}`,
      '--pidfile', path.join(dir, 'docker.pid'), '--iptables=false', '--ip6tables=false', '--bridge=none'], { stdio: ['ignore', log, log] });
    for (let i = 0; i < 150; i++) {
      if (await run(DOCKER, ['info'], { env }).then(() => true, () => false)) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`dockerd did not start:\n${fs.readFileSync(path.join(dir, 'dockerd.log'), 'utf8').slice(-3000)}`);
  };
  const stopDockerd = async () => {
    if (!daemon || daemon.exitCode !== null) return;
    daemon.kill('SIGTERM');
    await new Promise((r) => { daemon!.once('exit', r); setTimeout(r, 30_000); });
  };

  t.teardown(async () => {
    await stopDockerd();
    await srv?.close();
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(dir));
    for (const m of mounts.reverse()) await run('umount', ['-l', m]).catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  });

  t.test('make plugin + docker plugin create/set/enable, dockerd -s: regular and thin images run', async (t) => {
    const repo = await makeRepo(path.join(dir, 'repo'), FQRN);
    const layer = createHash('sha256').update('managed layer').digest('hex');
    await repo.ingest(`/.layers/${layer.slice(0, 2)}/${layer}/layerfs`, await busyboxRootfsTar(dir));
    const extra = createHash('sha256').update('managed extra').digest('hex');
    await repo.ingest(`/.layers/${extra.slice(0, 2)}/${extra}/layerfs`, await tarOf([{ type: 'file', name: 'etc/hello', content: 'from cvmfs\n' }, { type: 'file', name: 'bin/.wh.ls' }]));
    srv = await serveRepository({ dir: repo.dir, fqrn: FQRN });
    const cfg = path.join(dir, 'cfg');
    fs.mkdirSync(path.join(cfg, 'keys'), { recursive: true });
    fs.copyFileSync(path.join(repo.keys, `${FQRN}.pub`), path.join(cfg, 'keys', 'example.org.pub'));

    await startDockerd([]);
    const built = await run('bash', ['scripts/build-plugin.sh'], { env: { ...env, PLUGIN_NAME: name }, maxBuffer: 1 << 24 });
    t.match(built.stdout, /plugin rootfs: \d+M/, `rootfs built: ${/plugin rootfs: [^\n]*/.exec(built.stdout)?.[0]}`);
    t.match(await docker(['plugin', 'ls']), new RegExp(`${name}:latest\\s.*false`), 'created, disabled');
    await docker(['plugin', 'set', name, `config.source=${cfg}`, `CVMFSGD_SERVER_URL=${srv.url.replace(FQRN, '@fqrn@')}`, 'CVMFSGD_LOG_LEVEL=debug']);
    await docker(['plugin', 'enable', name]);
    await stopDockerd();
    await startDockerd(['--experimental', '-s', name]);
    t.equal((await docker(['info', '--format', '{{.Driver}}'])).trim(), name, 'dockerd runs on the managed plugin');

    await docker(['import', '-', 'bb:1'], await busyboxRootfsTar(dir));
    t.equal(await docker(['run', '--rm', '--network', 'none', 'bb:1', 'echo', 'regular']), 'regular\n', 'regular image runs');

    const thin = JSON.stringify({ version: '1.0', layers: [
      { digest: layer, url: `cvmfs://${FQRN}/.layers/${layer.slice(0, 2)}/${layer}/layerfs` },
      { digest: extra, url: `cvmfs://${FQRN}/.layers/${extra.slice(0, 2)}/${extra}/layerfs` }] });
    await docker(['import', '-', 'thin:1'], await tarOf([{ type: 'file', name: 'thin.json', content: thin }]));
    const out = await docker(['run', '--rm', '--network', 'none', 'thin:1', 'sh', '-c', 'cat /etc/hello; ls /bin/ls 2>/dev/null || echo ls-deleted']);
    t.equal(out, 'from cvmfs\nls-deleted\n', 'thin image in the DUCC layout runs through the managed plugin');
    t.match(await docker(['info']), /Thin layers: 1/, 'plugin status reaches docker info');
  });
}
