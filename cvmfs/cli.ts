#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=2
/** `cvmfs-repo`: create, fill, re-sign, inspect and serve a CernVM-FS repository. */
import { open, readFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { CodedError, CvmfsError, messageOf } from './errors.js';
import { parseHashAlgo } from './format/hash.js';
import { clientCountersOf, CLIENT_METRIC_PREFIX, parsePrometheusText, type ClientCounters } from './prometheus-text.js';
import { openRepository } from './reader/repository.js';
import { serveRepository } from './server/http-server.js';
import { openStorage, type OpenedStorage } from './writer/open-storage.js';
import type { RepositoryStorage } from './writer/storage.js';
import { DirStorage } from './writer/storage-dir.js';
import { ingest, initRepository, repositoryInfo, resign } from './writer/repository.js';
import { loadState } from './writer/repository-state.js';
import { tuneMallocForWriter } from './malloc-tune.js';

const USAGE = `usage:
  cvmfs-repo init    (--dir R | --store S) --keys K --name FQRN [--hash sha1|shake128]
  cvmfs-repo ingest  (--dir R | --store S) --keys K --path /some/path [FILE|-]
  cvmfs-repo resign  (--dir R | --store S) --keys K [--days N]
  cvmfs-repo info    (--dir R | --store S) [--json]
  cvmfs-repo serve   --dir R [--port P] [--bind ADDR]
  cvmfs-repo mount   --url URL[,URL…] --name FQRN --pubkey FILE[,FILE…] --cache DIR [--quota MB] [--proxy P] [--ttl S] MOUNTPOINT
  cvmfs-repo cat     --url URL[,URL…] --name FQRN --pubkey FILE[,FILE…] [--cache DIR] PATH
  cvmfs-repo ls      --url URL[,URL…] --name FQRN --pubkey FILE[,FILE…] [--cache DIR] [PATH]
  cvmfs-repo stats   [--socket PATH | --url http://HOST:PORT] [--json]

R is the served repository tree, K the key directory (kept outside R).
S is s3://BUCKET[/PREFIX] (or a directory, as --dir), with [--s3-endpoint URL] [--s3-region REGION]
for S3-compatible stores (default $AWS_ENDPOINT_URL_S3, else AWS S3) and credentials from the
AWS SDK's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, …).
ingest reads a tar stream (plain, gzip or zstd) from FILE or standard input.
mount serves the repository read-only through FUSE until SIGINT or SIGTERM.
cat and ls cache in $XDG_CACHE_HOME/cvmfs-graphdriver/FQRN (else ~/.cache/…) without --cache;
a cache directory must be private to its owner.
stats shows the graphdriver plugin's client counters per repository, from its metrics endpoint
(CVMFSGD_METRICS; default socket /var/lib/cvmfs-graphdriver/metrics.sock).`;

class UsageError extends Error {}

/**
 * The per-user cache of `cat` and `ls`: $XDG_CACHE_HOME/cvmfs-graphdriver/<fqrn>, else
 * ~/.cache/cvmfs-graphdriver/<fqrn>. Private to the user (the cache creates it 0700 and refuses
 * one another user could write), never a shared path in /tmp.
 */
function defaultCacheDir(fqrn: string, env: NodeJS.ProcessEnv): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(fqrn)) throw new UsageError(`--name "${fqrn}" is not a repository name`);
  const xdg = env.XDG_CACHE_HOME;
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.cache');
  return path.join(base, 'cvmfs-graphdriver', fqrn);
}

interface StoreFlags { readonly dir?: string | undefined; readonly store?: string | undefined;
  readonly 's3-endpoint'?: string | undefined; readonly 's3-region'?: string | undefined }

