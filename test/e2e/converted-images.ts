/**
 * docker2cvmfs end to end: a multi-layer image built by a real dockerd on built-in overlay2 (with
 * Env, Entrypoint, Cmd, WorkingDir, User, Labels, a port, a volume, a deleted file and an opaque
 * directory in an upper layer) is pushed to Debian's docker-registry, converted into a repository
 * the managed plugin serves, and its thin image run on the plugin's daemon: output, `docker
 * inspect` config and the file tree must equal the original on overlay2. The same from
 * `docker-archive:` (thin image --load-ed) and `oci:` (thin image written with -o, docker load).
 * Then the thin image is pushed from the plugin's daemon and pulled again (R15).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Test } from 'tap';
import { parseReference } from '../../docker2cvmfs/reference.js';
import { RegistryClient } from '../../docker2cvmfs/registry/index.js';
import { busyboxRootfsTar, startDaemon, type Daemon } from '../lib/dockerd.js';
import { registryBinary, startRegistry, type TestRegistry } from '../lib/registry.js';
import type { ThinRepositories } from './thin-images.js';

const run = promisify(execFile);
const CLI = path.resolve('dist/docker2cvmfs/cli.js');
const THIN_LABELS = ['org.cernvm.thin.source', 'org.cernvm.thin.source-digest'];

const DOCKERFILE = `FROM bb:src
RUN mkdir -p /opt/app/sub && echo old > /opt/app/old && echo old > /opt/app/sub/x && echo gone > /etc/gone && echo keep > /etc/keep && chown 7:8 /etc/keep && chmod 4755 /etc/keep
RUN rm /etc/gone && rm -rf /opt/app && mkdir -p /opt/app && echo new > /opt/app/new && chown -R 1000:1000 /opt/app
ENV A=1 B="two words"
WORKDIR /opt/app
USER 1000:1000
LABEL org.example.kind=e2e
EXPOSE 8080/tcp
VOLUME /data
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hello $A $B; id -u; pwd; ls -A /opt/app; cat /etc/gone 2>/dev/null || echo gone-is-gone; ls -l /etc/keep | cut -c1-10"]
`;

/** Every path on the root filesystem with type+mode, owner and (for non-directories) size. */
const TREE = 'find / -xdev | grep -vE "^/etc/(hosts|hostname|resolv.conf)$" | sort | while read -r f; do '
  + 'if [ -d "$f" ] && [ ! -L "$f" ]; then stat -c "%n %f %u %g" "$f"; else stat -c "%n %f %s %u %g" "$f"; fi; done';

async function d2c(args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await run(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, maxBuffer: 1 << 26 });
  return r.stdout;
}

interface Observed { readonly output: string; readonly config: Record<string, unknown>; readonly tree: string }

async function observe(d: Daemon, image: string): Promise<Observed> {
  const output = (await d.docker(['run', '--rm', '--network', 'none', image])).stdout;
  const config = JSON.parse((await d.docker(['image', 'inspect', '-f', '{{json .Config}}', image])).stdout) as Record<string, unknown>;
  const labels = { ...(config['Labels'] as Record<string, string> | null ?? {}) };
  for (const l of THIN_LABELS) delete labels[l];
  const tree = (await d.docker(['run', '--rm', '--network', 'none', '--user', '0', '--entrypoint', '/bin/sh', image, '-c', TREE])).stdout;
  return { output, config: { ...config, Labels: labels }, tree };
}

function sameAs(t: Test, got: Observed, want: Observed, what: string): void {
  t.equal(got.output, want.output, `${what}: the same output`);
  t.same(got.config, want.config, `${what}: the same docker inspect config (less the two thin labels)`);
  t.ok(got.tree.split('\n').length > 100, `${what}: a real file tree (${got.tree.split('\n').length} paths)`);
  t.equal(got.tree, want.tree, `${what}: the same file tree (find -xdev: names, modes, sizes, owners)`);
}

/** An OCI image layout of a registry image, as `skopeo copy … oci:DIR` would write it. */
async function ociLayoutOf(client: RegistryClient, ref: string, dir: string): Promise<void> {
  const image = await client.resolve(parseReference(ref), { os: 'linux', architecture: process.arch === 'arm64' ? 'arm64' : 'amd64' });
  const blob = (hex: string) => path.join(dir, 'blobs', 'sha256', hex);
  fs.mkdirSync(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  fs.writeFileSync(blob(image.manifestDigest.slice(7)), image.manifestBytes);
  fs.writeFileSync(blob(image.manifest.config.digest.slice(7)), image.configBytes);
  for (const l of image.manifest.layers) {
    const chunks: Buffer[] = [];
    for await (const c of await image.source.openBlob(l)) chunks.push(c as Buffer);
    fs.writeFileSync(blob(l.digest.slice(7)), Buffer.concat(chunks));
  }
  fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{
    mediaType: image.manifest.mediaType, digest: image.manifestDigest, size: image.manifestBytes.length,
    annotations: { 'org.opencontainers.image.ref.name': '1' },
  }] }));
}

