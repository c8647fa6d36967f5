/**
 * dockerd --userns-remap=default on the managed plugin: layers are stored with host owners in the
 * remapped range, and containers see container owners, for regular and thin images. A daemon of
 * its own, since remapping is daemon-wide (dockerd creates the `dockremap` user and its subordinate
 * ID ranges itself, as on any host that uses this option).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { busyboxRootfsTar, dockerUnavailable, startManagedDaemon, type Daemon } from '../lib/dockerd.js';
import { goodDescriptor, importThin, prepareThinRepositories, type ThinRepositories } from './thin-images.js';
import { skipLoudly } from '../lib/skip.js';

const run = promisify(execFile);
const why = dockerUnavailable() ?? (fs.existsSync('/usr/sbin/useradd') ? null : 'useradd missing: dockerd cannot create the dockremap user');
if (why) {
  skipLoudly(t, `END-TO-END USERNS TESTS SKIPPED: ${why}`);
} else {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-userns-'));
  let d: Daemon | undefined, repos: ThinRepositories | undefined;
  t.teardown(async () => { await d?.stop(); await repos?.close(); fs.rmSync(work, { recursive: true, force: true }); });

  t.test('regular and thin images under --userns-remap', async (t) => {
    repos = await prepareThinRepositories(work);
    d = await startManagedDaemon({ dockerdArgs: ['--userns-remap=default'], configDir: repos.configDir, pluginEnv: { CVMFSGD_SERVER_URL: repos.serverUrl } });
    t.match((await d.docker(['info', '--format', '{{.SecurityOptions}}'])).stdout, /userns/, 'dockerd runs with user namespaces');
    const [, start] = /^dockremap:(\d+):/m.exec(fs.readFileSync('/etc/subuid', 'utf8')) ?? [];
    const base = Number(start);
    t.ok(base > 0, `remapped root is host uid ${base}`);
    // The step the README gives admins: Docker keeps <data-root>/plugins/<id> at 0700.
    const pluginDir = path.dirname(path.dirname(d.home));
    await run('chmod', ['711', path.dirname(pluginDir), pluginDir]);

    await d.docker(['import', '-', 'bb:1'], { input: await busyboxRootfsTar(d.dir) });
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'bb:1', 'sh', '-c', 'id -u; stat -c %u:%g /bin/busybox; echo w > /tmp/w && cat /tmp/w'])).stdout,
      '0\n0:0\nw\n', 'the container sees root-owned files it can write');
    await d.docker(['run', '--name', 'c1', '--network', 'none', 'bb:1', 'sh', '-c', 'echo data > /tmp/file && chown 1000:1001 /tmp/file']);
    await d.docker(['commit', 'c1', 'bb:2']);
    await d.docker(['rm', 'c1']);
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'bb:2', 'stat', '-c', '%u:%g', '/tmp/file'])).stdout, '1000:1001\n', 'owners survive commit (Diff, then ApplyDiff)');
    const stored = (await run('sh', ['-c', `find ${path.join(d.home, 'layers')} -path '*/diff/tmp/file' -exec stat -c %u:%g {} +`])).stdout.trim().split('\n');
    t.ok(stored.length > 0 && stored.every((o) => o === `${base + 1000}:${base + 1001}`), `stored with host owners ${stored.join(' ')}`);

    await importThin(d, 'thin:1', goodDescriptor());
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'thin:1', 'sh', '-c', 'stat -c %u:%g /etc/data/b; cat /opt/dir/z; echo n > /etc/data/new && cat /etc/data/new'])).stdout,
      '0:0\nZ\nn\n', 'a thin image shows its stored owners inside the namespace and is writable');
  });
}
