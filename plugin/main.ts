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
import { createPluginApp, listenPlugin } from './server.js';

const LEVELS = ['debug', 'info', 'warn', 'error'] as const;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { socket: { type: 'string' }, 'state-dir': { type: 'string' }, 'log-level': { type: 'string' } } });
  const env = process.env;
  const socket = values.socket ?? env.CVMFSGD_SOCKET ?? '/run/docker/plugins/cvmfs.sock';
  const stateDir = values['state-dir'] ?? env.CVMFSGD_STATE_DIR ?? '/var/lib/cvmfs-graphdriver';
  const minLevel = LEVELS.indexOf((values['log-level'] ?? env.CVMFSGD_LOG_LEVEL ?? 'info') as (typeof LEVELS)[number]);
  const log: Logger = (level, msg) => { if (LEVELS.indexOf(level) >= Math.max(0, minLevel)) console.error(`${new Date().toISOString()} ${level} ${msg}`); };

  const driver = new GraphDriver(log);
  await fs.mkdir(path.dirname(socket), { recursive: true });
  const server = await listenPlugin(createPluginApp({ driver, stateDir, log }), socket);
  log('info', `listening on ${socket}`);
  await driver.resume(stateDir).catch((err: Error) => log('warn', `could not resume persisted state: ${err.message}`));

  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    log('info', `${sig}: shutting down`);
    server.close();
    server.closeAllConnections();
    void fs.rm(socket, { force: true }).finally(() => { process.exitCode = 0; });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: Error) => { console.error(`cvmfs-graphdriver: ${err.message}`); process.exitCode = 1; });
