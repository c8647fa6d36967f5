/**
 * bench/startup: container start-up from a remote site behind a wide-area link, in one run.
 *
 * The remote site is a network namespace joined by a veth pair (net.ts): Debian's docker-registry
 * and `cvmfs-repo serve` (the Stratum 1) run inside it, each behind a delay relay (relay.ts, far.ts)
 * that adds the round trip; `tbf` on both veth ends shapes the bandwidth. The near side (this
 * namespace) has the site's Squid (squid.ts) and the worker nodes: private dockerds on overlay2 or
 * on our plugin (arms.ts). Images are generated from seeded files (images.ts), pushed to the far
 * registry and converted there with `docker2cvmfs convert --push`.
 *
 * Arms (per image, 5 repetitions each, all (image, arm) pairs shuffled within a repetition):
 *   overlay2-pull         docker pull + run on built-in overlay2 (the regular path)
 *   plugin-pull           the same on our plugin (regular images on the plugin)
 *   thin-cold             thin image, a new node (client cache cold) behind a new Squid (cold)
 *   thin-cold-recorded    the same with the thin image made by `convert --record` (`<repository>_rec`):
 *                         the plugin prefetches the recorded access list while the container starts
 *   thin-cold-squid-warm  thin image, a new node, Squid warmed by another new node of the site
 *   thin-warm             thin image on a node that ran it before (cache warm, repository mounted)
 *   prepulled             the regular image already pulled on overlay2, run only (the floor)
 * and on a ~100 MiB python-like image:
 *   workers-N-thin        N new nodes (own client caches) start the thin image at once, one cold Squid
 *   workers-N-regular     the same N as regular pulls against the registry
 *
 *   node dist/bench/startup/main.js [--rtt-ms 20] [--mbit 200] [--reps 5] [--images a,b] [--arms a,b]
 *     [--size-mb 1024] [--read-all-mb 128] [--workers-mb 100] [--read-pct 5] [--workers 20]
 *     [--seed 1] [--work DIR] [--keep] [--out DIR]
 * Quick: --size-mb 64 --reps 1 --workers 4.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { DEFAULT_PREFETCH_LIMITS } from '../../cvmfs/reader/index.js';
import { Rng } from '../lib/content.js';
import { clientCounters, removeImage, startNode, timedStart, type ClientCounters, type Node, type NodeOptions, type StartTiming } from './arms.js';
import { generateImage, MAIN_IMAGES, pushImage, type GeneratedImage, type ImageName } from './images.js';
import { createLink, type Link } from './net.js';
import { chart, dist, markdown, summarize, type ArmSummary, type Dist, type Results, type Sample } from './report.js';
import { initRepo, startSite, type RelayCounters, type Site } from './site.js';
import { startSquid, type Squid, type SquidLogLine } from './squid.js';

const run = promisify(execFile);

const { values: args } = parseArgs({
  options: {
    'rtt-ms': { type: 'string', default: '20' }, mbit: { type: 'string', default: '200' }, reps: { type: 'string', default: '5' },
    images: { type: 'string' }, arms: { type: 'string' }, 'size-mb': { type: 'string', default: '1024' },
    'read-all-mb': { type: 'string', default: '128' }, 'workers-mb': { type: 'string', default: '100' }, 'read-pct': { type: 'string', default: '5' },
    workers: { type: 'string', default: '20' }, seed: { type: 'string', default: '1' }, work: { type: 'string' }, keep: { type: 'boolean' },
    out: { type: 'string', default: 'bench/results' },
  },
});

const RTT_MS = Number(args['rtt-ms']);
const MBIT = Number(args.mbit);
const REPS = Number(args.reps);
const WORKERS = Number(args.workers);
const FQRN = 'bench.cern.ch';
const MB = 1e6;
const BASE_ARMS = ['overlay2-pull', 'plugin-pull', 'thin-cold', 'thin-cold-recorded', 'thin-cold-squid-warm', 'thin-warm', 'prepulled'] as const;
/** The driver's number of prefetch downloads in flight: the client's default. */
const PREFETCH_IN_FLIGHT = DEFAULT_PREFETCH_LIMITS.concurrency;
type BaseArm = (typeof BASE_ARMS)[number];
const WORKERS_THIN = `workers-${WORKERS}-thin`, WORKERS_REGULAR = `workers-${WORKERS}-regular`;
const WORKERS_IMAGE: ImageName = 'python-100m-5pct';

const images = (args.images?.split(',') ?? [...MAIN_IMAGES]) as ImageName[];
for (const i of images) if (!MAIN_IMAGES.includes(i)) throw new Error(`--images: unknown image ${i} (${MAIN_IMAGES.join(', ')})`);
const armsWanted = args.arms?.split(',') ?? [...BASE_ARMS, WORKERS_THIN, WORKERS_REGULAR];
for (const a of armsWanted) if (![...BASE_ARMS, WORKERS_THIN, WORKERS_REGULAR].includes(a)) throw new Error(`--arms: unknown arm ${a}`);
const baseArms = BASE_ARMS.filter((a) => armsWanted.includes(a));
const workersArms = [WORKERS_THIN, WORKERS_REGULAR].filter((a) => armsWanted.includes(a));

// -------------------------------------------------------------------------------------------------
// Clean-up on every exit path

