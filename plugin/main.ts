#!/usr/bin/env node
/**
 * Composition root of the plugin: reads settings once (argv, then CVMFSGD_* environment), listens
 * first and resumes persisted state afterwards (the daemon gives a v2 plugin about 9 s), and
 * shuts down on SIGTERM. Runs as a legacy plugin on the host (`--socket /run/docker/plugins/x.sock`)
 * or as the entrypoint of the managed plugin.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { GraphDriver, type Logger } from '../driver/index.js';
import { createPluginMetrics, listenMetrics, type MetricsServer } from './metrics.js';
import { createPluginApp, listenPlugin } from './server.js';
import { metricsAddress, nonNegative, positive, publishSettings } from './settings.js';

const LEVELS = ['debug', 'info', 'warn', 'error'] as const;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { socket: { type: 'string' }, 'state-dir': { type: 'string' }, 'log-level': { type: 'string' }, metrics: { type: 'string' } } });
  const env = process.env;
  const socket = values.socket ?? env.CVMFSGD_SOCKET ?? '/run/docker/plugins/cvmfs.sock';
  const stateDir = values['state-dir'] ?? env.CVMFSGD_STATE_DIR ?? '/var/lib/cvmfs-graphdriver';
  const minLevel = LEVELS.indexOf((values['log-level'] ?? env.CVMFSGD_LOG_LEVEL ?? 'info') as (typeof LEVELS)[number]);
  const log: Logger = (level, msg) => { if (LEVELS.indexOf(level) >= Math.max(0, minLevel)) console.error(`${new Date().toISOString()} ${level} ${msg}`); };

  const configDir = env.CVMFSGD_CONFIG_DIR ?? '/etc/cvmfs-graphdriver';
  const perRepository = await readRepositoriesFile(path.join(configDir, 'repositories.json'), log);
  const publish = publishSettings(env);
  const metricsAt = metricsAddress(values.metrics ?? env.CVMFSGD_METRICS, stateDir);
  const driver = new GraphDriver({
    log,
    repositories: {
      servers: (env.CVMFSGD_SERVER_URL ?? 'http://127.0.0.1:8000/cvmfs/@fqrn@').split(';').filter(Boolean),
      perRepository,
      ...(env.CVMFSGD_HTTP_PROXY ? { proxy: env.CVMFSGD_HTTP_PROXY } : {}),
      keysDir: env.CVMFSGD_KEYS_DIR ?? path.join(configDir, 'keys'),
      cacheDir: env.CVMFSGD_CACHE_DIR ?? path.join(stateDir, 'cache'),
      quotaBytes: nonNegative('CVMFSGD_CACHE_QUOTA_MB', env.CVMFSGD_CACHE_QUOTA_MB ?? '4000') * 1024 * 1024,
      idleUnmountMs: nonNegative('CVMFSGD_IDLE_UNMOUNT_SECONDS', env.CVMFSGD_IDLE_UNMOUNT_SECONDS ?? '60') * 1000,
    },
    ...(env.CVMFSGD_DEFAULT_REPOSITORY ? { defaultRepository: env.CVMFSGD_DEFAULT_REPOSITORY } : {}),
    applyIdleTimeoutMs: positive('CVMFSGD_APPLYDIFF_IDLE_SECONDS', env.CVMFSGD_APPLYDIFF_IDLE_SECONDS ?? '120') * 1000,
    ...(publish ? { publish } : {}),
  });
  log('info', publish ? `commits on thin images are published through ${publish.publisherUrl}` : 'commits on thin images are local layers (no publisher configured)');
  await fs.mkdir(path.dirname(socket), { recursive: true });
  const server = await listenPlugin(createPluginApp({ driver, stateDir, log }), socket);
  log('info', `listening on ${socket}`);
  // Metrics are an aid: a busy port or a bad socket path costs them, not the plugin.
  let metrics: MetricsServer | undefined;
  if (metricsAt) {
    metrics = await listenMetrics(createPluginMetrics(() => driver.repositoryCounters()), metricsAt, log)
      .catch((err: Error) => { log('warn', `metrics not served: ${err.message}`); return undefined; });
    if (metrics) log('info', `metrics at ${metrics.url}`);
  } else log('info', 'metrics off (CVMFSGD_METRICS=off)');
  await driver.resume(stateDir).catch((err: Error) => log('warn', `could not resume persisted state: ${err.message}`));

  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    log('info', `${sig}: shutting down`);
    server.close();
    server.closeAllConnections();
    void Promise.all([fs.rm(socket, { force: true }), metrics?.close()]).finally(() => { process.exitCode = 0; });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

/** Optional per-repository settings: {"<fqrn>": {"servers": ["http://…"], "proxy": "…"}}. */
async function readRepositoriesFile(file: string, log: Logger): Promise<Record<string, { servers?: string[]; proxy?: string }>> {
  const text = await fs.readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return {};
  const out: Record<string, { servers?: string[]; proxy?: string }> = {};
  try {
    const doc = JSON.parse(text) as unknown;
    if (doc === null || typeof doc !== 'object') throw new Error('not a JSON object');
    for (const [fqrn, v] of Object.entries(doc as Record<string, unknown>)) {
      const e = (v ?? {}) as Record<string, unknown>;
      out[fqrn] = {
        ...(Array.isArray(e.servers) ? { servers: e.servers.filter((x): x is string => typeof x === 'string') } : {}),
        ...(typeof e.proxy === 'string' ? { proxy: e.proxy } : {}),
      };
    }
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`);
  }
  log('info', `per-repository settings for ${Object.keys(out).join(', ') || 'no repository'} from ${file}`);
  return out;
}

main().catch((err: Error) => { console.error(`cvmfs-graphdriver: ${err.message}`); process.exitCode = 1; });
