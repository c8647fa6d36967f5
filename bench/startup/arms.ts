/**
 * Worker nodes and one measured container start. A node is a private dockerd (test/lib/dockerd.ts)
 * on the built-in overlay2 or on our plugin (legacy process) with its own client cache, proxy and
 * Stratum 1 settings. `start()` times `docker pull` (optional) + `docker run` from the first
 * command to the container's first line (`ready`: time to first output) and to its exit (total).
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { DOCKER, startDaemon, type Daemon } from '../../test/lib/dockerd.js';

const run = promisify(execFile);

export interface NodeOptions {
  readonly kind: 'overlay2' | 'plugin';
  readonly registryHost: string;
  readonly serverUrl: string;
  readonly proxy: string;
  readonly configDir: string;
  readonly cacheDir: string;
  readonly idleUnmountSeconds?: number;
}

export interface Node { readonly daemon: Daemon; readonly kind: 'overlay2' | 'plugin'; readonly cacheDir: string }

export async function startNode(o: NodeOptions): Promise<Node> {
  fs.mkdirSync(o.cacheDir, { recursive: true, mode: 0o700 });
  const dockerdArgs = ['--insecure-registry', o.registryHost, '--max-concurrent-downloads', '3'];
  const daemon = o.kind === 'overlay2'
    ? await startDaemon({ builtinDriver: 'overlay2', dockerdArgs })
    : await startDaemon({
      dockerdArgs,
      pluginEnv: {
        CVMFSGD_SERVER_URL: o.serverUrl, CVMFSGD_HTTP_PROXY: o.proxy, CVMFSGD_CONFIG_DIR: o.configDir, CVMFSGD_CACHE_DIR: o.cacheDir,
        CVMFSGD_IDLE_UNMOUNT_SECONDS: String(o.idleUnmountSeconds ?? 60), CVMFSGD_LOG_LEVEL: 'info',
      },
    });
  return { daemon, kind: o.kind, cacheDir: o.cacheDir };
}

export interface StartTiming { readonly ttfoS: number; readonly totalS: number; readonly pullS: number }

/**
 * `docker pull` (when `pull`) then `docker run --rm`, timed from the first command; `onFirstOutput`
 * is called (once, synchronously) when the container's first output arrives.
 */
export async function timedStart(node: Node, ref: string, pull: boolean, t0 = performance.now(), onFirstOutput?: () => void): Promise<StartTiming> {
  const d = node.daemon;
  if (pull) await d.docker(['pull', '-q', ref]);
  const pulled = performance.now();
  const env = { ...process.env, DOCKER_HOST: d.dockerHost };
  return new Promise<StartTiming>((resolve, reject) => {
    const c = spawn(DOCKER, ['run', '--rm', '--network', 'none', ref], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    let ttfo = 0;
    c.stdout.on('data', (b: Buffer) => {
      if (!ttfo && b.length) { ttfo = performance.now(); onFirstOutput?.(); }
      out += b.toString();
    });
    c.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    c.on('error', reject);
    c.on('close', (code) => {
      const end = performance.now();
      if (code !== 0 || !out.includes('ready') || !out.includes('done')) {
        reject(new Error(`docker run ${ref} on ${d.driverName}: exit ${code}, stdout ${JSON.stringify(out.slice(-200))}, stderr ${err.slice(-2000)}\n${d.pluginLog().slice(-3000)}`));
        return;
      }
      resolve({ ttfoS: (ttfo - t0) / 1000, totalS: (end - t0) / 1000, pullS: (pulled - t0) / 1000 });
    });
  });
}

/** Removes the image and every layer it used, so the next pull is a full one. */
export async function removeImage(node: Node, ref: string): Promise<void> {
  await node.daemon.docker(['rmi', '-f', ref], { allowFail: true });
  await node.daemon.docker(['image', 'prune', '-af'], { allowFail: true });
}

export interface ClientCounters {
  bytesFetched: number; objectsFetched: number; requests: number; cacheHits: number; cacheMisses: number; catalogsAttached: number;
  /** Objects fetched ahead of a read (recorded lists and siblings), their inflated bytes, those a read then needed, and the bytes none has needed so far. */
  prefetchObjects?: number; prefetchBytes?: number; prefetchHits?: number; prefetchHitBytes?: number; prefetchWasteBytes?: number;
}

/** The plugin client's counters (`user.counters` on the repository mount), or undefined when not mounted. */
export async function clientCounters(node: Node, fqrn: string): Promise<ClientCounters | undefined> {
  try {
    const out = (await run('getfattr', ['--only-values', '-n', 'user.counters', path.join(node.daemon.home, 'cvmfs', fqrn)])).stdout;
    return JSON.parse(out) as ClientCounters;
  } catch { return undefined; }
}