/** The storage named by exactly one of --dir R and --store S (writer/open-storage.ts). */
async function parseStore(f: StoreFlags, env: NodeJS.ProcessEnv): Promise<OpenedStorage> {
  try {
    return await openStorage({ dir: f.dir, store: f.store, s3Endpoint: f['s3-endpoint'], s3Region: f['s3-region'] }, env);
  } catch (err) {
    if (err instanceof CvmfsError && err.code === 'CVMFS_BAD_ARGUMENT') throw new UsageError(err.message.replace(/^CVMFS_BAD_ARGUMENT: /, ''));
    throw err;
  }
}

function need(v: string | undefined, flag: string): string {
  if (v === undefined || v === '') throw new UsageError(`missing --${flag}`);
  return v;
}

function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function parse(args: string[]) {
  return parseArgs({
    args, allowPositionals: true, strict: true,
    options: {
      dir: { type: 'string' }, store: { type: 'string' }, 's3-endpoint': { type: 'string' }, 's3-region': { type: 'string' },
      keys: { type: 'string' }, name: { type: 'string' }, hash: { type: 'string' },
      path: { type: 'string' }, days: { type: 'string' }, port: { type: 'string' }, bind: { type: 'string' },
      json: { type: 'boolean' }, threads: { type: 'string' },
      url: { type: 'string' }, pubkey: { type: 'string' }, cache: { type: 'string' }, quota: { type: 'string' },
      proxy: { type: 'string' }, ttl: { type: 'string' }, debug: { type: 'boolean' }, 'allow-other': { type: 'boolean' },
      socket: { type: 'string' },
    },
  });
}
type Values = ReturnType<typeof parse>['values'];

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '-h' || cmd === '--help' || cmd === 'help') { console.log(USAGE); return cmd ? 0 : 2; }
  const { values: v, positionals } = parse(rest);
  let opened: OpenedStorage | undefined;
  const storage = async (): Promise<RepositoryStorage> => (opened ??= await parseStore(v, process.env)).storage;
  try {
    return await run(cmd, v, positionals, storage);
  } finally {
    opened?.close();
  }
}

