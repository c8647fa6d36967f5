/**
 * bench/client: a repository with one large file and many small files, served on loopback by a
 * separate `cvmfs-repo serve` process and mounted through our FUSE client in this process. Reads
 * run in child processes (this process serves the mount). Printed side by side from one run:
 * cold/warm sequential read of the large file, cold/warm stat and cold cat of the small files,
 * the same on local disk, and the physical limit (loopback HTTP GET + inflate + SHA-1 of the same
 * objects), with ratios.
 *   node dist/bench/client.js [--big-mb 512] [--small 20000]
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { randomBytes } from 'node:crypto';
import { DirStorage, ingest, initRepository, openRepository } from '../cvmfs/index.js';
import { mountRepository } from '../cvmfs/fuse/index.js';

const { values } = parseArgs({ options: { 'big-mb': { type: 'string', default: '512' }, small: { type: 'string', default: '20000' } } });
const BIG = Number(values['big-mb']) * 1024 * 1024;
const SMALL = Number(values.small);
const MB = 1e6;

/** Realistic layer content: a third incompressible, the rest text-like (as bench/ingest). */
function content(size: number, seed: number): Buffer {
  if (seed % 3 === 0) return randomBytes(size);
  const b = Buffer.allocUnsafe(size);
  let s = seed | 1;
  const words = ['lib', 'share', 'python3', 'def ', 'return ', 'import ', '0x', '\n', 'ELF', 'site-packages', '__init__'];
  for (let pos = 0; pos < size;) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    pos += b.write(words[s % words.length]! + (s % 4099).toString(36), pos);
  }
  return b;
}

function bigContent(size: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  const piece = 1 << 20;
  for (let off = 0, i = 0; off < size; off += piece, i++) content(Math.min(piece, size - off), i).copy(b, off);
  return b;
}

const INFLATE_WORKER = `
const { parentPort } = require('node:worker_threads');
const { inflateSync } = require('node:zlib');
parentPort.on('message', (bufs) => { let n = 0; for (const b of bufs) n += inflateSync(b).length; parentPort.postMessage(n); });
`;

