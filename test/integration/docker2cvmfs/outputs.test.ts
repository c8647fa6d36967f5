/**
 * Against a private dockerd (test/lib/dockerd.ts: own data root, exec root and socket; built-in
 * vfs driver): `docker save` of a busybox image imported from Debian's busybox-static, read back
 * through openDockerArchive; then a thin image of it written by writeDockerArchive and loaded
 * with loadIntoDocker; `docker image inspect` must show the source config kept and one layer.
 * This folder's only dockerd: sources.test.ts builds its archives without one.
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { MEDIA } from '../../../docker2cvmfs/image.js';
import { verifiedLayer } from '../../../docker2cvmfs/layer-stream.js';
import { writeDockerArchive } from '../../../docker2cvmfs/outputs/archive.js';
import { loadIntoDocker } from '../../../docker2cvmfs/outputs/docker-load.js';
import { openDockerArchive } from '../../../docker2cvmfs/sources/docker-archive.js';
import { LABEL_SOURCE, LABEL_SOURCE_DIGEST, buildThinImage, makeThinJson, readThinImage } from '../../../docker2cvmfs/thin-image.js';
import { busyboxRootfsTar, dockerUnavailable, startDaemon, type Daemon } from '../../lib/dockerd.js';
import { skipLoudly } from '../../lib/skip.js';

const why = dockerUnavailable();
if (why) {
  skipLoudly(t, `DOCKER2CVMFS DOCKERD TESTS SKIPPED: ${why}`);
} else {
  let d: Daemon;
  t.before(async () => { d = await startDaemon({ builtinDriver: 'vfs' }); });
  t.teardown(async () => { await d?.stop(); });

  t.test('docker save (20.10) → openDockerArchive → thin image → writeDockerArchive → docker load', async (t) => {
    const dir = t.testdir();
    await d.docker(['import', '--change', 'ENV GREETING=hello', '--change', 'ENTRYPOINT ["/bin/sh", "-c"]', '--change', 'CMD ["echo $GREETING"]',
      '--change', 'WORKDIR /tmp', '--change', 'USER 1000', '--change', 'LABEL maintainer=me', '--change', 'EXPOSE 8080',
      '--change', 'VOLUME /data', '-', 'src/bb:1'], { input: await busyboxRootfsTar(dir) });
    const saved = path.join(dir, 'saved.tar');
    await d.docker(['save', '-o', saved, 'src/bb:1']);

    const src = await openDockerArchive(saved, { ref: 'src/bb:1' });
    t.equal(src.manifest.layers.length, 1);
    const layerDesc = src.manifest.layers[0]!;
    t.equal(layerDesc.mediaType, MEDIA.dockerLayer, 'docker save writes uncompressed layer.tar');
    const v = verifiedLayer(await src.source.openBlob(layerDesc), layerDesc, src.config.rootfs.diff_ids[0]!);
    let n = 0;
    for await (const c of v.tar) n += (c as Buffer).length;
    t.ok(n > 1_000_000, `busybox layer read and verified (${n} bytes)`);
    await v.done;
    t.same(await readThinImage(src), { thin: false }, 'a regular image is not thin');
    const inspectedSrc = JSON.parse((await d.docker(['image', 'inspect', 'src/bb:1'])).stdout) as [{ Id: string; Config: Record<string, unknown> }];
    t.equal(inspectedSrc[0].Id, src.manifest.config.digest, 'config digest = the image ID dockerd reports');

    const thinJson = makeThinJson([{ digest: layerDesc.digest, url: `cvmfs://example.cern.ch/layers/${layerDesc.digest.slice(7)}` }], src.name);
    const thin = buildThinImage({ config: src.config, name: src.name, manifestDigest: src.manifestDigest }, thinJson);
    const archive = path.join(dir, 'thin.tar');
    await writeDockerArchive(archive, [{ repoTags: ['thin/bb:1'], config: thin.config.bytes, layers: [{ diffId: thin.layer.diffId, tar: thin.layer.tar }] }]);
    const refs = await loadIntoDocker(fs.createReadStream(archive), { dockerHost: `unix://${path.join(d.dir, 'docker.sock')}` });
    t.same(refs, ['thin/bb:1'], 'dockerd reports the loaded tag');

    const [img] = JSON.parse((await d.docker(['image', 'inspect', 'thin/bb:1'])).stdout) as [{
      Id: string; Config: Record<string, unknown> & { Labels: Record<string, string> }; RootFS: { Layers: string[] }; Os: string; Architecture: string }];
    t.equal(img.Id, thin.config.descriptor.digest, 'image ID = our config digest (config loaded byte for byte)');
    t.same(img.RootFS.Layers, [thin.layer.diffId], 'the single thin layer');
    const want = inspectedSrc[0].Config;
    for (const k of ['Env', 'Entrypoint', 'Cmd', 'WorkingDir', 'User', 'ExposedPorts', 'Volumes', 'StopSignal']) t.same(img.Config[k], want[k], `Config.${k} kept`);
    t.equal(img.Config.Labels.maintainer, 'me');
    t.equal(img.Config.Labels[LABEL_SOURCE], src.name);
    t.equal(img.Config.Labels[LABEL_SOURCE_DIGEST], src.manifestDigest);
    t.equal(img.Os, 'linux');

    // And back: docker save of the thin image is recognised as thin.
    const thinSaved = path.join(dir, 'thin-saved.tar');
    await d.docker(['save', '-o', thinSaved, 'thin/bb:1']);
    const back = await readThinImage(await openDockerArchive(thinSaved));
    t.ok(back.thin, 'docker save of the thin image is thin');
    if (back.thin) t.same(back.descriptor.layers.map((l) => l.digest), [layerDesc.digest.slice(7)]);
  });

  t.test('docker load refuses a broken archive: D2C_DOCKER_ERROR', async (t) => {
    const file = path.join(t.testdir(), 'bad.tar');
    fs.writeFileSync(file, Buffer.alloc(4096, 7));
    await t.rejects(loadIntoDocker(fs.createReadStream(file), { dockerHost: `unix://${path.join(d.dir, 'docker.sock')}` }), { code: 'D2C_DOCKER_ERROR' });
  });
}