async function run(cmd: string, v: Values, positionals: string[], storage: () => Promise<RepositoryStorage>): Promise<number> {
  const client = async (cacheDefault?: string) => {
    const fqrn = need(v.name, 'name');
    const pubkeys = need(v.pubkey, 'pubkey').split(',');
    const publicKeys = await Promise.all(pubkeys.map(async (f) => ({ name: f, pem: await readFile(f, 'utf8').catch((err: Error) => {
      throw new UsageError(`cannot read public key ${f}: ${err.message}`);
    }) })));
    const cacheDir = v.cache ?? cacheDefault ?? defaultCacheDir(fqrn, process.env);
    return openRepository({
      fqrn, servers: need(v.url, 'url').split(/[,;]/), publicKeys, cacheDir,
      ...(v.quota ? { quotaBytes: Number(v.quota) * 1024 * 1024 } : {}), ...(v.proxy ? { proxy: v.proxy } : {}),
      ...(v.ttl ? { maxTtlSeconds: Number(v.ttl) } : {}), env: process.env, log: (l) => console.error(l),
    });
  };
  switch (cmd) {
    case 'init': {
      const where = await storage();
      const st = await initRepository({ storage: where, keysDir: need(v.keys, 'keys'), fqrn: need(v.name, 'name'),
        algo: parseHashAlgo(v.hash ?? 'sha1') });
      console.log(`created ${st.manifest.fqrn} at ${where.location} (revision ${st.manifest.revision}, ${st.algo}); keys in ${v.keys}`);
      console.log(`whitelist expires ${st.whitelist.expires.slice(0, 8)}: run "cvmfs-repo resign" before then`);
      return 0;
    }
    case 'ingest': {
      const file = positionals[0] ?? '-';
      // Opened before anything else, so a missing FILE fails as an error here rather than as an
      // unhandled 'error' event on a stream nobody reads yet.
      const input = file === '-' ? process.stdin : (await open(file, 'r')).createReadStream();
      const t0 = process.hrtime.bigint();
      const r = await ingest({ storage: await storage(), keysDir: need(v.keys, 'keys'), path: need(v.path, 'path'), input,
        ...(v.threads ? { threads: Number(v.threads) } : {}) });
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      console.log(`${r.fqrn} revision ${r.revision}: ${v.path} ← ${r.layer.entries} entries (${r.layer.compression}), ` +
        `${fmtBytes(r.layer.contentBytes)} content, ${r.objects.written} new objects (${fmtBytes(r.objects.bytesWritten)}), ` +
        `${r.objects.present} already present, ${s.toFixed(2)} s`);
      return 0;
    }
    case 'resign': {
      const days = v.days === undefined ? undefined : Number(v.days);
      const exp = await resign({ storage: await storage(), keysDir: need(v.keys, 'keys'), ...(days !== undefined ? { days } : {}) });
      console.log(`whitelist re-signed; expires ${exp.toISOString()}`);
      return 0;
    }
    case 'info': {
      const i = await repositoryInfo(await storage());
      if (v.json) {
        console.log(JSON.stringify(i, (_k, x: unknown) => (typeof x === 'bigint' ? Number(x) : x), 2));
        return 0;
      }
      const t = i.totals;
      console.log([
        `repository   ${i.fqrn}`,
        `revision     ${i.revision} (published ${new Date(i.publishTime * 1000).toISOString()})`,
        `root hash    ${i.rootHash} (${i.hashAlgorithm})`,
        `whitelist    expires ${i.whitelistExpires.toISOString()}${i.whitelistExpired ? '  EXPIRED: run cvmfs-repo resign' : ''}`,
        `catalogs     ${i.catalogs}`,
        `objects      ${i.objects} (${fmtBytes(i.objectBytes)})`,
        `entries      ${t.regular} files, ${t.dir} dirs, ${t.symlink} symlinks, ${t.special} special; ${fmtBytes(Number(t.file_size))} of file content`,
      ].join('\n'));
      return 0;
    }
    case 'serve': {
      if (v.store !== undefined) throw new UsageError('serve serves a local directory (--dir R); serve a bucket through its own HTTP endpoint');
      const dir = need(v.dir, 'dir');
      const { manifest } = await loadState(new DirStorage(dir));
      const srv = await serveRepository({ dir, fqrn: manifest.fqrn, port: Number(v.port ?? 8000), bind: v.bind ?? '127.0.0.1',
        log: (l) => console.error(l) });
      console.log(`serving ${manifest.fqrn} at ${srv.url}`);
      await new Promise<void>((resolve) => {
        for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
      });
      await srv.close();
      return 0;
    }
    case 'mount': {
      const mountpoint = positionals[0];
      if (!mountpoint) throw new UsageError('missing MOUNTPOINT');
      const repo = await client(need(v.cache, 'cache'));
      const { mountRepository } = await import('./fuse/mount.js');
      let m: Awaited<ReturnType<typeof mountRepository>>;
      try {
        m = await mountRepository(repo, { mountpoint, ...(v.debug ? { debug: true } : {}), ...(v['allow-other'] ? { allowOther: true } : {}),
        log: (l) => console.error(l) });
      } catch (err) {
        await repo.close(); // its worker threads would keep the process alive
        throw err;
      }
      console.log(`mounted ${repo.fqrn} revision ${repo.revision} at ${mountpoint}${repo.isOffline ? ' (offline)' : ''}`);
      const why = await new Promise<string>((resolve) => {
        for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve(sig));
        void m.gone.then(() => resolve('unmounted from outside'));
      });
      await m.unmount();
      await repo.close();
      console.log(`unmounted ${mountpoint} (${why})`);
      return 0;
    }
    case 'cat': {
      const p = positionals[0];
      if (!p) throw new UsageError('missing PATH');
      const repo = await client();
      try { await pipeline(repo.createReadStream(p), process.stdout); } finally { await repo.close(); }
      return 0;
    }
    case 'ls': {
      const repo = await client();
      try {
        for (const d of (await repo.readdir(positionals[0] ?? '/')).sort((a, b) => a.name.localeCompare(b.name))) {
          const type = d.kind === 'dir' ? 'd' : d.kind === 'symlink' ? 'l' : d.kind === 'file' ? '-' : 'c';
          console.log(`${type}${(d.mode & 0o7777).toString(8).padStart(4, '0')} ${String(d.uid).padStart(5)} ${String(d.gid).padStart(5)} ${String(d.size).padStart(12)} ${d.name}${d.kind === 'symlink' ? ` -> ${d.symlink}` : ''}`);
        }
      } finally { await repo.close(); }
      return 0;
    }
    case 'stats': {
      if (v.socket !== undefined && v.url !== undefined) throw new UsageError('stats takes --socket PATH or --url URL, not both');
      const text = await fetchMetrics(v.url !== undefined ? { url: metricsUrl(v.url) } : { socketPath: v.socket ?? DEFAULT_METRICS_SOCKET });
      const samples = parsePrometheusText(text).samples.filter((x) => x.name.startsWith(CLIENT_METRIC_PREFIX));
      const repositories = clientCountersOf(samples);
      if (v.json) {
        // JSON has no NaN or infinities: they are written as the exposition writes them.
        const finite = (_k: string, x: unknown) => (typeof x === 'number' && !Number.isFinite(x) ? (Number.isNaN(x) ? 'NaN' : x > 0 ? '+Inf' : '-Inf') : x);
        console.log(JSON.stringify({ samples, repositories }, finite, 2));
      } else console.log(repositories.length ? statsTable(repositories) : 'no repository mounted since the plugin started');
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${cmd}"`);
  }
}

