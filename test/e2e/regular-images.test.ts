import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { busyboxRootfsTar, dockerUnavailable, startDaemon, type Daemon } from '../lib/dockerd.js';

const why = dockerUnavailable();
if (why) {
  const msg = `END-TO-END DOCKER TESTS SKIPPED: ${why}`;
  console.error(`\n*** ${msg} ***\n`);
  t.comment(msg);
  t.plan(0, msg);
} else {
  let d: Daemon;
  t.before(async () => { d = await startDaemon(); });
  t.teardown(() => d?.stop());

  t.test('regular image through the plugin: import, run, diff, commit, build, save, rm, rmi', async (t) => {
    const info = await d.docker(['info', '--format', '{{.Driver}}']);
    t.equal(info.stdout.trim(), d.driverName, 'dockerd uses our plugin as its storage driver');
    await d.docker(['import', '-', 'bb:1'], { input: await busyboxRootfsTar(d.dir) });
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'bb:1', '/bin/echo', 'hi'])).stdout, 'hi\n', 'docker run prints');
    await d.docker(['run', '--name', 'c1', '--network', 'none', 'bb:1', 'sh', '-c', 'echo data > /tmp/file; rm /bin/ls; mkdir -p /opt/x && echo y > /opt/x/y']);
    const diff = (await d.docker(['diff', 'c1'])).stdout;
    t.match(diff, /A \/tmp\/file/, 'docker diff shows the added file');
    t.match(diff, /D \/bin\/ls/, 'docker diff shows the deleted file');
    await d.docker(['commit', 'c1', 'bb:2']);
    const out = (await d.docker(['run', '--rm', '--network', 'none', 'bb:2', 'sh', '-c', 'cat /tmp/file /opt/x/y; ls /bin/ls 2>/dev/null || echo ls-gone'])).stdout;
    t.equal(out, 'data\ny\nls-gone\n', 'committed layer keeps the file and the deletion');
    const ctx = path.join(d.dir, 'ctx');
    fs.mkdirSync(ctx, { recursive: true });
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), 'FROM bb:2\nRUN echo built > /built && rm -r /opt/x\nCMD ["sh", "-c", "cat /built; ls /opt/x 2>/dev/null || echo x-gone"]\n');
    const build = await d.docker(['build', '-q', '-t', 'bb:built', ctx]);
    t.match(build.stdout, /sha256:/, 'docker build succeeds');
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'bb:built'])).stdout, 'built\nx-gone\n');
    const saved = path.join(d.dir, 'bb.tar');
    await d.docker(['save', '-o', saved, 'bb:built']);
    t.ok(fs.statSync(saved).size > 1_000_000, 'docker save reads every layer back through Get');
    await d.docker(['rm', 'c1']);
    await d.docker(['rmi', 'bb:built', 'bb:2', 'bb:1']);
    const layers = fs.readdirSync(path.join(d.home, 'layers'));
    t.same(layers, [], 'every layer removed from the store');
    const mounted = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').filter((l) => l.includes(d.home));
    t.same(mounted, [], 'nothing left mounted');
  });

  t.test('a restarted plugin finds its layers and serves them again', async (t) => {
    await d.docker(['import', '-', 'bb:r'], { input: await busyboxRootfsTar(d.dir) });
    await d.restartPlugin();
    t.equal((await d.docker(['run', '--rm', '--network', 'none', 'bb:r', '/bin/echo', 'again'])).stdout, 'again\n');
    t.match(d.pluginLog(), /resumed at .* 1 layers/, 'state reloaded from disk');
    await d.docker(['rmi', 'bb:r']);
  });
}
