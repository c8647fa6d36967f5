/**
 * The wide-area link: a network namespace (the remote site) joined to this one (the near site) by
 * a veth pair on a private /30, bandwidth shaped with `tbf` at both ends (this kernel has no
 * netem; the round trip is added by the delay relays, relay.ts). Unique names (cvmfsb-<random>),
 * removed by `destroy()`; deleting the namespace also deletes the veth pair.
 */
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface Link {
  readonly ns: string;
  readonly nearIf: string;
  readonly farIf: string;
  readonly nearAddr: string;
  readonly farAddr: string;
  /** tbf at both ends; `mbit` 0 removes the shaping. */
  shape(mbit: number): Promise<void>;
  /** Bytes through the near end of the veth: down = received from the remote site, up = sent to it. */
  counters(): { down: number; up: number };
  /** Spawns a command inside the remote namespace. */
  spawnFar(cmd: string, args: readonly string[], opts?: SpawnOptions): ChildProcess;
  destroy(): Promise<void>;
}

async function ip(...args: string[]): Promise<void> { await run('ip', args); }

/** A /30 in 10.0.0.0/8 that no interface of this host uses. */
function freeSubnet(): [string, string] {
  const used = new Set(Object.values(os.networkInterfaces()).flat().map((a) => a?.address ?? ''));
  for (;;) {
    const b = randomBytes(3);
    const base = `10.${200 + (b[0]! % 50)}.${b[1]!}`;
    const last = (b[2]! & 0xfc) || 4;
    const near = `${base}.${last + 1}`, far = `${base}.${last + 2}`;
    if (!used.has(near) && !used.has(far)) return [near, far];
  }
}

export async function createLink(): Promise<Link> {
  const id = randomBytes(3).toString('hex');
  const ns = `cvmfsb-${id}`;
  const nearIf = `cvb${id}n`, farIf = `cvb${id}f`;
  const [nearAddr, farAddr] = freeSubnet();
  let created = false;
  const destroy = async () => {
    if (!created) return;
    created = false;
    await ip('netns', 'del', ns).catch(() => {});
    await ip('link', 'del', nearIf).catch(() => {});
  };
  try {
    await ip('netns', 'add', ns);
    created = true;
    await ip('link', 'add', nearIf, 'type', 'veth', 'peer', 'name', farIf);
    await ip('link', 'set', farIf, 'netns', ns);
    await ip('addr', 'add', `${nearAddr}/30`, 'dev', nearIf);
    await ip('link', 'set', nearIf, 'up');
    await ip('-n', ns, 'addr', 'add', `${farAddr}/30`, 'dev', farIf);
    await ip('-n', ns, 'link', 'set', farIf, 'up');
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
  } catch (err) {
    await destroy();
    throw err;
  }
  const stat = (f: string) => Number(fs.readFileSync(`/sys/class/net/${nearIf}/statistics/${f}`, 'utf8'));
  const tbf = (mbit: number) => {
    // burst: a few ms at the rate (at least 64 KiB, so GSO segments pass); queue: 10 ms at the rate.
    const bytesPerS = (mbit * 1e6) / 8;
    const burst = Math.max(64 * 1024, Math.round(bytesPerS * 0.002));
    return ['root', 'tbf', 'rate', `${mbit}mbit`, 'burst', String(burst), 'latency', '10ms'];
  };
  return {
    ns, nearIf, farIf, nearAddr, farAddr,
    async shape(mbit) {
      if (mbit > 0) {
        await run('tc', ['qdisc', 'replace', 'dev', nearIf, ...tbf(mbit)]);
        await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'replace', 'dev', farIf, ...tbf(mbit)]);
      } else {
        await run('tc', ['qdisc', 'del', 'dev', nearIf, 'root']).catch(() => {});
        await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'del', 'dev', farIf, 'root']).catch(() => {});
      }
    },
    counters: () => ({ down: stat('rx_bytes'), up: stat('tx_bytes') }),
    spawnFar: (cmd, args, opts = {}) => spawn('ip', ['netns', 'exec', ns, cmd, ...args], opts),
    destroy,
  };
}
