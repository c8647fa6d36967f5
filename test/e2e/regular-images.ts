/** Regular images must behave on our driver exactly as on Docker's own overlay2. */
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { busyboxRootfsTar, type Daemon } from '../lib/dockerd.js';

const dockerRun = ['run', '--rm', '--network', 'none'];
const storeLayers = (d: Daemon) => fs.readdirSync(path.join(d.home, 'layers')).sort();
const mountsUnder = (dir: string) => fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').filter((l) => l.includes(`${dir}/`));

export function regularImageTests(t: Test, daemon: () => Daemon): void {
  t.test('regular image: import, run, diff, commit, build, save, load, rm, rmi, layers removed', async (t) => {
    const d = daemon();
    const layersBefore = storeLayers(d);
    await d.docker(['import', '-', 'bb:1'], { input: await busyboxRootfsTar(d.dir) });
    t.equal((await d.docker([...dockerRun, 'bb:1', '/bin/echo', 'hi'])).stdout, 'hi\n', 'docker run prints');
    await d.docker(['run', '--name', 'c1', '--network', 'none', 'bb:1', 'sh', '-c', 'echo data > /tmp/file; rm /bin/ls; mkdir -p /opt/x && echo y > /opt/x/y']);
    const diff = (await d.docker(['diff', 'c1'])).stdout;
    t.match(diff, /A \/tmp\/file/, 'docker diff shows the added file');
    t.match(diff, /D \/bin\/ls/, 'docker diff shows the deleted file');
    await d.docker(['commit', 'c1', 'bb:2']);
    const out = (await d.docker([...dockerRun, 'bb:2', 'sh', '-c', 'cat /tmp/file /opt/x/y; ls /bin/ls 2>/dev/null || echo ls-gone'])).stdout;
    t.equal(out, 'data\ny\nls-gone\n', 'committed layer keeps the file and the deletion');

    const ctx = path.join(d.dir, 'ctx-regular');
    fs.mkdirSync(ctx, { recursive: true });
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), 'FROM bb:2\nRUN echo built > /built && rm -r /opt/x\nCMD ["sh", "-c", "cat /built; ls /opt/x 2>/dev/null || echo x-gone"]\n');
    t.match((await d.docker(['build', '-q', '-t', 'bb:built', ctx])).stdout, /sha256:/, 'docker build succeeds');
    t.equal((await d.docker([...dockerRun, 'bb:built'])).stdout, 'built\nx-gone\n', 'the built image runs its CMD');

    fs.writeFileSync(path.join(ctx, 'Dockerfile.squash'), 'FROM bb:2\nRUN echo one > /one && rm /tmp/file\nRUN echo two > /two && rm -r /opt/x && rm /one\n');
    await d.docker(['build', '--squash', '-q', '-f', path.join(ctx, 'Dockerfile.squash'), '-t', 'bb:squashed', ctx]);
    const layers = async (image: string) => Number((await d.docker(['inspect', '-f', '{{len .RootFS.Layers}}', image])).stdout.trim());
    t.equal(await layers('bb:squashed'), (await layers('bb:2')) + 1, 'docker build --squash makes one layer of both steps');
    t.equal((await d.docker([...dockerRun, 'bb:squashed', 'sh', '-c', 'cat /two; ls /one /tmp/file /opt/x 2>&1 | wc -l; ls /bin/ls 2>/dev/null || echo ls-gone'])).stdout,
      'two\n3\nls-gone\n', 'the squashed layer keeps additions and deletions of both steps');
    await d.docker(['rmi', 'bb:squashed']);
    await d.docker(['image', 'prune', '-f']); // the builder keeps the unsquashed steps as dangling images

    const saved = path.join(d.dir, 'bb.tar');
    await d.docker(['save', '-o', saved, 'bb:built']);
    t.ok(fs.statSync(saved).size > 1_000_000, 'docker save reads every layer back through Get');
    await d.docker(['rm', 'c1']);
    await d.docker(['rmi', 'bb:built', 'bb:2', 'bb:1']);
    t.same(storeLayers(d), layersBefore, 'every layer removed from the store');
    t.same(mountsUnder(path.join(d.home, 'layers')), [], 'no layer left mounted');

    await d.docker(['load', '-i', saved]);
    t.equal((await d.docker([...dockerRun, 'bb:built'])).stdout, 'built\nx-gone\n', 'docker load of the saved image gives the same tree (G7: byte-exact)');
    await d.docker(['rmi', 'bb:built']);
    t.same(storeLayers(d), layersBefore, 'loaded layers removed too');
  });
}