const cleanups: { name: string; fn: () => Promise<void> }[] = [];
function onCleanup(name: string, fn: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  const once = () => (done ??= fn().catch((e: Error) => console.error(`clean-up of ${name}: ${e.message}`)));
  cleanups.push({ name, fn: once });
  return once;
}
let cleaning: Promise<void> | undefined;
function cleanupAll(): Promise<void> {
  return (cleaning ??= (async () => { for (const c of cleanups.reverse()) await c.fn(); })());
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    console.error(`\n${sig}: cleaning up …`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

const log = (s: string) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${s}`);

async function nearPort(addr: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, addr, () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); });
  });
}

function checkTools(): void {
  if (process.getuid?.() !== 0) throw new Error('bench/startup needs root (network namespaces, dockerd, FUSE)');
  for (const t of ['/usr/sbin/squid', '/usr/bin/docker-registry', '/usr/sbin/dockerd', '/usr/bin/gnuplot', '/usr/sbin/tc', '/usr/bin/getfattr']) {
    if (!fs.existsSync(t)) throw new Error(`${t} is missing (make apt installs it)`);
  }
}

// -------------------------------------------------------------------------------------------------

interface Ctx {
  readonly work: string;
  readonly link: Link;
  readonly site: Site;
  readonly repoDir: string;
  readonly configDir: string;
  readonly linkRttMs: number;
  readonly linkMbit: number;
}

/** A fresh, cold Squid of the site on its own port; stopped by the caller. */
async function freshSquid(ctx: Ctx, tag: string): Promise<{ squid: Squid; stop: () => Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(ctx.work, `squid-${tag}-`));
  const squid = await startSquid({ dir, bind: ctx.link.nearAddr, port: await nearPort(ctx.link.nearAddr), allowFrom: `${ctx.link.nearAddr}/32` });
  const stop = onCleanup(`squid ${dir}`, async () => { await squid.stop(); fs.rmSync(dir, { recursive: true, force: true }); });
  return { squid, stop };
}

let nodeSeq = 0;
async function newNode(ctx: Ctx, kind: 'overlay2' | 'plugin', proxy: string, idleUnmountSeconds?: number): Promise<{ node: Node; stop: () => Promise<void> }> {
  const cacheDir = path.join(ctx.work, 'caches', `node${++nodeSeq}`);
  const o: NodeOptions = { kind, registryHost: ctx.site.registryHost, serverUrl: ctx.site.serverUrl, proxy, configDir: ctx.configDir, cacheDir,
    ...(idleUnmountSeconds !== undefined ? { idleUnmountSeconds } : {}) };
  const node = await startNode(o);
  const stop = onCleanup(`node ${node.daemon.dir}`, async () => { await node.daemon.stop(); fs.rmSync(cacheDir, { recursive: true, force: true }); });
  return { node, stop };
}

const OBJECT = /\/cvmfs\/[^/]+\/data\/([0-9a-f]{2})\/([0-9a-z-]+?)([A-Z]?)$/;

/** `farData`: far requests for data objects (files and chunks; the rest are manifests, whitelists, certificates, catalogs). */
interface Counted { requests: number; far: number; farChunks: number; farCvmfs: number; farData: number; catalogBytes: number; dataBytes: number }
const NO_COUNTS: Counted = { requests: 0, far: 0, farChunks: 0, farCvmfs: 0, farData: 0, catalogBytes: 0, dataBytes: 0 };

function countSquid(ctx: Ctx, lines: readonly SquidLogLine[]): Counted {
  const c: Counted = { ...NO_COUNTS };
  for (const l of lines) {
    c.requests++;
    const far = l.hier === 'HIER_DIRECT';
    if (far) { c.far++; c.farCvmfs++; }
    const m = OBJECT.exec(l.url);
    if (!m) continue;
    let size = 0;
    try { size = fs.statSync(path.join(ctx.repoDir, 'data', m[1]!, `${m[2]!}${m[3] ?? ''}`)).size; } catch { /* not an object of ours */ }
    if (m[3] === 'C') c.catalogBytes += size; else c.dataBytes += size;
    if (far && m[3] === 'P') c.farChunks++;
    if (far && m[3] !== 'C') c.farData++;
  }
  return c;
}

const farSent = (a: Record<string, RelayCounters>, b: Record<string, RelayCounters>) =>
  ['registry', 'stratum1'].reduce((s, k) => s + ((b[k]?.bytesDown ?? 0) - (a[k]?.bytesDown ?? 0)), 0);

/** The plugin's log lines (plugin/main.ts: ISO time, level, message) for the timeline of a recorded start. */
const LOG_LINE = /^(\d{4}-\d\d-\d\dT\S+Z) (\w+) (.*)$/;
const PREFETCH_DONE = /^prefetch for thin layer \S+ from \S+: (\d+) objects, ([\d.]+) MB in ([\d.]+) s/;
const DRIVER_CALL = /^GraphDriver\.(Create|CreateReadWrite|Get|Put|Remove)\b/;

interface Timeline { readonly events: [number, string][]; readonly runs: { start_s: number; done_s: number; objects: number; mb: number }[] }

/**
 * The driver calls (mounts: Get, unmounts: Put) and the list prefetches (driver.ts startPrefetch logs one
 * when it ends or is aborted by the unmount), in seconds from `wallFrom`. Docker mounts the image's
 * stack twice (the -init layer at create, the container's layer at start): one prefetch each.
 */
async function pluginTimeline(node: Node, wallFrom: number): Promise<Timeline> {
  let t: Timeline = { events: [], runs: [] };
  for (let i = 0; i < 30; i++) {
    const events: [number, string][] = [], runs: Timeline['runs'] = [];
    let gets = 0;
    for (const line of node.daemon.pluginLog().split('\n')) {
      const m = LOG_LINE.exec(line);
      if (!m) continue;
      const at = (Date.parse(m[1]!) - wallFrom) / 1000;
      if (at < 0) continue;
      const call = DRIVER_CALL.exec(m[3]!);
      if (call) { events.push([at, call[1]!]); if (call[1] === 'Get') gets++; continue; }
      const pf = PREFETCH_DONE.exec(m[3]!);
      if (pf) {
        const start = at - Number(pf[3]);
        runs.push({ start_s: start, done_s: at, objects: Number(pf[1]), mb: Number(pf[2]) });
        events.push([start, 'prefetch start'], [at, `prefetch end: ${pf[1]} objects, ${pf[2]} MB`]);
      }
    }
    t = { events: events.sort((a, b) => a[0] - b[0]), runs };
    if (runs.length >= gets) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return t;
}

const secs = (bytes: number, ctx: Ctx) => (bytes * 8) / (ctx.linkMbit * 1e6);

/**
 * One measured start with its counts. `squid` is the proxy the node uses (thin arms), `counters`
 * the client counters before (warm node) when the mount outlives the run. `recorded`: the thin
 * image carries a recorded access list that the plugin prefetches (parallel requests: another limit).
 */
async function measured(ctx: Ctx, rep: number, node: Node, ref: string,
  o: { pull: boolean; squid?: Squid; thin: boolean; img: GeneratedImage; before?: ClientCounters; recorded?: boolean }): Promise<Sample> {
  const regFrom = ctx.site.registryLog().length;
  const squidFrom = o.squid?.log().length ?? 0;
  const relayFrom = await ctx.site.relayStats();
  const w0 = ctx.link.counters();
  const wall0 = Date.now(), t0 = performance.now();
  // At the first output (recorded arm): what the site had sent and the client had fetched by then.
  let atTtfo: Promise<[Record<string, RelayCounters>, ClientCounters | undefined]> | undefined;
  const t: StartTiming = await timedStart(node, ref, o.pull, t0,
    o.recorded ? () => { atTtfo = Promise.all([ctx.site.relayStats(), clientCounters(node, FQRN)]); } : undefined);
  const w1 = ctx.link.counters();
  const snap = atTtfo ? await atTtfo : undefined; // before the next relayStats(): one request in flight at a time
  const relayTo = await ctx.site.relayStats();
  const reg = ctx.site.registryLog().slice(regFrom);
  const sq = o.squid ? countSquid(ctx, o.squid.log(squidFrom)) : NO_COUNTS;
  let objects = reg.filter((l) => /"GET \/v2\/[^ ]*\/blobs\//.test(l)).length;
  let after: ClientCounters | undefined;
  if (o.thin) {
    after = await clientCounters(node, FQRN);
    objects = (after?.objectsFetched ?? 0) - (o.before?.objectsFetched ?? 0);
  }
  const farBytes = farSent(relayFrom, relayTo);
  const pullTrips = o.pull ? 4 : 0;
  let roundTrips = pullTrips;
  let ttfoLimit: { ttfo_limit_s: number; ttfo_round_trips: number; ttfo_far_bytes: number } | undefined;
  if (o.recorded && sq.farCvmfs > 0) {
    // Prefetch: the data objects go PREFETCH_IN_FLIGHT at a time, so they cost ceil(objects / PREFETCH_IN_FLIGHT) round trips, not
    // one each. The pull, Squid's connection and the requests before the data (manifest, whitelist,
    // certificate, the catalogs on the way to the files) stay serial.
    const serial = pullTrips + 1 + (sq.farCvmfs - sq.farData);
    roundTrips = serial + Math.ceil(sq.farData / PREFETCH_IN_FLIGHT);
    if (snap) {
      const [relayAt, countersAt] = snap;
      const bytesAt = farSent(relayFrom, relayAt);
      // Objects the client had fetched by the first output, without the catalogs (counted as serial above).
      const catalogs = sq.farCvmfs - sq.farData;
      const dataAt = Math.max(0, (countersAt?.objectsFetched ?? 0) - (o.before?.objectsFetched ?? 0) - catalogs);
      const trips = serial + Math.ceil(Math.min(dataAt, sq.farData) / PREFETCH_IN_FLIGHT);
      ttfoLimit = { ttfo_limit_s: secs(bytesAt, ctx) + (ctx.linkRttMs / 1000) * trips, ttfo_round_trips: trips, ttfo_far_bytes: bytesAt };
    }
  } else if (o.thin && sq.farCvmfs > 0) {
    // Round trips on the critical path: the pull (connect, /v2/, manifest, config + layers in parallel);
    // for CernVM-FS Squid's connection to the site, then one per request that left the site (the
    // entrypoint reads serially), a chunked file's chunks counted as one (they could be fetched at once).
    const chunkedFiles = Math.min(sq.farChunks, o.img.readChunked);
    roundTrips += 1 + (sq.farCvmfs - sq.farChunks) + chunkedFiles;
  }
  const limit = roundTrips > 0 ? secs(farBytes, ctx) + (ctx.linkRttMs / 1000) * roundTrips : undefined;
  const d = (k: keyof ClientCounters) => (after?.[k] ?? 0) - (o.before?.[k] ?? 0);
  const pf = o.thin && after ? {
    prefetch_objects: d('prefetchObjects'), prefetch_bytes: d('prefetchBytes'), prefetch_hits: d('prefetchHits'),
    prefetch_hit_bytes: d('prefetchHitBytes'), prefetch_waste_bytes: d('prefetchWasteBytes'),
  } : {};
  let pfTimes = {};
  if (o.recorded) {
    const tl = await pluginTimeline(node, wall0);
    if (tl.runs.length) {
      pfTimes = { prefetch_start_s: Math.min(...tl.runs.map((r) => r.start_s)), prefetch_done_s: Math.max(...tl.runs.map((r) => r.done_s)),
        prefetch_runs: tl.runs, timeline: tl.events.map(([at, what]) => `${at.toFixed(3)} ${what}`) };
    }
  }
  return {
    rep, ttfo_s: t.ttfoS, total_s: t.totalS, wire_down: w1.down - w0.down, wire_up: w1.up - w0.up,
    requests: sq.requests + reg.length, far_requests: sq.far + reg.length, objects_fetched: objects,
    catalog_bytes: sq.catalogBytes, data_bytes: sq.dataBytes, far_bytes: farBytes,
    ...(limit !== undefined ? { limit_s: limit, round_trips: roundTrips } : {}),
    pull_s: t.pullS, ...pf, ...pfTimes, ...(ttfoLimit ?? {}),
  };
}

let loadAtStart: number[] = [];

async function main(): Promise<void> {
  checkTools();
  const started = new Date();
  loadAtStart = os.loadavg();
  const work = args.work ? path.resolve(args.work) : fs.mkdtempSync(path.join(os.tmpdir(), 'cvmfsb-'));
  fs.mkdirSync(work, { recursive: true });
  fs.chmodSync(work, 0o711);
  if (!args.keep) onCleanup(`work dir ${work}`, async () => { fs.rmSync(work, { recursive: true, force: true }); });
  log(`work dir ${work}; images ${images.join(', ')}; arms ${[...baseArms, ...workersArms].join(', ')}; ${REPS} repetitions; link ${RTT_MS} ms, ${MBIT} Mbit/s`);

  const link = await createLink();
  onCleanup(`netns ${link.ns}`, () => link.destroy());
  log(`remote site: netns ${link.ns}, veth ${link.nearIf} (${link.nearAddr}) ↔ ${link.farIf} (${link.farAddr})`);
  const windowBytes = Math.max(4 << 20, Math.round(4 * (MBIT * 1e6 / 8) * (RTT_MS / 1000)));
  const site = await startSite(link, path.join(work, 'site'), { fqrn: FQRN, windowBytes });
  onCleanup('remote site', () => site.stop());

  // --- Images: generated, pushed, converted (unshaped: this is the release manager's side) ---
  const all: ImageName[] = [...images, ...(workersArms.length ? [WORKERS_IMAGE] : [])];
  const gen = new Map<ImageName, GeneratedImage>();
  const params = { sizeMb: Number(args['size-mb']), readAllMb: Number(args['read-all-mb']), workersMb: Number(args['workers-mb']), readPct: Number(args['read-pct']), seed: Number(args.seed) };
  for (const name of all) {
    const t0 = performance.now();
    const img = await generateImage(name, path.join(work, 'images', name), params);
    gen.set(name, img);
    await pushImage(site.registryHost, img);
    log(`image ${name}: ${img.files} files, ${(img.contentBytes / MB).toFixed(0)} MB in ${img.layers.length} layers (${(img.compressedBytes / MB).toFixed(0)} MB gzip); `
      + `entrypoint reads ${img.readFiles} files, ${(img.readBytes / MB).toFixed(1)} MB (${((100 * img.readBytes) / img.contentBytes).toFixed(1)} %); generated and pushed in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
  const repoDir = path.join(work, 'repo'), keysDir = path.join(work, 'keys');
  await initRepo(repoDir, keysDir, FQRN);
  {
    const t0 = performance.now();
    const refs = all.map((n) => `${site.registryHost}/${gen.get(n)!.repository}:latest`);
    const r = await run(process.execPath, [path.resolve('dist/docker2cvmfs/cli.js'), 'convert', ...refs, '--repo', repoDir, '--keys', keysDir,
      '--insecure', site.registryHost, '--push', '-q'], { maxBuffer: 1 << 24 });
    log(`docker2cvmfs convert --push of ${all.length} images in ${((performance.now() - t0) / 1000).toFixed(0)} s: ${r.stdout.trim().split('\n').slice(-2).join(' / ')}`);
  }
  // Thin images with a recorded access list (`<repository>_rec`), one convert call per image: the
  // layers are in the repository already, so it only records the start (served from the repository
  // directory on loopback, before the Stratum 1 serves it) and pushes.
  const recordedFiles = new Map<ImageName, number>();
  if (baseArms.includes('thin-cold-recorded')) {
    for (const name of images) {
      const t0 = performance.now();
      const repo = gen.get(name)!.repository;
      const r = await run(process.execPath, [path.resolve('dist/docker2cvmfs/cli.js'), 'convert', `${site.registryHost}/${repo}:latest`, '--repo', repoDir, '--keys', keysDir,
        '--insecure', site.registryHost, '--record', '--push', `${site.registryHost}/${repo}_rec:latest`, '-q'], { maxBuffer: 1 << 24 });
      const m = /^recorded (\d+) files .*$/m.exec(r.stdout);
      if (!m) throw new Error(`docker2cvmfs convert --record of ${name}: no "recorded N files" line in ${JSON.stringify(r.stdout.slice(-2000))}`);
      recordedFiles.set(name, Number(m[1]));
      const img = gen.get(name)!;
      log(`docker2cvmfs convert --record of ${name} in ${((performance.now() - t0) / 1000).toFixed(0)} s: ${m[0]} (the entrypoint reads ${img.readFiles} files, ${(img.readBytes / MB).toFixed(1)} MB)`);
    }
  }
  const configDir = path.join(work, 'config');
  fs.mkdirSync(path.join(configDir, 'keys'), { recursive: true });
  fs.copyFileSync(path.join(keysDir, `${FQRN}.pub`), path.join(configDir, 'keys', `${FQRN}.pub`));
  await site.startStratum1(repoDir);
  const regular = (n: ImageName) => `${site.registryHost}/${gen.get(n)!.repository}:latest`;
  const thin = (n: ImageName) => `${site.registryHost}/${gen.get(n)!.repository}_thin:latest`;
  const recorded = (n: ImageName) => `${site.registryHost}/${gen.get(n)!.repository}_rec:latest`;

  let ctx: Ctx = { work, link, site, repoDir, configDir, linkRttMs: RTT_MS, linkMbit: MBIT };
  // The site's long-lived Squid, for the warm node.
  const siteSquid = (await freshSquid(ctx, 'site')).squid;

  // --- Long-lived nodes, prepared before the link is shaped (untimed) ---
  const need = (a: BaseArm) => baseArms.includes(a);
  const pullO = need('overlay2-pull') ? (await newNode(ctx, 'overlay2', siteSquid.url)).node : undefined;
  const pullP = need('plugin-pull') ? (await newNode(ctx, 'plugin', siteSquid.url)).node : undefined;
  const floor = need('prepulled') ? (await newNode(ctx, 'overlay2', siteSquid.url)).node : undefined;
  const warm = need('thin-warm') ? (await newNode(ctx, 'plugin', siteSquid.url, 86_400)).node : undefined;
  for (const name of images) {
    if (floor) { await floor.daemon.docker(['pull', '-q', regular(name)]); await timedStart(floor, regular(name), false); }
    if (warm) { await warm.daemon.docker(['pull', '-q', thin(name)]); await timedStart(warm, thin(name), false); }
  }
  log('long-lived nodes ready (overlay2 pull node, plugin pull node, pre-pulled floor, warm thin node)');

  // --- The link ---
  await link.shape(MBIT);
  await site.setDelay(RTT_MS / 2);
  const p = await site.probe(MBIT);
  log(`link check: ping-like probe ${p.rttMs.toFixed(2)} ms RTT (min ${p.rttMinMs.toFixed(2)}, nominal ${RTT_MS}); bulk transfer of ${(p.bulkBytes / MB).toFixed(0)} MB at ${p.mbit.toFixed(1)} Mbit/s (nominal ${MBIT})`);
  ctx = { ...ctx, linkRttMs: p.rttMs, linkMbit: p.mbit };

  // --- The arms ---
  const samples = new Map<string, Sample[]>();
  const add = (img: ImageName, arm: string, s: Sample) => { const k = `${img}|${arm}`; samples.set(k, [...(samples.get(k) ?? []), s]); };
  const rng = new Rng(Number(args.seed) * 7919 + 1);
  const runOne = async (rep: number, name: ImageName, arm: BaseArm): Promise<Sample> => {
    const img = gen.get(name)!;
    switch (arm) {
      case 'overlay2-pull':
      case 'plugin-pull': {
        const node = arm === 'overlay2-pull' ? pullO! : pullP!;
        await removeImage(node, regular(name));
        const s = await measured(ctx, rep, node, regular(name), { pull: true, thin: false, img });
        await removeImage(node, regular(name));
        return s;
      }
      case 'thin-cold':
      case 'thin-cold-recorded': {
        const rec = arm === 'thin-cold-recorded';
        const sq = await freshSquid(ctx, 'cold');
        const n = await newNode(ctx, 'plugin', sq.squid.url);
        try { return await measured(ctx, rep, n.node, rec ? recorded(name) : thin(name), { pull: true, squid: sq.squid, thin: true, img, recorded: rec }); }
        finally { await n.stop(); await sq.stop(); }
      }
      case 'thin-cold-squid-warm': {
        const sq = await freshSquid(ctx, 'warm');
        try {
          const a = await newNode(ctx, 'plugin', sq.squid.url);
          try { await timedStart(a.node, thin(name), true); } finally { await a.stop(); }
          const b = await newNode(ctx, 'plugin', sq.squid.url);
          try { return await measured(ctx, rep, b.node, thin(name), { pull: true, squid: sq.squid, thin: true, img }); } finally { await b.stop(); }
        } finally { await sq.stop(); }
      }
      case 'thin-warm': {
        const before = await clientCounters(warm!, FQRN);
        return measured(ctx, rep, warm!, thin(name), { pull: false, squid: siteSquid, thin: true, img, ...(before ? { before } : {}) });
      }
      case 'prepulled':
        return measured(ctx, rep, floor!, regular(name), { pull: false, thin: false, img });
    }
  };
  for (let rep = 1; rep <= REPS; rep++) {
    const order = rng.shuffle(images.flatMap((i) => baseArms.map((a) => [i, a] as const)));
    log(`repetition ${rep}/${REPS}: ${order.map(([i, a]) => `${i}/${a}`).join(', ')}`);
    for (const [name, arm] of order) {
      const s = await runOne(rep, name, arm);
      add(name, arm, s);
      const img = gen.get(name)!;
      log(`  ${name} ${arm}: first output ${s.ttfo_s.toFixed(2)} s, total ${s.total_s.toFixed(2)} s, wire ${(s.wire_down / MB).toFixed(1)} MB down, `
        + `${s.requests} requests (${s.far_requests} far), ${s.objects_fetched} objects${s.limit_s !== undefined ? `, limit ${s.limit_s.toFixed(2)} s (${s.round_trips} RTTs)` : ''}`
        + (s.ttfo_limit_s !== undefined ? `, first-output limit ${s.ttfo_limit_s.toFixed(2)} s (${s.ttfo_round_trips} RTTs, ${((s.ttfo_far_bytes ?? 0) / MB).toFixed(1)} MB by then)` : '')
        + (s.prefetch_bytes !== undefined ? `; prefetched ${s.prefetch_objects} objects, ${(s.prefetch_bytes / MB).toFixed(1)} MB (${s.prefetch_hits} hits, ${((s.prefetch_hit_bytes ?? 0) / MB).toFixed(1)} MB), `
          + `unused ${((s.prefetch_waste_bytes ?? 0) / MB).toFixed(2)} MB = ${((100 * (s.prefetch_waste_bytes ?? 0)) / img.readBytes).toFixed(1)} % of the ${(img.readBytes / MB).toFixed(1)} MB read` : '')
        + (s.pull_s ? `; pull done at ${s.pull_s.toFixed(2)} s` : '')
        + (s.prefetch_runs?.length ? `; list prefetches ${s.prefetch_runs.map((r) => `${r.start_s.toFixed(2)} → ${r.done_s.toFixed(2)} s (${r.objects} objects, ${r.mb} MB)`).join(', ')}` : '')
        + (s.timeline?.length ? `\n      plugin timeline (s from the first command): ${s.timeline.join('; ')}` : ''));
    }
  }

  // --- Scale: N workers at once ---
  const workers: Record<string, ArmSummary> = {};
  for (const arm of workersArms) workers[arm] = await workersArm(ctx, arm === WORKERS_THIN ? 'thin' : 'regular', gen.get(WORKERS_IMAGE)!, arm === WORKERS_THIN ? thin(WORKERS_IMAGE) : regular(WORKERS_IMAGE));

  // --- Results ---
  const resultImages: Results['images'] = {};
  for (const name of all) {
    const img = gen.get(name)!;
    const arms: Record<string, ArmSummary> = {};
    if (name !== WORKERS_IMAGE || images.includes(name)) {
      for (const arm of baseArms) {
        const ss = samples.get(`${name}|${arm}`);
        if (ss?.length) {
          arms[arm] = summarize(ss, { readBytes: img.readBytes, filesRead: img.readFiles, linkRttMs: p.rttMs, linkMbit: p.mbit,
            ...(arm === 'thin-cold-recorded' && recordedFiles.has(name) ? { extra: { recorded_files: recordedFiles.get(name)! } } : {}) });
        }
      }
    }
    if (name === WORKERS_IMAGE) Object.assign(arms, workers);
    resultImages[name] = {
      info: { files: img.files, content_bytes: img.contentBytes, layers: img.layers.length, compressed_bytes: img.compressedBytes, read_files: img.readFiles, read_bytes: img.readBytes,
        read_pct: (100 * img.readBytes) / img.contentBytes, chunked_read_files: img.readChunked },
      arms,
    };
  }
  const results: Results = {
    version: 1, started: started.toISOString(), finished: new Date().toISOString(),
    params: { rtt_ms: RTT_MS, mbit: MBIT, reps: REPS, workers: WORKERS, ...params, images, arms: [...baseArms, ...workersArms] },
    link: { nominal_rtt_ms: RTT_MS, nominal_mbit: MBIT, rtt_ms: p.rttMs, rtt_min_ms: p.rttMinMs, mbit: p.mbit },
    host: { cpus: os.cpus().length, mem_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), loadavg_at_start: loadAtStart, loadavg_at_end: os.loadavg() },
    images: resultImages, targets: targets(resultImages),
    notes: [
      `Host: ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB; load average ${loadAtStart.map((x) => x.toFixed(1)).join('/')} at the start, ${os.loadavg().map((x) => x.toFixed(1)).join('/')} at the end (the machine is shared: other benchmarks may have run meanwhile).`,
      'Times run from the first command (`docker pull`, else `docker run`) to the container\'s first output line (TTFO) and to `docker run` returning (total). wire = bytes through the near veth end, both directions (Ethernet frames).',
      'Physical limit = payload bytes the remote site sent ÷ measured bandwidth + measured RTT × round trips on the critical path (pull: 4; CernVM-FS: Squid\'s connection, then one per request that left the site, the chunks of one file counted once).',
      `Recorded arm (thin-cold-recorded: the thin image of \`convert --record\`, whose access list the plugin prefetches, ${PREFETCH_IN_FLIGHT} downloads in flight): the data requests are parallel, so physical limit = payload bytes the site sent ÷ measured bandwidth + measured RTT × (4 for the pull + 1 for Squid's connection + the other requests that left the site (manifest, whitelist, certificate, catalogs on the way) + ceil(data objects that left the site ÷ ${PREFETCH_IN_FLIGHT})). Its first-output limit is the same with the bytes the site had sent and the data objects the client had fetched by the first output. Prefetched / unused = the client's prefetchBytes / prefetchWasteBytes (recorded list and sibling prefetch), read after the container exited; the target compares unused with the bytes the run read.`,
      ...(Object.values(resultImages).some((v) => typeof v.arms['thin-cold']?.prefetch_objects === 'number' && (v.arms['thin-cold']!.prefetch_objects as number) > 0)
        ? ['The thin-cold limit keeps the serial formula (one round trip per request that left the site), but the client\'s sibling prefetch (on by default: up to 32 small siblings of a cold small file, 8 in flight) makes many of those requests parallel and counts their objects as prefetched; its limit overstates the serial path, so thin-cold can sit below 1× of it. Its "unused" prefetch bytes are siblings no read needed.']
        : []),
      `Workers arms: ${WORKERS} private dockerds (on the plugin, each with its own client cache, or on overlay2), started before the timed part; one more node starts alone first (the single-worker reference), then the ${WORKERS} start at once against one new, cold Squid (collapsed_forwarding on).`,
    ],
  };
  const outDir = path.resolve(args.out!);
  fs.mkdirSync(outDir, { recursive: true });
  const jsonFile = path.join(outDir, 'startup.json'), mdFile = path.join(outDir, 'startup.md'), pngFile = path.join(outDir, 'startup.png');
  fs.writeFileSync(jsonFile, JSON.stringify(results, null, 2) + '\n');
  const md = markdown(results);
  fs.writeFileSync(mdFile, md);
  const drawn = await chart(results, pngFile, work);
  console.log('\n' + md);
  console.log(`JSON: ${jsonFile}\nmarkdown: ${mdFile}\nchart: ${drawn ? pngFile : '(gnuplot failed)'}`);
}

