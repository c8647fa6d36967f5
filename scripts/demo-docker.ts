/**
 * Demo, main part: an image goes through the converter. A sample image is built on a private
 * dockerd with built-in overlay2 and pushed to a local registry; `docker2cvmfs convert --push`
 * ingests its layers into the demo repository (DUCC's layout) and pushes its thin image; a private
 * dockerd on the managed plugin pulls and runs the thin image. Prints the thin image's size, the
 * source image's size and the bytes the plugin's client fetched. Everything it starts is stopped,
 * and its temp dirs removed, on success, error, SIGINT and SIGTERM.
 *   node dist/scripts/demo-docker.js <repo dir> <keys dir> <fqrn> <server url>
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { busyboxRootfsTar, dockerUnavailable, startDaemon, startManagedDaemon } from '../test/lib/dockerd.js';
import { registryBinary, REGISTRY_BINARY, startRegistry } from '../test/lib/registry.js';

const run = promisify(execFile);
const [repoDir, keysDir, fqrn, url] = process.argv.slice(2) as [string, string, string, string];
const step = (s: string) => console.log(`\n\x1b[1m== ${s}\x1b[0m`);
const indent = (s: string) => s.trimEnd().replace(/^/gm, '  ');

const DATA_BYTES = 32 << 20;
const DOCKERFILE = `FROM demo/busybox:base
COPY data/ /opt/data/
COPY app/ /opt/app/
ENV DEMO_GREETING="a thin image, its layers in CernVM-FS"
WORKDIR /opt/app
LABEL org.example.demo=make-demo
ENTRYPOINT ["/bin/sh", "/opt/app/run.sh"]
CMD ["world"]
`;
const RUN_SH = `echo "hello $1, from $DEMO_GREETING"
echo "in $(pwd); /opt/data is listed, never read:"
ls -l /opt/data
`;

const why = dockerUnavailable() ?? (registryBinary() ? null : `${REGISTRY_BINARY} missing (Debian package docker-registry)`);
if (why) {
  console.log(`\n*** converter and graphdriver part of the demo skipped: ${why} ***`);
  process.exit(0);
}

const closers: Array<() => Promise<void>> = [];
/** Registers `close` to run (once, in reverse order of registration) at cleanup; returns it. */
function onCleanup(close: () => Promise<void>): () => Promise<void> {
  let closing: Promise<void> | undefined;
  const once = () => (closing ??= close().catch((err: Error) => console.error(`cleanup: ${err.message}`)));
  closers.push(once);
  return once;
}
let cleaning: Promise<void> | undefined;
const cleanup = () => (cleaning ??= (async () => { for (const c of closers.reverse()) await c(); })());

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'demo-docker-'));
onCleanup(async () => fs.rmSync(work, { recursive: true, force: true }));

let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    console.log(`\n${signal}: stopping the daemons, the registry and the mount, removing temp dirs`);
    void cleanup().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  });
}

/** Runs a command with the demo's terminal as its output. */
async function shown(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], env });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (c, s) => resolve([c, s]));
  });
  if (code !== 0) throw new Error(`${path.basename(args[0] ?? cmd)} ${args.slice(1, 2).join(' ')}: ${signal ?? `exit ${code}`}`);
}

function size(n: number): string {
  if (n < 10_000) return `${n} bytes`;
  return n < 1e6 ? `${(n / 1e3).toFixed(1)} kB` : `${(n / 1e6).toFixed(1)} MB`;
}

interface Manifest { readonly config: { readonly size: number }; readonly layers: ReadonlyArray<{ readonly size: number }> }