export function convertedImageTests(t: Test, daemon: () => Daemon, repos: () => ThinRepositories): void {
  t.test('docker2cvmfs: converted images run on the plugin exactly as the originals on overlay2', async (t) => {
    if (!registryBinary()) { t.fail('docker-registry is not installed (make deps installs it)'); return; }
    const d = daemon();
    const { converted } = repos();
    const src = await startDaemon({ builtinDriver: 'overlay2' });
    t.teardown(() => src.stop());
    const reg: TestRegistry = await startRegistry('open');
    t.teardown(() => reg.close());
    const client = new RegistryClient();
    const repoArgs = ['--repo', converted.dir, '--keys', converted.keys];

    await src.docker(['import', '-', 'bb:src'], { input: await busyboxRootfsTar(src.dir) });
    const ctx = path.join(src.dir, 'ctx');
    fs.mkdirSync(ctx, { recursive: true });
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), DOCKERFILE);
    const srcRef = reg.name('src/app:1');
    await src.docker(['build', '-q', '-t', srcRef, ctx]);
    await src.docker(['push', srcRef]);
    const original = await observe(src, srcRef);
    t.match(original.output, /^hello 1 two words\n1000\n\/opt\/app\nnew\ngone-is-gone\n-rwsr-xr-x\n$/, 'the original behaves as built');

    await t.test('from the registry: convert --push, docker pull of the thin image, docker run', async (t) => {
      const thinRef = reg.name('thin/app:1');
      const out = await d2c(['convert', srcRef, ...repoArgs, '--push', thinRef]);
      t.match(out, /published revision \d+ of converted\.example\.org: 1 of 1 images converted, [3-9] layers new/, out);
      await d.docker(['pull', thinRef]);
      const layers = JSON.parse((await d.docker(['image', 'inspect', '-f', '{{json .RootFS.Layers}}', thinRef])).stdout) as string[];
      t.equal(layers.length, 1, 'the pulled image is one small thin layer');
      sameAs(t, await observe(d, thinRef), original, 'registry → thin');
    });

    await t.test('convert --record: the files the start read travel in thin.json; the plugin prefetches them; the image runs the same', async (t) => {
      const thinRef = reg.name('thin/recorded:1');
      const out = await d2c(['convert', srcRef, ...repoArgs, '--record', '--push', thinRef]);
      const m = /recorded (\d+) files \(([^)]*)\) read by the start \(exit 0/.exec(out);
      t.ok(m && Number(m[1]) >= 1, `the start was recorded: ${out}`);
      const inspected = JSON.parse(await d2c(['inspect', thinRef, '--json'])) as { thin: boolean; prefetchFiles?: number };
      t.equal(inspected.prefetchFiles, Number(m?.[1]), 'the thin image carries the recorded list');
      await d.docker(['pull', thinRef]);
      sameAs(t, await observe(d, thinRef), original, 'recorded thin');
      t.match(d.pluginLog(), /prefetch for thin layer \w+ from converted\.example\.org: \d+ objects/, 'the plugin prefetched the list at start');
    });

    await t.test('from docker-archive: (docker save), thin image --load-ed into the plugin daemon', async (t) => {
      const archive = path.join(src.dir, 'app.tar');
      await src.docker(['save', '-o', archive, srcRef]);
      const out = await d2c(['convert', `docker-archive:${archive}`, ...repoArgs, '--thin-name', 'archive/app:1', '--load'], { DOCKER_HOST: d.dockerHost });
      t.match(out, /thin image archive\/app:1 loaded/, out);
      sameAs(t, await observe(d, 'archive/app:1'), original, 'docker-archive → thin');
    });

    await t.test('from oci: (an OCI image layout), thin image written with -o and docker load', async (t) => {
      const layout = path.join(src.dir, 'oci');
      await ociLayoutOf(client, srcRef, layout);
      const file = path.join(src.dir, 'thin-oci.tar');
      const out = await d2c(['convert', `oci:${layout}:1`, ...repoArgs, '--thin-name', 'oci/app:1', '-o', file]);
      t.match(out, /written to/, out);
      await d.docker(['load', '-i', file]);
      sameAs(t, await observe(d, 'oci/app:1'), original, 'oci → thin');
    });

    await t.test('R15: docker push of the thin image from the plugin daemon, docker pull on another daemon and back', async (t) => {
      const pushed = reg.name('thin/pushed:1');
      await d.docker(['tag', reg.name('thin/app:1'), pushed]);
      await d.docker(['push', pushed]);
      const id = (await d.docker(['image', 'inspect', '-f', '{{.Id}}', pushed])).stdout.trim();
      await d.docker(['rmi', pushed, reg.name('thin/app:1')]);
      await d.docker(['pull', pushed]);
      t.equal((await d.docker(['image', 'inspect', '-f', '{{.Id}}', pushed])).stdout.trim(), id, 'pulled back with the same image ID');
      t.equal((await d.docker(['run', '--rm', '--network', 'none', pushed])).stdout, original.output, 'and it runs');
      await src.docker(['pull', pushed]);
      t.equal((await src.docker(['image', 'inspect', '-f', '{{.Id}}', pushed])).stdout.trim(), id, 'another daemon pulls the same thin image');
      await d.docker(['rmi', pushed, 'archive/app:1', 'oci/app:1']);
    });
  });
}
