/**
 * End to end with real dockerd (Debian docker.io 20.10): the managed plugin is built with `make
 * plugin`'s script, created, configured with `docker plugin set`, enabled, and dockerd restarted
 * with `-s`, as on a worker node. One daemon serves every test in this file.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { busyboxRootfsTar, dockerUnavailable, startManagedDaemon, type Daemon } from '../lib/dockerd.js';
import { convertedImageTests } from './converted-images.js';
import { hostileImageTests } from './hostile-images.js';
import { regularImageTests } from './regular-images.js';
import { goodDescriptor, importThin, prepareThinRepositories, thinImageTests, type ThinRepositories } from './thin-images.js';
import { skipLoudly } from '../lib/skip.js';

const why = dockerUnavailable();
if (why) {
  skipLoudly(t, `END-TO-END DOCKER TESTS SKIPPED: ${why}`);
} else {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-'));
  let d: Daemon | undefined, repos: ThinRepositories | undefined, buildOutput = '';
  const daemon = () => { if (!d) throw new Error('dockerd did not start'); return d; };

  t.before(async () => {
    repos = await prepareThinRepositories(work);
    d = await startManagedDaemon({
      configDir: repos.configDir,
      pluginEnv: { CVMFSGD_SERVER_URL: repos.serverUrl, CVMFSGD_LOG_LEVEL: 'debug', CVMFSGD_IDLE_UNMOUNT_SECONDS: '3' },
      onBuild: (out) => { buildOutput = out; },
    });
  });
  t.teardown(async () => { await d?.stop(); await repos?.close(); fs.rmSync(work, { recursive: true, force: true }); });

  t.test('the managed plugin is installed and dockerd runs on it', async (t) => {
    const rootfs = /plugin rootfs: ([^\n]*)/.exec(buildOutput)?.[1];
    t.ok(rootfs, `make plugin printed the rootfs size: ${rootfs}`);
    t.match((await daemon().docker(['plugin', 'ls', '--format', '{{.Name}} {{.Enabled}}'])).stdout, new RegExp(`^${daemon().driverName}:latest true$`, 'm'), 'enabled');
    t.equal((await daemon().docker(['info', '--format', '{{.Driver}}'])).stdout.trim(), daemon().driverName, 'dockerd -s uses it');
    t.match((await daemon().docker(['info'])).stdout, /Thin layers: 0/, 'plugin Status reaches docker info');
  });

  regularImageTests(t, daemon);
  thinImageTests(t, daemon);
  hostileImageTests(t, daemon);
  convertedImageTests(t, daemon, () => { if (!repos) throw new Error('repositories not prepared'); return repos; });

  t.test('plugin restart with no running containers: layers found again, regular and thin images run', async (t) => {
    const d = daemon();
    await d.docker(['import', '-', 'bb:r'], { input: await busyboxRootfsTar(d.dir) });
    await importThin(d, 'thin:r', goodDescriptor());
    // Still mounted (idle) when the plugin dies: the restarted plugin must clear the dead FUSE mount (G4).
    await d.docker(['run', '--rm', '--network', 'none', 'thin:r', 'true']);
    await d.restartPlugin();
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'bb:r', '/bin/echo', 'again'])).stdout, 'again\n', 'regular image');
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'thin:r', 'cat', '/etc/data/b'])).stdout, 'B\n', 'thin image');
    t.match(d.pluginLog(), /resumed at .* after a restart: \d+ layers/, 'state reloaded from disk (Init is not resent)');
    t.match(d.pluginLog(), /unmounted 1 repository mounts left by a previous plugin process/, 'the dead FUSE mount was cleared');
    await d.docker(['rmi', 'bb:r', 'thin:r']);
  });
}