/** Config and layer blob sizes of a manifest in the registry, as a pull transfers them. */
async function registrySize(registryUrl: string, name: string, tag: string): Promise<{ bytes: number; layers: number }> {
  const res = await fetch(`${registryUrl}/v2/${name}/manifests/${tag}`, {
    headers: { Accept: 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json' },
  });
  if (!res.ok) throw new Error(`GET manifest ${name}:${tag}: HTTP ${res.status}`);
  const m = (await res.json()) as Manifest;
  return { bytes: m.config.size + m.layers.reduce((s, l) => s + l.size, 0), layers: m.layers.length };
}

async function mountAndList(pub: string): Promise<void> {
  const mnt = path.join(work, 'mnt');
  fs.mkdirSync(mnt);
  const log = fs.openSync(path.join(work, 'mount.log'), 'a');
  const child: ChildProcess = spawn(process.execPath, ['dist/cvmfs/cli.js', 'mount', '--url', url, '--name', fqrn, '--pubkey', pub,
    '--cache', path.join(work, 'mount-cache'), mnt], { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  const unmount = onCleanup(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await run('umount', ['-l', mnt]).catch(() => {});
  });
  const mounted = () => fs.readFileSync('/proc/mounts', 'utf8').includes(` ${mnt} fuse`);
  for (let i = 0; i < 100 && !mounted() && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 100));
  if (!mounted()) throw new Error(`cvmfs-repo mount failed:\n${fs.readFileSync(path.join(work, 'mount.log'), 'utf8')}`);
  const dirs = (rel: string) => fs.readdirSync(path.join(mnt, rel), { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name).sort();
  for (const xx of dirs('.layers')) for (const digest of dirs(`.layers/${xx}`)) console.log(`  /.layers/${xx}/${digest}/{layerfs,.metadata}`);
  const markers: string[] = [];
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(mnt, rel), { withFileTypes: true })) {
      if (e.isDirectory()) walk(`${rel}/${e.name}`); else if (!e.name.startsWith('.cvmfs')) markers.push(`${rel}/${e.name}`);
    }
  };
  walk('.metadata');
  for (const m of markers) console.log(`  /${m}`);
  await unmount();
}

