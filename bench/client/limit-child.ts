/**
 * One physical-limit arm of bench/client, in a process of its own (so that the state of the
 * process that runs our client, its heap and its threads, never weighs on the limit):
 *   node dist/bench/client/limit-child.js JOB.json
 * Sets up (connections are opened by the timed work itself, as a fresh client's are), prints
 * `ready`, starts on a line on stdin and prints one JSON line: LimitResult and its CPU seconds.
 */
import fs from 'node:fs';
import { fetchAll, fetchPipelined, Getter, mountLimit, startWorkers, type LimitResult, type ObjectRef } from './limits.js';

export type LimitJob =
  | { kind: 'objects'; base: string; refs: ObjectRef[]; streams: number }
  | { kind: 'pipelined'; base: string; refs: ObjectRef[]; inFlight: number }
  | { kind: 'mount'; base: string; scratch: string };

export type LimitChildResult = LimitResult & { cpu: number };

const job = JSON.parse(fs.readFileSync(process.argv[2]!, 'utf8')) as LimitJob;
const g = new Getter(job.base);
const pool = job.kind === 'pipelined' ? await startWorkers() : undefined;
console.log('ready');
await new Promise((resolve) => process.stdin.once('data', resolve));
process.stdin.pause();
const c0 = process.cpuUsage();
const r = job.kind === 'objects' ? await fetchAll(g, job.refs, job.streams)
  : job.kind === 'pipelined' ? await fetchPipelined(g, job.refs, job.inFlight, pool)
    : await mountLimit(g, job.scratch);
const c = process.cpuUsage(c0);
console.log(JSON.stringify({ ...r, cpu: (c.user + c.system) / 1e6 } satisfies LimitChildResult));
g.close();
await Promise.all((pool ?? []).map((w) => w.terminate()));