/**
 * Where the plugin serves its metrics unless CVMFSGD_METRICS says otherwise: METRICS_SOCKET_NAME
 * in its default state directory (plugin/settings.ts, plugin/main.ts; cvmfs/ does not import them).
 */
const DEFAULT_METRICS_SOCKET = '/var/lib/cvmfs-graphdriver/metrics.sock';
const METRICS_TIMEOUT_MS = 5_000;
const METRICS_MAX_BYTES = 16 * 1024 * 1024;

/** `http://host:port` means its /metrics; any other path is taken as given. */
function metricsUrl(s: string): URL {
  let u: URL;
  try { u = new URL(s); } catch { throw new UsageError(`--url ${JSON.stringify(s)} is not a URL`); }
  if (u.protocol !== 'http:') throw new UsageError(`--url ${s}: only http:// is served by the plugin`);
  if (u.pathname === '/') u.pathname = '/metrics';
  return u;
}

/** GET /metrics from the plugin's socket or a URL; the whole exchange within METRICS_TIMEOUT_MS. */
function fetchMetrics(target: { readonly socketPath: string } | { readonly url: URL }): Promise<string> {
  const where = 'socketPath' in target ? target.socketPath : target.url.href;
  const signal = AbortSignal.timeout(METRICS_TIMEOUT_MS);
  return new Promise((resolve, reject) => {
    const fail = (err: Error) => {
      if (err instanceof CvmfsError) { reject(err); return; }
      if (signal.aborted) { reject(new CvmfsError('CVMFS_TRANSFER_TIMEOUT', `no answer from ${where} within ${METRICS_TIMEOUT_MS / 1000} s`, { cause: err })); return; }
      const code = (err as NodeJS.ErrnoException).code;
      const hint = code === 'EACCES' ? ': the socket is private to root; run as root'
        : code === 'ENOENT' || code === 'ECONNREFUSED' ? ': is the plugin running, with CVMFSGD_METRICS not off? A managed plugin serves it at <data-root>/plugins/<plugin ID>/rootfs/state/metrics.sock'
        : '';
      reject(new CvmfsError('CVMFS_CONNECTION_FAILED', `cannot reach the plugin's metrics at ${where}: ${err.message}${hint}`, { cause: err }));
    };
    const onResponse = (res: http.IncomingMessage) => {
      res.on('error', fail);
      if (res.statusCode !== 200) {
        res.resume();
        fail(new CvmfsError('CVMFS_HTTP_ERROR', `${where} answered ${res.statusCode ?? '?'} to GET /metrics`));
        return;
      }
      const parts: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size <= METRICS_MAX_BYTES) { parts.push(c); return; }
        res.destroy();
        fail(new CvmfsError('CVMFS_HTTP_ERROR', `${where} answered more than ${METRICS_MAX_BYTES} bytes of metrics`));
      });
      res.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    };
    const req = 'socketPath' in target
      ? http.get({ socketPath: target.socketPath, path: '/metrics', signal }, onResponse)
      : http.get(target.url, { signal }, onResponse);
    req.on('error', fail);
  });
}

