/**
 * Demo, last part: the graphdriver. Ingests a busybox layer into the demo repository in DUCC's
 * layout, installs the managed plugin into a private dockerd (own data root, socket and pidfile
 * under a temp dir), and runs a thin image whose layers are the busybox layer and the demo's
 * /layers/app. The app's 12 MiB model file is never read, so it is never fetched.
 *   node dist/scripts/demo-docker.js <repo dir> <keys dir> <fqrn> <server url>
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { DirStorage, ingest } from '../cvmfs/index.js';
import { busyboxRootfsTar, dockerUnavailable, startManagedDaemon, type Daemon } from '../test/lib/dockerd.js';
import { tarOf } from '../test/lib/tar-of.js';

const run = promisify(execFile);
const [repoDir, keysDir, fqrn, url] = process.argv.slice(2) as [string, string, string, string];
const step = (s: string) => console.log(`\n\x1b[1m== ${s}\x1b[0m`);

const why = dockerUnavailable();
if (why) {
  console.log(`\n*** graphdriver part of the demo skipped: ${why} ***`);
  process.exit(0);
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'demo-docker-'));
let d: Daemon | undefined;
try {
  step('ingest a busybox layer into the repository in the DUCC layout (.layers/<xx>/<digest>/layerfs)');
  const bb = await busyboxRootfsTar(work);
  const digest = createHash('sha256').update(bb).digest('hex');
  const layerPath = `/.layers/${digest.slice(0, 2)}/${digest}/layerfs`;
  const r = await ingest({ storage: new DirStorage(repoDir), keysDir, path: layerPath, input: Readable.from([bb]) });
  console.log(`${layerPath}: revision ${r.revision}`);

  step('make plugin, docker plugin set/enable, then dockerd --experimental -s <plugin> (a private daemon)');
  const cfg = path.join(work, 'cfg');
  fs.mkdirSync(path.join(cfg, 'keys'), { recursive: true });
  fs.copyFileSync(path.join(keysDir, `${fqrn}.pub`), path.join(cfg, 'keys', `${fqrn}.pub`));
  d = await startManagedDaemon({
    configDir: cfg, pluginEnv: { CVMFSGD_SERVER_URL: url.replace(fqrn, '@fqrn@') },
    onBuild: (out) => console.log(/plugin rootfs: [^\n]*/.exec(out)?.[0] ?? out),
  });
  console.log(`docker info: Storage Driver ${(await d.docker(['info', '--format', '{{.Driver}}'])).stdout.trim()}`);

  step('the thin image: one layer holding thin.json');
  const thin = { version: '1.0', origin: 'make demo', layers: [
    { digest, url: `cvmfs://${fqrn}${layerPath}` },
    { digest: createHash('sha256').update('demo app layer').digest('hex'), url: `cvmfs://${fqrn}/layers/app` },
  ] };
  console.log(JSON.stringify(thin, null, 2));
  await d.docker(['import', '-', 'demo/thin:1'], { input: await tarOf([{ type: 'file', name: 'thin.json', content: JSON.stringify(thin) }]) });
  console.log((await d.docker(['images', 'demo/thin'])).stdout.trim());

  step('docker run the thin image: the layers are mounted from the repository, files fetched on first read');
  console.log((await d.docker(['run', '--rm', '--network', 'none', 'demo/thin:1', 'sh', '-c', 'sh /opt/app/run.sh; ls -l /opt/app'])).stdout.trimEnd());
  // The repository stays mounted for CVMFSGD_IDLE_UNMOUNT_SECONDS after the container: read its counters.
  const counters = JSON.parse((await run('getfattr', ['--only-values', '-n', 'user.counters', path.join(d.home, 'cvmfs', fqrn)])).stdout) as { bytesFetched: number };
  console.log(`bytes fetched from the server: ${counters.bytesFetched} (the image holds a 12 MiB model file and a 2 MB busybox; only what ran was read)`);
  console.log('\ngraphdriver demo done');
} finally {
  await d?.stop();
  fs.rmSync(work, { recursive: true, force: true });
}