async function demo(): Promise<void> {
  step('a local registry: Debian\'s docker-registry on loopback');
  const reg = await startRegistry('open');
  onCleanup(() => reg.close());
  console.log(`registry: ${reg.url}`);

  step('a private dockerd with the managed plugin: make plugin, docker plugin set/enable, dockerd --experimental -s <plugin>');
  const cfg = path.join(work, 'cfg');
  fs.mkdirSync(path.join(cfg, 'keys'), { recursive: true });
  fs.copyFileSync(path.join(keysDir, `${fqrn}.pub`), path.join(cfg, 'keys', `${fqrn}.pub`));
  const pluginEnv = { CVMFSGD_SERVER_URL: url.replace(fqrn, '@fqrn@') };
  const d = await startManagedDaemon({ configDir: cfg, pluginEnv, onBuild: (out) => console.log(/plugin rootfs: [^\n]*/.exec(out)?.[0] ?? out) });
  onCleanup(() => d.stop());
  console.log(`plugin settings: CVMFSGD_SERVER_URL=${pluginEnv.CVMFSGD_SERVER_URL}, config dir ${cfg} (keys/${fqrn}.pub)`);
  console.log(`docker info: Storage Driver ${(await d.docker(['info', '--format', '{{.Driver}}'])).stdout.trim()}`);

  step('the sample image: docker import of a busybox rootfs, then docker build (a 32 MiB data layer, a script layer) on overlay2');
  const src = await startDaemon({ builtinDriver: 'overlay2' });
  const stopSrc = onCleanup(() => src.stop());
  await src.docker(['import', '-', 'demo/busybox:base'], { input: await busyboxRootfsTar(work) });
  const ctx = path.join(work, 'ctx');
  fs.mkdirSync(path.join(ctx, 'data'), { recursive: true });
  fs.mkdirSync(path.join(ctx, 'app'));
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), DOCKERFILE);
  fs.writeFileSync(path.join(ctx, 'data', 'model.bin'), randomBytes(DATA_BYTES));
  fs.writeFileSync(path.join(ctx, 'data', 'README'), 'weights of a model the demo never loads\n');
  fs.writeFileSync(path.join(ctx, 'app', 'run.sh'), RUN_SH);
  const name = 'demo/app', tag = '1';
  const srcRef = reg.name(`${name}:${tag}`), thinRef = reg.name(`${name}:${tag}-thin`);
  console.log(indent(DOCKERFILE));
  await src.docker(['build', '-q', '-t', srcRef, ctx]);
  const history = (await src.docker(['history', '--no-trunc', '--format', '{{.Size}}\t{{.CreatedBy}}', srcRef])).stdout.trimEnd().split('\n');
  for (const h of history.reverse()) {
    const [layerSize = '', by = ''] = h.split('\t');
    console.log(`  ${layerSize.padEnd(8)} ${by.replace(/^\/bin\/sh -c #\(nop\) +/, '').replace(/(dir:[0-9a-f]{12})[0-9a-f]+/, '$1…').trim() || 'docker import (busybox rootfs)'}`);
  }
  const srcSize = Number((await src.docker(['image', 'inspect', '-f', '{{.Size}}', srcRef])).stdout.trim());

  step(`docker push ${srcRef}`);
  console.log((await src.docker(['push', srcRef])).stdout.trim().split('\n').pop());
  await stopSrc();

  step(`docker2cvmfs convert ${srcRef} --push ${thinRef}`);
  await shown(process.execPath, ['dist/docker2cvmfs/cli.js', 'convert', srcRef, '--repo', repoDir, '--keys', keysDir, '--push', thinRef]);

  step('the repository as the converter left it: read back over HTTP (signatures, hashes), mounted with our FUSE client');
  const pub = path.join(keysDir, `${fqrn}.pub`);
  await shown(process.execPath, ['dist/scripts/demo-verify.js', url, pub, fqrn]);
  await mountAndList(pub);

  step(`on the plugin's daemon: docker pull ${thinRef}, docker run it (layers mounted from the repository, files fetched on first read)`);
  console.log((await d.docker(['pull', thinRef])).stdout.trim().split('\n').pop());
  console.log((await d.docker(['image', 'inspect', '-f', 'config: Entrypoint {{json .Config.Entrypoint}} Cmd {{json .Config.Cmd}} WorkingDir {{.Config.WorkingDir}}', thinRef])).stdout.trim());
  console.log(indent((await d.docker(['run', '--rm', '--network', 'none', thinRef])).stdout));

  step('figures');
  // The repository stays mounted for CVMFSGD_IDLE_UNMOUNT_SECONDS after the container: read its counters.
  const counters = JSON.parse((await run('getfattr', ['--only-values', '-n', 'user.counters', path.join(d.home, 'cvmfs', fqrn)])).stdout) as
    { bytesFetched: number; objectsFetched: number };
  const thinSize = Number((await d.docker(['image', 'inspect', '-f', '{{.Size}}', thinRef])).stdout.trim());
  const [srcReg, thinReg] = await Promise.all([registrySize(reg.url, name, tag), registrySize(reg.url, name, `${tag}-thin`)]);
  console.log(`source image ${srcRef}: ${size(srcSize)} (docker image inspect), ${size(srcReg.bytes)} in the registry (${srcReg.layers} layers)`);
  console.log(`thin image   ${thinRef}: ${size(thinSize)} (docker image inspect), ${size(thinReg.bytes)} in the registry (${thinReg.layers} layer)`);
  console.log(`fetched by the plugin's client to run it: ${size(counters.bytesFetched)} in ${counters.objectsFetched} objects (catalogs, busybox, run.sh; never the ${size(DATA_BYTES)} model.bin)`);
}

try {
  await demo();
} catch (err) {
  if (!interrupted) {
    console.error(`\ndemo failed: ${(err as Error).message}`);
    process.exitCode = 1;
  }
} finally {
  if (!interrupted) await cleanup();
}