/** One row per repository; prefetch columns only when the plugin reports them. */
function statsTable(rows: readonly ClientCounters[]): string {
  type Column = readonly [string, (v: ClientCounters['values']) => string];
  const has = (k: string) => rows.some((r) => r.values[k] !== undefined);
  const num = (x: number | undefined) => (x === undefined ? '-' : String(x));
  const mb = (x: number | undefined) => (x === undefined ? '-' : (x / 1e6).toFixed(1));
  const ratio = (v: ClientCounters['values']) => {
    const [h, m] = [v.cache_hits ?? 0, v.cache_misses ?? 0];
    return h + m > 0 ? `${((100 * h) / (h + m)).toFixed(1)}%` : '-';
  };
  const cols: Column[] = [
    ...(has('mounted') ? [['MOUNTED', (v) => (v.mounted === 0 ? 'no' : 'yes')] satisfies Column] : []),
    ['REVISION', (v) => num(v.revision)],
    ['OBJECTS', (v) => num(v.objects_fetched)],
    ['FETCHED MB', (v) => mb(v.bytes_fetched)],
    ['HITS', (v) => num(v.cache_hits)],
    ['MISSES', (v) => num(v.cache_misses)],
    ['HIT RATIO', ratio],
    ...(has('prefetch_hits') ? [['PREFETCH HITS', (v) => num(v.prefetch_hits)] satisfies Column] : []),
    ...(has('prefetch_waste_bytes') ? [['PREFETCH WASTE MB', (v) => mb(v.prefetch_waste_bytes)] satisfies Column] : []),
  ];
  const table = [['REPOSITORY', ...cols.map(([h]) => h)], ...rows.map((r) => [r.repository, ...cols.map(([, f]) => f(r.values))])];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  return table.map((row) => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd()).join('\n');
}

tuneMallocForWriter();
main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err: unknown) => {
  if (err instanceof UsageError || (err instanceof TypeError && (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS'))) {
    console.error(`cvmfs-repo: CVMFS_BAD_ARGUMENT: ${err.message}\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  // Every printed error carries a code: an uncoded one (a raw errno error from fs, a bug) is
  // wrapped, keeping its cause, and a bug also gets its stack.
  const errno = err instanceof Error ? (err as NodeJS.ErrnoException).code : undefined;
  const coded = err instanceof CodedError ? err
    : typeof errno === 'string' && /^E[A-Z0-9]+$/.test(errno) ? new CvmfsError('CVMFS_IO_FAILED', messageOf(err), { cause: err })
    : new CvmfsError('CVMFS_INTERNAL', `${messageOf(err)} (a bug: please report it with the stack below)`, { cause: err });
  console.error(`cvmfs-repo: ${coded.message}`);
  if (coded.code === 'CVMFS_INTERNAL' && err instanceof Error && err.stack) console.error(err.stack);
  process.exitCode = 1;
});