const sh = (cmd: string) => new Promise<string>((resolve, reject) => {
  const c = spawn('bash', ['-c', cmd], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  c.stdout.on('data', (d: Buffer) => { out += d; });
  c.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd}: exit ${code}`))));
});

async function timed(cmd: string): Promise<number> {
  const t0 = performance.now();
  await sh(cmd);
  return (performance.now() - t0) / 1000;
}

const STAT_PY = `
import os, sys, time
names = [l.strip() for l in open(sys.argv[1])]
t = time.perf_counter()
for n in names: os.stat(n)
print(len(names) / (time.perf_counter() - t))
`;
const CAT_PY = `
import os, sys, time
names = [l.strip() for l in open(sys.argv[1])]
t = time.perf_counter()
for n in names:
    with open(n, 'rb') as f: f.read()
print(len(names) / (time.perf_counter() - t))
`;

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-client-'));
  const mnt = path.join(work, 'mnt');
  let cleanup: (() => Promise<void>)[] = [];
  try {
    const local = path.join(work, 'local');
    fs.mkdirSync(path.join(local, 'small'), { recursive: true });
    console.log(`generating ${BIG / 1048576} MiB file and ${SMALL} small files …`);
    fs.writeFileSync(path.join(local, 'big.bin'), bigContent(BIG));
    for (let i = 0; i < SMALL; i++) {
      const d = path.join(local, 'small', `d${Math.floor(i / 500)}`);
      if (i % 500 === 0) fs.mkdirSync(d);
      fs.writeFileSync(path.join(d, `f${i}`), content(200 + (i * 7919) % 8000, i + 2));
    }
    const tarFile = path.join(work, 'l.tar');
    execFileSync('tar', ['-C', local, '-cf', tarFile, '.']);
    const storage = new DirStorage(path.join(work, 'repo'));
    const fqrn = 'bench.example.org';
    await initRepository({ storage, keysDir: path.join(work, 'keys'), fqrn });
    await ingest({ storage, keysDir: path.join(work, 'keys'), path: '/data', input: fs.createReadStream(tarFile) });

    const server = spawn(process.execPath, [path.resolve(path.dirname(new URL(import.meta.url).pathname), '../cvmfs/cli.js'), 'serve', '--dir', path.join(work, 'repo'), '--port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
    cleanup.push(async () => { server.kill(); });
    const url = await new Promise<string>((resolve) => server.stdout.on('data', (d: Buffer) => { const m = /at (http\S+)/.exec(d.toString()); if (m) resolve(m[1]!); }));

    const pub = fs.readFileSync(path.join(work, 'keys', `${fqrn}.pub`), 'utf8');
    fs.mkdirSync(mnt);
    const t0 = performance.now();
    const repo = await openRepository({ fqrn, servers: [url], publicKeys: [{ name: 'pub', pem: pub }], cacheDir: path.join(work, 'cache') });
    const m = await mountRepository(repo, { mountpoint: mnt });
    const mountS = (performance.now() - t0) / 1000;
    cleanup = [async () => { await m.unmount(); await repo.close(); }, ...cleanup];

    // Physical limit: GET every object of the big file over keep-alive loopback, inflate, hash.
    const d = await repo.stat('/data/big.bin');
    const chunkObjects = d.chunked ? (await import('../cvmfs/reader/catalog-tree.js'), (repo as unknown as { tree: { chunks(x: unknown): { hash: Buffer }[] } }).tree.chunks(d).map((c) => `${c.hash.toString('hex')}P`)) : [`${d.hash}`];
    const agent = new http.Agent({ keepAlive: true });
    const get = (rel: string) => new Promise<Buffer>((resolve, reject) => {
      http.get(`${url}/data/${rel.slice(0, 2)}/${rel.slice(2)}`, { agent }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => resolve(Buffer.concat(parts)));
      }).on('error', reject);
    });
    // The same work without FUSE, cache or files, as one pipeline: 3 GETs in flight (like the
    // client's read-ahead), SHA-1 over each body, inflate on a worker per core.
    const workers = Array.from({ length: os.availableParallelism() }, () => new Worker(INFLATE_WORKER, { eval: true }));
    let turn = 0;
    const inflateOnWorker = (b: Buffer) => new Promise<number>((resolve) => {
      const w = workers[turn++ % workers.length]!;
      const onMsg = (n: number) => { resolve(n); };
      w.once('message', onMsg);
      w.postMessage([b]);
    });
    await Promise.all(workers.map((w) => new Promise((r) => { w.once('message', r); w.postMessage([]); })));
    const tl = performance.now();
    let inflated = 0, next = 0;
    await Promise.all(Array.from({ length: 3 }, async () => {
      while (next < chunkObjects.length) {
        const raw = await get(chunkObjects[next++]!);
        createHash('sha1').update(raw).digest();
        inflated += await inflateOnWorker(raw);
      }
    }));
    const limit = inflated / MB / ((performance.now() - tl) / 1000);
    await Promise.all(workers.map((w) => w.terminate()));
    agent.destroy();

    const fetchedBefore = repo.counters().bytesFetched;
    const bigCold = BIG / MB / await timed(`dd if='${mnt}/data/big.bin' of=/dev/null bs=1M status=none`);
    const coldFetched = repo.counters().bytesFetched - fetchedBefore;
    const bigWarm = BIG / MB / await timed(`dd if='${mnt}/data/big.bin' of=/dev/null bs=1M status=none`);
    const bigLocal = BIG / MB / await timed(`dd if='${local}/big.bin' of=/dev/null bs=1M status=none`);

    fs.writeFileSync(path.join(work, 'stat.py'), STAT_PY);
    fs.writeFileSync(path.join(work, 'cat.py'), CAT_PY);
    const names = (dir: string) => Array.from({ length: SMALL }, (_, i) => path.join(dir, 'small', `d${Math.floor(i / 500)}`, `f${i}`)).join('\n');
    fs.writeFileSync(path.join(work, 'mnt-names'), names(path.join(mnt, 'data')));
    fs.writeFileSync(path.join(work, 'local-names'), names(local));
    const py = async (script: string, list: string) => Number(await sh(`python3 '${path.join(work, script)}' '${path.join(work, list)}'`));
    const statCold = await py('stat.py', 'mnt-names');
    const statWarm = await py('stat.py', 'mnt-names');
    const catCold = await py('cat.py', 'mnt-names');
    const catWarm = await py('cat.py', 'mnt-names');
    const statLocal = await py('stat.py', 'local-names');
    const catLocal = await py('cat.py', 'local-names');

    const c = repo.counters();
    console.log(`\nmount (verify manifest, whitelist, certificate; attach root catalog): ${mountS.toFixed(2)} s\n`);
    console.log('arm'.padEnd(52) + 'value'.padStart(14) + '   ratio');
    const row = (name: string, v: number, unit: string, ratio: string) => console.log(`${name.padEnd(52)}${v.toFixed(0).padStart(10)} ${unit.padEnd(6)}${ratio}`);
    row('physical limit: loopback GET + SHA-1 + inflate, 3 in flight', limit, 'MB/s', '1.00× limit');
    row(`FUSE cold sequential read, ${BIG / 1048576} MiB file`, bigCold, 'MB/s', `${(bigCold / limit).toFixed(2)}× limit (target ≥ 0.6); fetched ${(coldFetched / MB).toFixed(1)} MB compressed`);
    row('FUSE warm sequential read', bigWarm, 'MB/s', `${(bigWarm / bigLocal).toFixed(2)}× local disk (target ≥ 0.5)`);
    row('local disk sequential read', bigLocal, 'MB/s', '');
    row(`FUSE cold stat, ${SMALL} small files`, statCold, 'ops/s', `${(statCold / 18000).toFixed(2)}× cvmfs2 cold (18000)`);
    row('FUSE warm stat', statWarm, 'ops/s', `${(statWarm / 56000).toFixed(2)}× cvmfs2 warm (56000); target ≥ 20000`);
    row('local disk stat', statLocal, 'ops/s', '');
    row('FUSE cold cat of every small file', catCold, 'files/s', `${(catCold / 1670).toFixed(2)}× cvmfs2 (1670)`);
    row('FUSE warm cat', catWarm, 'files/s', '');
    row('local disk cat', catLocal, 'files/s', '');
    console.log(`\nreference cvmfs2 2.12 on this machine kind: cold 512 MiB read 194 MB/s (${(bigCold / 194).toFixed(2)}× ours/theirs), mount 0.17 s`);
    console.log(`client counters: ${c.objectsFetched} objects, ${(c.bytesFetched / MB).toFixed(0)} MB fetched, ${c.requests} requests, ${c.catalogsAttached} catalogs`);
  } finally {
    for (const f of cleanup) await f().catch(() => {});
    fs.rmSync(work, { recursive: true, force: true });
  }
}

await main();
