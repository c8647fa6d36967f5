/**
 * bench/client: the workloads of issue 13, side by side with the physical limit measured in the
 * same run and with the stock cvmfs2 2.12 figures of the issue's table (stock cvmfs2 is not
 * installable here, so that column is fixed, not re-measured).
 *
 * A seeded data set (one large file, small files of 1–8 KiB in directories of 100, mixed files of
 * 10 KiB–2 MiB) is written to local disk, ingested with the writer at /data, served by a separate
 * `cvmfs-repo serve` process on loopback and mounted through our FUSE client in this process. Every
 * read of the mount runs in a child process (dd, python3, ls): this process serves the mount and
 * would deadlock reading it. Rows, each repeated `--reps` times, interleaved with their limit:
 *   1 mount, cold: openRepository() start (fresh cache dir) → first `ls` of the root done, in a
 *     child. Limit: GET manifest, whitelist, certificate and root catalog, SHA-1, inflate, write
 *     the catalog to disk, `ls` of a local directory.
 *   2 cold sequential read of the large file (dd bs=1M), on the mount of row 1. Limit: the same
 *     chunks by GET + SHA-1 + inflate as one pipeline (4 in flight, the client's read-ahead;
 *     SHA-1 and inflate on one worker per core).
 *   3 warm after a remount: unmount, close, reopen with the same cache dir, drop the kernel page
 *     cache (root only), dd again. Limit: dd of the same file on local disk, page cache dropped too.
 *   3b (extra, no target) the same dd once more on that mount, page cache kept. Limit: local dd again.
 *   4 cold `cat` of every small file, one python3 reader, fixed order; fresh cache and mount.
 *     Limit: GET + SHA-1 + inflate of the same objects, one at a time.
 *   5 the same with 8 readers, each on 1/8 of the list, started together; fresh cache and mount.
 *     Limit: the same with 8 GETs in flight.
 *   6 cold `stat` of every entry of small/ (directories and files); fresh cache and mount. Limit:
 *     the same stats on local disk after dropping the page, dentry and inode caches.
 *   7 warm `stat`, the same mount again. Limit: local disk, warm.
 *   8 cold `cat` of the mixed files in a seeded random order, one reader; fresh cache and mount.
 *     Limit: GET + SHA-1 + inflate of the same objects, one at a time, the same order.
 * Each limit arm runs in a node process of its own (client/limit-child.ts), so that the state of
 * the process that runs our client (its heap, its threads) never weighs on it.
 * After a page-cache drop the served repository is read once more, so that cold rows always find
 * the server's files in the page cache (as its limit does).
 *
 *   node dist/bench/client.js [--big-mb 512] [--small 20000] [--mixed 200] [--reps 3] [--seed 13]
 *                             [--quick] [--json FILE] [--work DIR] [--keep] [--no-wait]
 * Before each repetition it waits (up to 5 min; --no-wait skips) until the rest of the machine
 * uses under 15% of a core, and per arm it records the CPU of client, server, readers and the rest.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DirStorage, ingest, initRepository, openRepository, type Repository } from '../cvmfs/index.js';
import { mountRepository, type Mount } from '../cvmfs/fuse/index.js';
import { canDropCaches, dropCaches, machineCpu, processCpu, PyRunner, readyGo, selfCpu, sh, timed, waitQuiet, warmTree, type StreamsResult } from './client/children.js';
import { generate, type DataSet } from './client/data.js';
import type { LimitChildResult, LimitJob } from './client/limit-child.js';
import type { LimitResult, ObjectRef } from './client/limits.js';
import { diagTable, markdownTable, ratio, spread, summary, type Diag, type RowDef, type RowResult } from './client/report.js';

const { values } = parseArgs({
  options: {
    'big-mb': { type: 'string' }, small: { type: 'string' }, mixed: { type: 'string' }, reps: { type: 'string' },
    seed: { type: 'string', default: '13' }, quick: { type: 'boolean', default: false }, json: { type: 'string' },
    work: { type: 'string' }, keep: { type: 'boolean', default: false }, 'no-wait': { type: 'boolean', default: false }, help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log('node dist/bench/client.js [--big-mb 512] [--small 20000] [--mixed 200] [--reps 3] [--seed 13] [--quick] [--json FILE] [--work DIR] [--keep] [--no-wait]');
  process.exit(0);
}
const quick = values.quick;
const BIG_MB = Number(values['big-mb'] ?? (quick ? 32 : 512));
const SMALL = Number(values.small ?? (quick ? 2000 : 20000));
const MIXED = Number(values.mixed ?? (quick ? 40 : 200));
const REPS = Number(values.reps ?? (quick ? 1 : 3));
const SEED = Number(values.seed);
const MB = 1e6;
const FQRN = 'bench.example.org';
const STREAMS = 8;
const READ_AHEAD = 4;

const STOCK_NOTE = 'stock cvmfs2 2.12, issue 13 table, not re-measured here';
const nStat = (n: number) => n + Math.ceil(n / 100) + 1;
const ROWS: readonly RowDef[] = [
  { key: 'mount-cold', name: 'mount, cold (start → first `ls`)', unit: 'ms', stock: 124, target: 0.5,
    limitIs: 'GET manifest + whitelist + certificate + root catalog, SHA-1, inflate, catalog to disk, `ls` of a local dir' },
  { key: 'big-cold', name: `${BIG_MB} MiB file, cold sequential read`, unit: 'MB/s', stock: 129, target: 1.8,
    limitIs: `GET + SHA-1 + inflate of its chunks, ${READ_AHEAD} in flight, inflate on every core` },
  { key: 'big-warm', name: 'same file, warm after a remount (cache kept)', unit: 'MB/s', stock: 1782, target: 1.0,
    limitIs: 'dd of the same file on local disk, same page-cache state' },
  { key: 'big-warm-pc', name: 'same, read again: page cache kept (not an issue 13 row)', unit: 'MB/s', stock: 1782, target: null,
    limitIs: 'dd of the same file on local disk, again (page cache warm)' },
  { key: 'small-1', name: `${SMALL.toLocaleString('en-US')} small files (1–8 KiB), cold \`cat\`, one stream`, unit: 'files/s', stock: 1217, target: 1.5,
    limitIs: 'GET + SHA-1 + inflate of the same objects, one at a time' },
  { key: 'small-8', name: `same, ${STREAMS} streams`, unit: 'files/s', stock: 2488, target: 1.5,
    limitIs: `the same, ${STREAMS} GETs in flight` },
  { key: 'stat-cold', name: `cold \`stat\` of ${nStat(SMALL).toLocaleString('en-US')} entries`, unit: '/s', stock: 27218, target: 1.0,
    limitIs: 'the same stats on local disk, page/dentry/inode caches dropped' },
  { key: 'stat-warm', name: 'warm `stat`, same mount', unit: '/s', stock: 187046, target: 1.0,
    limitIs: 'the same stats on local disk, warm' },
  { key: 'mixed-cold', name: `${MIXED} mixed files (10 KiB–2 MiB), fixed random order, cold`, unit: 'MB/s', stock: 87.5, target: 1.0,
    limitIs: 'GET + SHA-1 + inflate of the same objects, one at a time, same order' },
];

interface Snapshot { t: number; client: number; server: number; machine: number; fetched: number; objects: number; requests: number }

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) console.warn('warning: not root; mounting through FUSE may fail and the page cache cannot be dropped');
  if (!fs.existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing: the bench mounts through FUSE');
  const drop = canDropCaches();
  const work = values.work ? path.resolve(values.work) : fs.mkdtempSync(path.join(os.tmpdir(), 'bench-client-'));
  fs.mkdirSync(work, { recursive: true });
  const mnt = path.join(work, 'mnt');
  const scratch = path.join(work, 'scratch');
  fs.mkdirSync(mnt, { recursive: true });
  fs.mkdirSync(scratch, { recursive: true });
  const cleanup: (() => Promise<void>)[] = [];
  const runCleanup = async () => { while (cleanup.length) await cleanup.pop()!().catch(() => {}); };
  const onSignal = (sig: NodeJS.Signals) => { void runCleanup().finally(() => { if (!values.keep) fs.rmSync(work, { recursive: true, force: true }); process.kill(process.pid, sig); }); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const started = new Date();
  try {
    // ---- data, repository, server ---------------------------------------------------------------
    const local = path.join(work, 'local');
    console.log(`generating ${BIG_MB} MiB file, ${SMALL} small files, ${MIXED} mixed files (seed ${SEED}) in ${local} …`);
    let t = performance.now();
    const data: DataSet = generate(local, { bigBytes: BIG_MB * 1024 * 1024, small: SMALL, mixed: MIXED, seed: SEED });
    console.log(`  ${((performance.now() - t) / 1000).toFixed(1)} s; small ${(data.smallBytes / MB).toFixed(1)} MB, mixed ${(data.mixedBytes / MB).toFixed(1)} MB`);
    const repoDir = path.join(work, 'repo');
    const keysDir = path.join(work, 'keys');
    const storage = new DirStorage(repoDir);
    await initRepository({ storage, keysDir, fqrn: FQRN });
    t = performance.now();
    const tar = spawn('tar', ['-C', local, '-cf', '-', 'big.bin', 'small', 'mixed'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const tarDone = new Promise<void>((resolve, reject) => tar.on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`tar: exit ${c}`)))));
    await ingest({ storage, keysDir, path: '/data', input: tar.stdout! });
    await tarDone;
    console.log(`ingested at /data in ${((performance.now() - t) / 1000).toFixed(1)} s`);

    const server: ChildProcess = spawn(process.execPath, [path.resolve(path.dirname(new URL(import.meta.url).pathname), '../cvmfs/cli.js'),
      'serve', '--dir', repoDir, '--port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
    cleanup.push(async () => { server.kill(); });
    const url = await new Promise<string>((resolve, reject) => {
      server.on('exit', (c) => reject(new Error(`cvmfs-repo serve exited (${c})`)));
      server.stdout!.on('data', (d: Buffer) => { const m = /at (http\S+)/.exec(d.toString()); if (m) resolve(m[1]!); });
    });
    console.log(`served by cvmfs-repo serve (pid ${server.pid}) at ${url}`);
    const pem = fs.readFileSync(path.join(keysDir, `${FQRN}.pub`), 'utf8');
    const open = (cacheDir: string) => openRepository({ fqrn: FQRN, servers: [url], publicKeys: [{ name: 'bench', pem }], cacheDir });

    // ---- the objects behind each workload, for the limits (public reader API: magic xattrs) -------
    const refsOf = async (repo: Repository, rels: readonly string[]): Promise<ObjectRef[]> => Promise.all(rels.map(async (rel) => ({
      hash: (await repo.getxattr(`/data/${rel}`, 'user.hash')).toString(), suffix: '' as const,
      compressed: (await repo.getxattr(`/data/${rel}`, 'user.compression')).toString() !== 'none',
    })));
    const index = await open(path.join(work, 'cache-index'));
    const smallRefs = await refsOf(index, data.small);
    const mixedRefs = await refsOf(index, data.mixed);
    const bigChunks = Number((await index.getxattr('/data/big.bin', 'user.chunks')).toString());
    await index.close();
    fs.rmSync(path.join(work, 'cache-index'), { recursive: true, force: true });
    // The large file is the only one above the chunking threshold: its chunks are the P objects.
    const bigRefs: ObjectRef[] = [];
    for (const d of fs.readdirSync(path.join(repoDir, 'data'))) {
      if (!/^[0-9a-f]{2}$/.test(d)) continue;
      for (const f of fs.readdirSync(path.join(repoDir, 'data', d))) if (f.endsWith('P')) bigRefs.push({ hash: d + f.slice(0, -1), suffix: 'P', compressed: true });
    }
    if (bigRefs.length !== bigChunks) throw new Error(`expected ${bigChunks} chunks of big.bin, found ${bigRefs.length} chunk objects`);
    console.log(`big.bin: ${bigChunks} chunks; page cache ${drop ? 'dropped before warm and local-disk rows' : 'NOT dropped (not root or /proc/sys read-only): warm rows include it'}`);

    // ---- measurement helpers --------------------------------------------------------------------
    const py = new PyRunner(scratch);
    // Limits run in a child process each (limit-child.ts), never in the process that runs our client.
    const limitChild = path.join(path.dirname(new URL(import.meta.url).pathname), 'client/limit-child.js');
    const jobFile = (name: string, job: LimitJob) => { const f = path.join(scratch, `job-${name}.json`); fs.writeFileSync(f, JSON.stringify(job)); return f; };
    const jobs = {
      mount: jobFile('mount', { kind: 'mount', base: url, scratch }),
      big: jobFile('big', { kind: 'pipelined', base: url, refs: bigRefs, inFlight: READ_AHEAD }),
      small1: jobFile('small1', { kind: 'objects', base: url, refs: smallRefs, streams: 1 }),
      small8: jobFile('small8', { kind: 'objects', base: url, refs: smallRefs, streams: STREAMS }),
      mixed: jobFile('mixed', { kind: 'objects', base: url, refs: mixedRefs, streams: 1 }),
    };
    let active: { repo: Repository; m: Mount } | null = null;
    let cacheSeq = 0;
    const freshCache = () => path.join(work, `cache-${cacheSeq++}`);
    const mountWith = async (cacheDir: string) => {
      const repo = await open(cacheDir);
      const m = await mountRepository(repo, { mountpoint: mnt });
      active = { repo, m };
      return active;
    };
    const unmount = async () => {
      if (!active) return;
      const a: { repo: Repository; m: Mount } = active;
      active = null;
      await a.m.unmount();
      await a.repo.close();
    };
    cleanup.push(unmount);
    const snap = (): Snapshot => {
      const c = active?.repo.counters();
      return { t: performance.now(), client: selfCpu(), server: processCpu(server.pid!), machine: machineCpu().busy, fetched: c?.bytesFetched ?? 0, objects: c?.objectsFetched ?? 0, requests: c?.requests ?? 0 };
    };
    const diag = (a: Snapshot, b: Snapshot, o: { seconds?: number; readerCpu?: number; clientCpu?: number; limit?: LimitResult } = {}): Diag => ({
      seconds: o.seconds ?? (b.t - a.t) / 1000, clientCpu: o.clientCpu ?? b.client - a.client, serverCpu: b.server - a.server, readerCpu: o.readerCpu ?? 0,
      otherCpu: Math.max(0, (b.machine - a.machine) - (o.clientCpu ?? b.client - a.client) - (b.server - a.server) - (o.readerCpu ?? 0)),
      fetchedBytes: o.limit ? o.limit.wireBytes : b.fetched - a.fetched, objects: o.limit ? o.limit.objects : b.objects - a.objects,
      requests: o.limit ? o.limit.objects : b.requests - a.requests,
    });
    const afterDrop = async () => { if (drop) await warmTree(repoDir); };
    const dd = (file: string) => timed(`dd if='${file}' of=/dev/null bs=1M status=none`);
    const mntData = (rels: readonly string[]) => rels.map((r) => path.join(mnt, 'data', r));
    const localData = (rels: readonly string[]) => rels.map((r) => path.join(local, r));

    const samples = new Map<string, { ours: number[]; limit: number[]; oursDiag: Diag[]; limitDiag: Diag[] }>(
      ROWS.map((r) => [r.key, { ours: [], limit: [], oursDiag: [], limitDiag: [] }]));
    const put = (key: string, arm: 'ours' | 'limit', v: number, d: Diag) => {
      const s = samples.get(key)!;
      s[arm].push(v);
      s[arm === 'ours' ? 'oursDiag' : 'limitDiag'].push(d);
    };
    const show = (key: string, arm: string, v: number) => {
      const def = ROWS.find((r) => r.key === key)!;
      console.log(`  ${def.name.padEnd(62)} ${arm.padEnd(6)} ${(def.unit === 'ms' ? v.toFixed(1) : def.unit === 'MB/s' ? v.toFixed(1) : v.toFixed(0)).padStart(10)} ${def.unit}`);
    };
    /** Runs the two arms of a row, ours first on even repetitions and the limit first on odd ones. */
    const both = async (rep: number, ours: () => Promise<void>, limit: () => Promise<void>) => {
      if (rep % 2 === 0) { await ours(); await limit(); } else { await limit(); await ours(); }
    };
    const limitRow = async (key: string, job: string, value: (l: LimitResult) => number) => {
      let a = snap(), b = a;
      const l = await readyGo<LimitChildResult>(process.execPath, [limitChild, job], { go: () => { a = snap(); }, done: () => { b = snap(); } });
      put(key, 'limit', value(l), diag(a, b, { seconds: l.seconds, clientCpu: l.cpu, limit: l }));
      show(key, 'limit', value(l));
    };
    const catRow = async (key: string, rels: readonly string[], streams: number, value: (r: StreamsResult) => number) => {
      const cache = freshCache();
      await mountWith(cache);
      let a = snap(), b = a;
      const r = await py.run('cat', mntData(rels), streams, { go: () => { a = snap(); }, done: () => { b = snap(); } });
      put(key, 'ours', value(r), diag(a, b, { seconds: r.seconds, readerCpu: r.readerCpu }));
      show(key, 'ours', value(r));
      await unmount();
      fs.rmSync(cache, { recursive: true, force: true });
    };

    // ---- repetitions ----------------------------------------------------------------------------
    const quiet: ({ waited: number; busy: number } | null)[] = [];
    const memory: { rep: number; rss: number; heapUsed: number; arrayBuffers: number }[] = [];
    for (let rep = 0; rep < REPS; rep++) {
      const q = values['no-wait'] ? null : await waitQuiet();
      quiet.push(q);
      const mem = process.memoryUsage();
      memory.push({ rep: rep + 1, rss: mem.rss, heapUsed: mem.heapUsed, arrayBuffers: mem.arrayBuffers });
      console.log(`\nrepetition ${rep + 1}/${REPS}; this process (our client): RSS ${(mem.rss / MB).toFixed(0)} MB, ArrayBuffers ${(mem.arrayBuffers / MB).toFixed(0)} MB${q ? ` (machine ${(q.busy * 100).toFixed(0)}% of a core busy${q.waited > 4 ? ` after waiting ${q.waited.toFixed(0)} s for quiet` : ''}; load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')})` : ''}`);
      // 1 + 2: mount cold, then the large file cold on that mount. 3: warm after a remount.
      const bigCache = freshCache();
      await both(rep, async () => {
        const a = snap();
        const t0 = performance.now();
        const repo = await open(bigCache);
        const t1 = performance.now();
        active = { repo, m: await mountRepository(repo, { mountpoint: mnt }) };
        const t2 = performance.now();
        await sh(`ls '${mnt}' > /dev/null`);
        const t3 = performance.now();
        const ms = t3 - t0;
        put('mount-cold', 'ours', ms, { ...diag(a, snap()), parts: { openRepository: (t1 - t0) / 1000, mountRepository: (t2 - t1) / 1000, ls: (t3 - t2) / 1000 } });
        show('mount-cold', 'ours', ms);
      }, () => limitRow('mount-cold', jobs.mount, (l) => l.seconds * 1000));
      await both(rep, async () => {
        const a = snap();
        const s = await dd(path.join(mnt, 'data/big.bin'));
        put('big-cold', 'ours', data.bigBytes / MB / s, diag(a, snap(), { seconds: s }));
        show('big-cold', 'ours', data.bigBytes / MB / s);
      }, () => limitRow('big-cold', jobs.big, (l) => {
        if (l.bytes !== data.bigBytes) throw new Error(`big.bin limit inflated ${l.bytes} bytes, not ${data.bigBytes}`);
        return l.bytes / MB / l.seconds;
      }));
      await unmount();
      await both(rep, async () => {
        await mountWith(bigCache);
        if (drop) await dropCaches();
        const a = snap();
        const s = await dd(path.join(mnt, 'data/big.bin'));
        put('big-warm', 'ours', data.bigBytes / MB / s, diag(a, snap(), { seconds: s }));
        show('big-warm', 'ours', data.bigBytes / MB / s);
        const b = snap();
        const s2 = await dd(path.join(mnt, 'data/big.bin'));
        put('big-warm-pc', 'ours', data.bigBytes / MB / s2, diag(b, snap(), { seconds: s2 }));
        show('big-warm-pc', 'ours', data.bigBytes / MB / s2);
        await unmount();
      }, async () => {
        if (drop) await dropCaches();
        const a = snap();
        const s = await dd(path.join(local, 'big.bin'));
        put('big-warm', 'limit', data.bigBytes / MB / s, diag(a, snap(), { seconds: s }));
        show('big-warm', 'limit', data.bigBytes / MB / s);
        const b = snap();
        const s2 = await dd(path.join(local, 'big.bin'));
        put('big-warm-pc', 'limit', data.bigBytes / MB / s2, diag(b, snap(), { seconds: s2 }));
        show('big-warm-pc', 'limit', data.bigBytes / MB / s2);
      });
      fs.rmSync(bigCache, { recursive: true, force: true });
      await afterDrop();

      // 4 + 5: small files, cold, one stream and eight.
      await both(rep, () => catRow('small-1', data.small, 1, (r) => r.n / r.seconds),
        () => limitRow('small-1', jobs.small1, (l) => l.objects / l.seconds));
      await both(rep, () => catRow('small-8', data.small, STREAMS, (r) => r.n / r.seconds),
        () => limitRow('small-8', jobs.small8, (l) => l.objects / l.seconds));

      // 6 + 7: stat cold on a fresh mount, then warm on the same mount; local disk as the limit.
      await both(rep, async () => {
        const cache = freshCache();
        await mountWith(cache);
        for (const key of ['stat-cold', 'stat-warm']) {
          let a = snap(), b = a;
          const r = await py.run('stat', mntData(data.statEntries), 1, { go: () => { a = snap(); }, done: () => { b = snap(); } });
          put(key, 'ours', r.n / r.seconds, diag(a, b, { seconds: r.seconds, readerCpu: r.readerCpu }));
          show(key, 'ours', r.n / r.seconds);
        }
        await unmount();
        fs.rmSync(cache, { recursive: true, force: true });
      }, async () => {
        if (drop) await dropCaches();
        for (const key of ['stat-cold', 'stat-warm']) {
          let a = snap(), b = a;
          const r = await py.run('stat', localData(data.statEntries), 1, { go: () => { a = snap(); }, done: () => { b = snap(); } });
          put(key, 'limit', r.n / r.seconds, diag(a, b, { seconds: r.seconds, readerCpu: r.readerCpu }));
          show(key, 'limit', r.n / r.seconds);
        }
        await afterDrop();
      });

      // 8: mixed files, cold, seeded random order.
      await both(rep, () => catRow('mixed-cold', data.mixed, 1, (r) => r.bytes / MB / r.seconds),
        () => limitRow('mixed-cold', jobs.mixed, (l) => {
          if (l.bytes !== data.mixedBytes) throw new Error(`mixed limit inflated ${l.bytes} bytes, not ${data.mixedBytes}`);
          return l.bytes / MB / l.seconds;
        }));
    }

    // ---- report ---------------------------------------------------------------------------------
    const results: RowResult[] = ROWS.map((def) => {
      const s = samples.get(def.key)!;
      return { def, ours: spread(s.ours), limit: spread(s.limit), oursDiag: s.oursDiag, limitDiag: s.limitDiag };
    });
    const ended = new Date();
    console.log(`\nbench/client, ${ended.toISOString().slice(0, 16).replace('T', ' ')} UTC, ${os.availableParallelism()} cores, ` +
      `${REPS} repetitions (median [min–max]); ours ÷ X as rates: above 1 means ours is faster. Stock column: ${STOCK_NOTE}.\n`);
    console.log(markdownTable(results));
    console.log('\nphysical limit per row:');
    for (const r of results) console.log(`  ${r.def.name}: ${r.def.limitIs}`);
    console.log(`\npage cache: ${drop ? 'dropped before each warm read and each local-disk stat (echo 3 > /proc/sys/vm/drop_caches)' : 'not dropped (needs root and a writable /proc/sys)'}`);
    console.log('\nwhere the time goes (medians; client = the process of our client with its FUSE thread, or the limit child):\n');
    console.log(diagTable(results));
    const mountParts = results[0]!.oursDiag.map((d) => d.parts ?? {});
    const part = (k: string) => (spread(mountParts.map((p) => p[k] ?? NaN)).median * 1000).toFixed(1);
    console.log(`\nmount, cold, ours (medians): openRepository ${part('openRepository')} ms, mountRepository ${part('mountRepository')} ms, first \`ls\` ${part('ls')} ms`);
    const targeted = results.filter((r) => r.def.target !== null);
    console.log(`targets met: ${targeted.filter((r) => summary(r).pass).length}/${targeted.length}`);

    if (values.json) {
      const json = {
        bench: 'client', started: started.toISOString(), ended: ended.toISOString(),
        machine: { cores: os.availableParallelism(), memBytes: os.totalmem(), kernel: os.release(), cpu: os.cpus()[0]?.model },
        config: { bigMiB: BIG_MB, small: SMALL, mixed: MIXED, reps: REPS, seed: SEED, quick, streams: STREAMS, readAhead: READ_AHEAD,
          smallBytes: data.smallBytes, mixedBytes: data.mixedBytes, statEntries: data.statEntries.length, bigChunks, pageCacheDropped: drop },
        quietBeforeRep: quiet, clientProcessMemoryBeforeRep: memory,
        stockNote: STOCK_NOTE,
        rows: results.map((r) => {
          const s = summary(r);
          return { key: r.def.key, name: r.def.name, unit: r.def.unit, ours: r.ours, limit: r.limit, limitIs: r.def.limitIs,
            oursOverLimit: s.oursOverLimit, stock: r.def.stock, oursOverStock: s.oursOverStock, target: r.def.target, pass: s.pass,
            oursOverStockSamples: r.ours.samples.map((v) => ratio(r.def, v, r.def.stock)), oursDiag: r.oursDiag, limitDiag: r.limitDiag };
        }),
      };
      fs.writeFileSync(values.json, JSON.stringify(json, null, 2) + '\n');
      console.log(`wrote ${values.json}`);
    }
  } finally {
    await runCleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (!values.keep) fs.rmSync(work, { recursive: true, force: true });
  }
}

await main();
