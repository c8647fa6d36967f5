/**
 * bench/driver: an image of about 500 MiB across many files whose entrypoint reads about 5 % of it,
 * run side by side in one run:
 *   A. docker load + run on the built-in overlay2 driver;
 *   B. the same on our plugin (legacy process);
 *   C. the thin image (its layer in a CernVM-FS repository served on loopback), cold cache;
 *   D. the thin image again, warm cache, repository still mounted (idle delay);
 *   E. the same after a plugin restart: warm disk cache, fresh mount.
 * Prints time to first output, bytes fetched and each arm's ratio to arm A.
 *   node dist/bench/driver.js [--mb 500] [--files 2000]
 */
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs, promisify } from 'node:util';
import tar from 'tar-stream';
import { DirStorage, ingest, initRepository, serveRepository } from '../cvmfs/index.js';
import { DOCKER, startDaemon, type Daemon } from '../test/lib/dockerd.js';

const run = promisify(execFile);
const { values } = parseArgs({ options: { mb: { type: 'string', default: '500' }, files: { type: 'string', default: '2000' } } });
const TOTAL = Number(values.mb) * 1024 * 1024;
const FILES = Number(values.files);
const READ = Math.max(1, Math.round(FILES * 0.05));
const FQRN = 'bench.example.org';
const MB = 1e6;

function content(size: number, i: number): Buffer {
  if (i % 3 === 0) return randomBytes(size);
  const b = Buffer.allocUnsafe(size);
  for (let p = 0, s = i + 1; p < size; ) { s = (s * 1103515245 + 12345) & 0x7fffffff; p += b.write(`lib${(s % 4099).toString(36)} `, p); }
  return b;
}

async function sha256File(f: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(fs.createReadStream(f), h);
  return h.digest('hex');
}

/** A `docker load` archive: manifest.json, the image config and one layer tar. */
async function loadArchive(out: string, tag: string, layerTar: string, cmd: string[]): Promise<void> {
  const diffId = await sha256File(layerTar);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: cmd, Env: ['PATH=/bin'] },
    rootfs: { type: 'layers', diff_ids: [`sha256:${diffId}`] }, history: [{ created_by: 'bench/driver' }] }));
  const configName = `${createHash('sha256').update(config).digest('hex')}.json`;
  const manifest = Buffer.from(JSON.stringify([{ Config: configName, RepoTags: [tag], Layers: [`${diffId}/layer.tar`] }]));
  const pack = tar.pack();
  const done = pipeline(pack, fs.createWriteStream(out));
  const entry = (name: string, body: Buffer) => new Promise<void>((r, j) => pack.entry({ name }, body, (e) => (e ? j(e) : r())));
  await entry(configName, config);
  await new Promise<void>((resolve, reject) => {
    const s = pack.entry({ name: `${diffId}/layer.tar`, size: fs.statSync(layerTar).size }, (e) => (e ? reject(e) : resolve()));
    fs.createReadStream(layerTar).pipe(s);
  });
  await entry('manifest.json', manifest);
  pack.finalize();
  await done;
}

interface Arm { name: string; loadS: number; firstOutputS: number; totalS: number; fetched?: number }

