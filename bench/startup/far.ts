/**
 * The remote site's front: run inside the far namespace (`ip netns exec NS node far.js JSON`). One
 * delay relay per far service (registry, Stratum 1, probe) on the far address, forwarding to the
 * service on the namespace's loopback; and the probe service. Control on stdin, one JSON per line:
 * `{"delayMs": N}` sets the one-way delay, `{"stats": true}` prints the relays' counters.
 * Prints `{"ready": true}` once listening.
 */
import readline from 'node:readline';
import { startProbeServer, startRelay, type Relay } from './relay.js';

export interface FarConfig {
  readonly farAddr: string;
  readonly relays: readonly { readonly name: string; readonly port: number; readonly toPort: number }[];
  readonly probePort: number;
  readonly windowBytes: number;
}

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2] ?? '{}') as FarConfig;
  let delayMs = 0;
  const probe = await startProbeServer('127.0.0.1', cfg.probePort);
  const relays: Record<string, Relay> = {};
  for (const r of cfg.relays) {
    relays[r.name] = await startRelay({ listenHost: cfg.farAddr, listenPort: r.port, toHost: '127.0.0.1', toPort: r.toPort, delayMs: () => delayMs, windowBytes: cfg.windowBytes });
  }
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const m = JSON.parse(line) as { delayMs?: number; stats?: boolean };
    if (typeof m.delayMs === 'number') { delayMs = m.delayMs; process.stdout.write(JSON.stringify({ delayMs }) + '\n'); }
    if (m.stats) process.stdout.write(JSON.stringify({ stats: Object.fromEntries(Object.entries(relays).map(([k, v]) => [k, v.stats])) }) + '\n');
  });
  const stop = async () => { for (const r of Object.values(relays)) await r.close(); probe.close(); process.exit(0); };
  rl.on('close', () => void stop());
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  process.stdout.write(JSON.stringify({ ready: true }) + '\n');
}

await main();
