/**
 * A private Squid (Debian's squid 5) on the near side, as sites put one in front of their CernVM-FS
 * clients: own config, cache directory, pid file and logs under `dir`, started in the foreground
 * (`-N`) and stopped by its pid. Configured as the CernVM-FS documentation advises for site caches:
 * large objects allowed (16 MiB chunks and more), `collapsed_forwarding on` (concurrent misses of
 * one object become one upstream fetch), persistent server connections. Each `startSquid` with a
 * new `dir` is a really cold cache: a fresh instance with an empty cache directory.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const SQUID = '/usr/sbin/squid';

export interface SquidLogLine { readonly status: string; readonly code: number; readonly bytes: number; readonly method: string; readonly url: string; readonly hier: string }

export interface Squid {
  readonly url: string;
  readonly dir: string;
  /** Access-log lines written so far (after `from` lines). */
  log(from?: number): SquidLogLine[];
  stop(): Promise<void>;
}

async function waitPort(host: string, port: number, ms: number, proc: ChildProcess, logFile: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (proc.exitCode !== null) throw new Error(`squid exited with ${proc.exitCode}: ${fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').slice(-2000) : ''}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host, port }, () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('timed out waiting for squid');
}

export async function startSquid(o: { dir: string; bind: string; port: number; allowFrom: string; cacheMb?: number }): Promise<Squid> {
  fs.mkdirSync(path.join(o.dir, 'cache'), { recursive: true });
  const conf = path.join(o.dir, 'squid.conf');
  const accessLog = path.join(o.dir, 'access.log');
  const cacheLog = path.join(o.dir, 'cache.log');
  fs.writeFileSync(conf, [
    `http_port ${o.bind}:${o.port}`,
    `pid_filename ${path.join(o.dir, 'squid.pid')}`,
    'cache_effective_user proxy',
    `cache_dir ufs ${path.join(o.dir, 'cache')} ${o.cacheMb ?? 8192} 16 64`,
    'cache_mem 512 MB',
    'maximum_object_size 1024 MB',
    'maximum_object_size_in_memory 32 MB',
    'cache_replacement_policy heap LFUDA',
    'memory_replacement_policy heap GDSF',
    'logformat bench %ts.%03tu %>a %Ss/%03>Hs %<st %rm %ru %Sh/%<a',
    `access_log stdio:${accessLog} bench`,
    `cache_log ${cacheLog}`,
    'cache_store_log none',
    `coredump_dir ${o.dir}`,
    `acl site src ${o.allowFrom} 127.0.0.1/32`,
    'http_access allow site',
    'http_access deny all',
    'collapsed_forwarding on',
    'server_persistent_connections on',
    'client_persistent_connections on',
    'refresh_pattern . 0 20% 4320',
    'shutdown_lifetime 0 seconds',
    'visible_hostname cvmfs-bench-squid',
    'forwarded_for delete',
    'via off',
    'pinger_enable off',
    'netdb_filename none',
    'logfile_rotate 0',
    'max_filedescriptors 8192',
    'dns_v4_first on',
    '',
  ].join('\n'));
  fs.writeFileSync(accessLog, '');
  await run('chown', ['-R', 'proxy:proxy', o.dir]);
  await run(SQUID, ['-N', '-z', '-f', conf], { timeout: 60_000 });
  const out = fs.openSync(path.join(o.dir, 'stdout.log'), 'a');
  const proc = spawn(SQUID, ['-N', '-f', conf], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const stop = async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };
  try {
    await waitPort(o.bind, o.port, 30_000, proc, cacheLog);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    url: `http://${o.bind}:${o.port}`, dir: o.dir,
    log(from = 0) {
      const lines = fs.readFileSync(accessLog, 'utf8').split('\n').filter(Boolean).slice(from);
      return lines.map((l) => {
        const f = l.split(/\s+/);
        const [status = '', code = '0'] = (f[2] ?? '').split('/');
        return { status, code: Number(code), bytes: Number(f[3] ?? 0), method: f[4] ?? '', url: f[5] ?? '', hier: (f[6] ?? '').split('/')[0] ?? '' };
      });
    },
    stop,
  };
}