/** docker load, then docker run until the entrypoint's first line; counters read while it sleeps. */
async function measure(d: Daemon, name: string, archive: string, tag: string, counters?: () => Promise<number>): Promise<Arm> {
  const t0 = performance.now();
  if (archive) await d.docker(['load', '-q', '-i', archive]);
  const t1 = performance.now();
  const env = { ...process.env, DOCKER_HOST: `unix://${path.join(d.dir, 'docker.sock')}` };
  let fetched: number | undefined;
  // The repository may still be mounted (idle) from the previous arm: count only this run's bytes.
  const before = counters ? await counters().catch(() => 0) : 0;
  const firstOutput = await new Promise<number>((resolve, reject) => {
    const c = spawn(DOCKER, ['run', '--rm', '--network', 'none', tag], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let seen = false;
    c.stdout.on('data', async (b: Buffer) => {
      if (seen || !b.toString().includes('ready')) return;
      seen = true;
      const at = performance.now();
      if (counters) fetched = await counters().then((n) => n - before, () => undefined);
      resolve(at);
    });
    c.on('exit', (code) => { if (!seen) reject(new Error(`${name}: container exited ${code} before any output`)); });
  });
  // Let the container finish (it sleeps briefly so counters can be read) before the next arm.
  await new Promise((r) => setTimeout(r, 2500));
  return { name, loadS: (t1 - t0) / 1000, firstOutputS: (firstOutput - t1) / 1000, totalS: (firstOutput - t0) / 1000, ...(fetched !== undefined ? { fetched } : {}) };
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-driver-'));
  const daemons: Daemon[] = [];
  let srv: Awaited<ReturnType<typeof serveRepository>> | undefined;
  try {
    const root = path.join(work, 'rootfs');
    fs.mkdirSync(path.join(root, 'bin'), { recursive: true });
    fs.copyFileSync('/bin/busybox', path.join(root, 'bin/busybox'));
    for (const a of ['sh', 'cat', 'echo', 'sleep']) fs.symlinkSync('busybox', path.join(root, 'bin', a));
    const size = Math.floor(TOTAL / FILES);
    for (let i = 0; i < FILES; i++) {
      const dir = path.join(root, 'data', `d${i % 50}`);
      if (i < 50) fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, `f${i}`), content(size, i));
    }
    const readList = Array.from({ length: READ }, (_, k) => `/data/d${(k * 37) % 50}/f${(k * 37) % FILES}`).filter((p, i, a) => a.indexOf(p) === i);
    const cmd = ['/bin/sh', '-c', `cat ${readList.join(' ')} > /dev/null; echo ready; sleep 2`];
    const layerTar = path.join(work, 'layer.tar');
    await run('tar', ['-C', root, '-cf', layerTar, '.']);
    const layerBytes = fs.statSync(layerTar).size;
    console.log(`image: ${FILES} files, ${(layerBytes / MB).toFixed(0)} MB layer; the entrypoint reads ${readList.length} files (${((readList.length * size) / MB).toFixed(0)} MB, ${(100 * readList.length / FILES).toFixed(1)} %)`);
    await loadArchive(path.join(work, 'regular.tar'), 'bench:regular', layerTar, cmd);
    // Physical limit of a load: unpacking the layer on this disk, nothing else.
    const untarDir = path.join(work, 'untar');
    fs.mkdirSync(untarDir);
    const u0 = performance.now();
    await run('tar', ['-C', untarDir, '-xf', layerTar]);
    await run('sync', ['-f', untarDir]);
    const untarS = (performance.now() - u0) / 1000;
    fs.rmSync(untarDir, { recursive: true, force: true });

    const storage = new DirStorage(path.join(work, 'repo'));
    await initRepository({ storage, keysDir: path.join(work, 'keys'), fqrn: FQRN });
    const digest = await sha256File(layerTar);
    const layerPath = `/.layers/${digest.slice(0, 2)}/${digest}/layerfs`;
    await ingest({ storage, keysDir: path.join(work, 'keys'), path: layerPath, input: fs.createReadStream(layerTar) });
    srv = await serveRepository({ dir: path.join(work, 'repo'), fqrn: FQRN });
    const thinDir = path.join(work, 'thin');
    fs.mkdirSync(thinDir);
    fs.writeFileSync(path.join(thinDir, 'thin.json'), JSON.stringify({ version: '1.0', layers: [{ digest, url: `cvmfs://${FQRN}${layerPath}` }] }));
    const thinLayer = path.join(work, 'thin-layer.tar');
    await run('tar', ['-C', thinDir, '-cf', thinLayer, 'thin.json']);
    await loadArchive(path.join(work, 'thin.tar'), 'bench:thin', thinLayer, cmd);
    const cfg = path.join(work, 'cfg');
    fs.mkdirSync(path.join(cfg, 'keys'), { recursive: true });
    fs.copyFileSync(path.join(work, 'keys', `${FQRN}.pub`), path.join(cfg, 'keys', `${FQRN}.pub`));

    const builtin = await startDaemon({ builtinDriver: 'overlay2' });
    daemons.push(builtin);
    const a = await measure(builtin, 'A. built-in overlay2: load + run', path.join(work, 'regular.tar'), 'bench:regular');
    await builtin.stop();
    daemons.pop();

    const ours = await startDaemon({ pluginEnv: { CVMFSGD_SERVER_URL: srv.url.replace(FQRN, '@fqrn@'), CVMFSGD_CONFIG_DIR: cfg } });
    daemons.push(ours);
    const b = await measure(ours, 'B. our plugin: load + run', path.join(work, 'regular.tar'), 'bench:regular');
    const counters = async () => {
      const out = (await run('getfattr', ['--only-values', '-n', 'user.counters', path.join(ours.home, 'cvmfs', FQRN)])).stdout;
      return (JSON.parse(out) as { bytesFetched: number }).bytesFetched;
    };
    const c = await measure(ours, 'C. thin image, cold cache', path.join(work, 'thin.tar'), 'bench:thin', counters);
    const dWarm = await measure(ours, 'D. thin, warm (mount kept idle)', '', 'bench:thin', counters);
    await ours.restartPlugin();
    const eWarm = await measure(ours, 'E. thin, warm disk cache, new mount', '', 'bench:thin', counters);

    console.log('\narm'.padEnd(40) + 'load s'.padStart(8) + '  run→output s'.padStart(15) + '  total s'.padStart(10) + '  fetched MB'.padStart(12) + '  ratio to A');
    for (const arm of [a, b, c, dWarm, eWarm]) {
      console.log(arm.name.padEnd(39) + arm.loadS.toFixed(2).padStart(8) + arm.firstOutputS.toFixed(2).padStart(15) + arm.totalS.toFixed(2).padStart(10)
        + (arm.fetched !== undefined ? (arm.fetched / MB).toFixed(1) : '-').padStart(12) + `  ${(arm.totalS / a.totalS).toFixed(2)}×`);
    }
    console.log(`\nphysical limit of a load: tar -x + sync of the layer ${untarS.toFixed(2)} s (${(layerBytes / MB / untarS).toFixed(0)} MB/s); `
      + `A's load is ${(a.loadS / untarS).toFixed(2)}× it, B's ${(b.loadS / untarS).toFixed(2)}×. Floor of a thin run: A's run→output, ${a.firstOutputS.toFixed(2)} s`);
    console.log(`layer size ${(layerBytes / MB).toFixed(0)} MB; thin cold fetched ${c.fetched !== undefined ? ((c.fetched / layerBytes) * 100).toFixed(1) : '?'} % of it (compressed bytes over HTTP)`);
  } finally {
    for (const d of daemons.reverse()) await d.stop().catch(() => {});
    await srv?.close();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

await main();