/** N new nodes start the same image at once; first one node alone (its egress is the reference). */
async function workersArm(ctx: Ctx, kind: 'thin' | 'regular', img: GeneratedImage, ref: string): Promise<ArmSummary> {
  log(`${kind} × ${WORKERS} workers on ${img.name}: starting ${WORKERS + 1} nodes …`);
  const t0 = performance.now();
  let squid: { squid: Squid; stop: () => Promise<void> } | undefined;
  if (kind === 'thin') squid = await freshSquid(ctx, 'single');
  const proxy = squid?.squid.url ?? 'DIRECT';
  const nodes: { node: Node; stop: () => Promise<void> }[] = [];
  try {
    // One extra node for the single-worker reference; started 4 at a time (2 cores).
    for (let i = 0; i <= WORKERS; i += 4) {
      nodes.push(...await Promise.all(Array.from({ length: Math.min(4, WORKERS + 1 - i) }, () => newNode(ctx, kind === 'thin' ? 'plugin' : 'overlay2', proxy))));
    }
    log(`  ${nodes.length} nodes up in ${((performance.now() - t0) / 1000).toFixed(0)} s; one worker alone …`);
    const single = await measured(ctx, 1, nodes[0]!.node, ref, { pull: true, thin: kind === 'thin', img, ...(squid ? { squid: squid.squid } : {}) });
    await nodes[0]!.stop();
    // The N workers share a new, cold Squid (same port as the nodes were given: restart on it).
    let sq: Squid | undefined;
    if (squid) {
      const port = Number(new URL(squid.squid.url).port);
      await squid.stop();
      const dir = fs.mkdtempSync(path.join(ctx.work, 'squid-workers-'));
      sq = await startSquid({ dir, bind: ctx.link.nearAddr, port, allowFrom: `${ctx.link.nearAddr}/32` });
      onCleanup(`squid ${dir}`, async () => { await sq!.stop(); fs.rmSync(dir, { recursive: true, force: true }); });
    }
    const many = nodes.slice(1).map((n) => n.node);
    const regFrom = ctx.site.registryLog().length;
    const relayFrom = await ctx.site.relayStats();
    const w0 = ctx.link.counters();
    const start = performance.now();
    const timings = await Promise.all(many.map((n) => timedStart(n, ref, true, start)));
    const w1 = ctx.link.counters();
    const relayTo = await ctx.site.relayStats();
    const reg = ctx.site.registryLog().slice(regFrom);
    const sqc = sq ? countSquid(ctx, sq.log()) : { requests: 0, far: 0, farChunks: 0, farCvmfs: 0, catalogBytes: 0, dataBytes: 0 };
    let objects = reg.filter((l) => /"GET \/v2\/[^ ]*\/blobs\//.test(l)).length;
    if (kind === 'thin') {
      objects = 0;
      for (const n of many) objects += (await clientCounters(n, FQRN))?.objectsFetched ?? 0;
    }
    const egress = w1.down - w0.down;
    const last = Math.max(...timings.map((t) => t.ttfoS));
    const s: ArmSummary = {
      ttfo_s: dist(timings.map((t) => t.ttfoS)), total_s: dist(timings.map((t) => t.totalS)),
      wire_bytes: egress + (w1.up - w0.up), wire_bytes_down: egress, read_bytes: img.readBytes * WORKERS,
      catalog_bytes: sqc.catalogBytes, data_bytes: sqc.dataBytes, requests: sqc.requests + reg.length, far_requests: sqc.far + reg.length,
      objects_fetched: objects, files_read: img.readFiles * WORKERS, link_rtt_ms: ctx.linkRttMs, link_mbit: ctx.linkMbit,
      workers: WORKERS, last_output_s: last, egress_bytes: egress, far_payload_bytes: farSent(relayFrom, relayTo),
      single_worker: single, single_worker_egress_bytes: single.wire_down, egress_ratio_to_single: egress / single.wire_down,
      samples: [],
    };
    log(`  ${WORKERS} ${kind} workers: last output after ${last.toFixed(2)} s (median first output ${s.ttfo_s.median.toFixed(2)} s); `
      + `remote-site egress ${(egress / MB).toFixed(1)} MB = ${(egress / single.wire_down).toFixed(2)}× one worker's ${(single.wire_down / MB).toFixed(1)} MB`);
    return s;
  } finally {
    for (const n of nodes) await n.stop();
    await squid?.stop();
  }
}

function targets(imgs: Results['images']): Results['targets'] {
  const out: { name: string; target: string; value: string; met: boolean | null; note: string }[] = [];
  const py = imgs['python-1g-5pct']?.arms;
  const push = (name: string, target: string, ok: boolean | undefined, value: string, note = '') => out.push({ name, target, value, met: ok ?? null, note });
  if (py) {
    const cold = py['thin-cold'], reg = py['overlay2-pull'], warm = py['thin-warm'], floor = py['prepulled'];
    if (cold && reg) {
      const f = reg.ttfo_s.median / cold.ttfo_s.median;
      push('thin cold TTFO vs overlay2 pull + run', '≥ 20× faster', f >= 20, `${f.toFixed(1)}× (${cold.ttfo_s.median.toFixed(2)} s vs ${reg.ttfo_s.median.toFixed(2)} s)`);
    }
    if (cold) {
      const budget = 1.2 * cold.read_bytes + cold.catalog_bytes;
      push('thin cold wire bytes vs read + catalogs', '≤ 1.2× read + catalogs', cold.wire_bytes <= budget,
        `${(cold.wire_bytes / MB).toFixed(1)} MB vs ${(cold.read_bytes / MB).toFixed(1)} MB read + ${(cold.catalog_bytes / MB).toFixed(1)} MB catalogs (${(cold.wire_bytes / (cold.read_bytes + cold.catalog_bytes)).toFixed(2)}×)`);
      if (cold.limit_s) {
        const f = cold.total_s.median / cold.limit_s.median;
        push('thin cold vs physical limit', '≤ 1.5×', f <= 1.5, `${f.toFixed(2)}× (${cold.total_s.median.toFixed(2)} s vs ${cold.limit_s.median.toFixed(2)} s, ${cold.round_trips} round trips)`);
      }
    }
    const rec = py['thin-cold-recorded'];
    if (rec && reg) {
      const f = reg.ttfo_s.median / rec.ttfo_s.median;
      const lim = rec.ttfo_limit_s as Dist | undefined;
      push('recorded thin cold TTFO vs overlay2 pull + run', '≥ 20× faster', f >= 20, `${f.toFixed(1)}× (${rec.ttfo_s.median.toFixed(2)} s vs ${reg.ttfo_s.median.toFixed(2)} s)`,
        lim ? `its physical limit alone is ${(reg.ttfo_s.median / lim.median).toFixed(1)}× (${lim.median.toFixed(2)} s)` : '');
    }
    const recLimit = rec?.ttfo_limit_s as Dist | undefined;
    if (rec && recLimit) {
      const f = rec.ttfo_s.median / recLimit.median;
      const tot = rec.limit_s ? `; total ${(rec.total_s.median / rec.limit_s.median).toFixed(2)}× (${rec.total_s.median.toFixed(2)} s vs ${rec.limit_s.median.toFixed(2)} s)` : '';
      push('recorded thin cold TTFO vs its physical limit', '≤ 1.5×', f <= 1.5,
        `${f.toFixed(2)}× (${rec.ttfo_s.median.toFixed(2)} s vs ${recLimit.median.toFixed(2)} s, ${String(rec.ttfo_round_trips)} round trips)${tot}`, 'limit with parallel prefetch: see the notes');
    }
    if (rec && typeof rec.prefetch_waste_bytes === 'number') {
      const w = rec.prefetch_waste_bytes, pb = typeof rec.prefetch_bytes === 'number' ? rec.prefetch_bytes : 0;
      push('recorded thin cold: prefetched bytes the run never read', '≤ 10 % of read', w <= 0.1 * rec.read_bytes,
        `${((100 * w) / rec.read_bytes).toFixed(1)} % (${(w / MB).toFixed(2)} MB unused of ${(pb / MB).toFixed(1)} MB prefetched; ${(rec.read_bytes / MB).toFixed(1)} MB read)`);
    }
    if (warm && floor) {
      const f = warm.total_s.median / floor.total_s.median;
      push('thin warm vs pre-pulled floor', '≤ 1.1×', f <= 1.1, `${f.toFixed(2)}× (${warm.total_s.median.toFixed(2)} s vs ${floor.total_s.median.toFixed(2)} s)`);
    }
  }
  const wk = Object.entries(imgs[WORKERS_IMAGE]?.arms ?? {}).find(([k]) => k === WORKERS_THIN)?.[1];
  if (wk) {
    const r = wk.egress_ratio_to_single as number;
    push(`${WORKERS} workers: remote-site egress vs one worker`, '≤ 1.2×', r <= 1.2, `${r.toFixed(2)}×`);
  }
  return out;
}

try {
  await main();
} catch (err) {
  console.error(`bench/startup failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
