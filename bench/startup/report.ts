/**
 * Output: the JSON for scripts (stable keys: images → arms → metrics), a markdown table for
 * people and a PNG chart (gnuplot, bars per arm, log time axis).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface Dist { readonly median: number; readonly p90: number; readonly min: number; readonly max: number; readonly n: number }

export function dist(xs: readonly number[]): Dist {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return { median: NaN, p90: NaN, min: NaN, max: NaN, n: 0 };
  const mid = s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  // Nearest rank.
  const p90 = s[Math.min(s.length - 1, Math.ceil(0.9 * s.length) - 1)]!;
  return { median: mid, p90, min: s[0]!, max: s[s.length - 1]! , n: s.length };
}

export function medianOf(xs: readonly number[]): number { return dist(xs).median; }

/** One measured start (or, for the workers arms, one worker of a repetition). */
export interface Sample {
  readonly rep: number;
  readonly ttfo_s: number;
  readonly total_s: number;
  readonly wire_down: number;
  readonly wire_up: number;
  /** HTTP requests: the client's (through Squid) and the registry's. */
  readonly requests: number;
  /** Requests that reached the remote site (Squid misses + registry). */
  readonly far_requests: number;
  readonly objects_fetched: number;
  readonly catalog_bytes: number;
  readonly data_bytes: number;
  /** Payload bytes the remote site's relays sent. */
  readonly far_bytes: number;
  readonly limit_s?: number;
  readonly round_trips?: number;
  /** `docker pull` done, seconds from the first command (0 without a pull). */
  readonly pull_s?: number;
  /** Thin arms: the client's prefetch counters over the run (recorded list and siblings), read after the container exited. */
  readonly prefetch_objects?: number;
  readonly prefetch_bytes?: number;
  readonly prefetch_hits?: number;
  readonly prefetch_hit_bytes?: number;
  readonly prefetch_waste_bytes?: number;
  /** Recorded arm: the plugin's prefetch of the list, start and end in seconds from the first command. */
  readonly prefetch_start_s?: number;
  readonly prefetch_done_s?: number;
  /** Recorded arm: each list prefetch the plugin ran (one per mount of the image's stack), and its driver calls and prefetches in time order. */
  readonly prefetch_runs?: readonly { readonly start_s: number; readonly done_s: number; readonly objects: number; readonly mb: number }[];
  readonly timeline?: readonly string[];
  /** Recorded arm: the physical limit of the first output (payload sent and objects fetched by then). */
  readonly ttfo_limit_s?: number;
  readonly ttfo_round_trips?: number;
  readonly ttfo_far_bytes?: number;
}

export interface ArmSummary {
  readonly ttfo_s: Dist;
  readonly total_s: Dist;
  readonly wire_bytes: number;
  readonly wire_bytes_down: number;
  readonly read_bytes: number;
  readonly catalog_bytes: number;
  readonly data_bytes: number;
  readonly requests: number;
  readonly far_requests: number;
  readonly objects_fetched: number;
  readonly files_read: number;
  readonly limit_s?: Dist;
  readonly round_trips?: number;
  readonly link_rtt_ms: number;
  readonly link_mbit: number;
  readonly samples: readonly Sample[];
  readonly [extra: string]: unknown;
}

export function summarize(samples: readonly Sample[], o: { readBytes: number; filesRead: number; linkRttMs: number; linkMbit: number; extra?: Record<string, unknown> }): ArmSummary {
  const med = (f: (s: Sample) => number) => Math.round(medianOf(samples.map(f)));
  const limits = samples.map((s) => s.limit_s).filter((x): x is number => x !== undefined);
  const rtts = samples.map((s) => s.round_trips).filter((x): x is number => x !== undefined);
  const opt = (f: (s: Sample) => number | undefined) => samples.map(f).filter((x): x is number => x !== undefined);
  const optMedian = (key: string, f: (s: Sample) => number | undefined, round = true) => {
    const xs = opt(f);
    return xs.length ? { [key]: round ? Math.round(medianOf(xs)) : medianOf(xs) } : {};
  };
  const ttfoLimits = opt((s) => s.ttfo_limit_s);
  return {
    ttfo_s: dist(samples.map((s) => s.ttfo_s)), total_s: dist(samples.map((s) => s.total_s)),
    wire_bytes: med((s) => s.wire_down + s.wire_up), wire_bytes_down: med((s) => s.wire_down),
    read_bytes: o.readBytes, catalog_bytes: med((s) => s.catalog_bytes), data_bytes: med((s) => s.data_bytes),
    requests: med((s) => s.requests), far_requests: med((s) => s.far_requests), objects_fetched: med((s) => s.objects_fetched),
    files_read: o.filesRead,
    ...(limits.length ? { limit_s: dist(limits) } : {}), ...(rtts.length ? { round_trips: Math.round(medianOf(rtts)) } : {}),
    ...(ttfoLimits.length ? { ttfo_limit_s: dist(ttfoLimits) } : {}), ...optMedian('ttfo_round_trips', (s) => s.ttfo_round_trips),
    ...optMedian('pull_s', (s) => s.pull_s, false),
    ...optMedian('prefetch_objects', (s) => s.prefetch_objects), ...optMedian('prefetch_bytes', (s) => s.prefetch_bytes),
    ...optMedian('prefetch_hits', (s) => s.prefetch_hits), ...optMedian('prefetch_hit_bytes', (s) => s.prefetch_hit_bytes),
    ...optMedian('prefetch_waste_bytes', (s) => s.prefetch_waste_bytes),
    ...optMedian('prefetch_start_s', (s) => s.prefetch_start_s, false), ...optMedian('prefetch_done_s', (s) => s.prefetch_done_s, false),
    link_rtt_ms: o.linkRttMs, link_mbit: o.linkMbit, ...(o.extra ?? {}), samples,
  };
}

export interface Results {
  readonly version: 1;
  readonly started: string;
  readonly finished: string;
  readonly params: Record<string, unknown>;
  readonly link: { readonly nominal_rtt_ms: number; readonly nominal_mbit: number; readonly rtt_ms: number; readonly rtt_min_ms: number; readonly mbit: number };
  readonly host: Record<string, unknown>;
  readonly images: Record<string, { readonly info: Record<string, unknown>; readonly arms: Record<string, ArmSummary> }>;
  readonly targets: readonly { readonly name: string; readonly target: string; readonly value: string; readonly met: boolean | null; readonly note: string }[];
  readonly notes: readonly string[];
}

const f2 = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? '–' : x < 10 ? x.toFixed(2) : x.toFixed(1));
const mb = (x: number) => (x / 1e6).toFixed(x < 1e7 ? 2 : 1);

export function markdown(r: Results): string {
  const out: string[] = [];
  out.push(`Link: nominal ${r.link.nominal_rtt_ms} ms RTT, ${r.link.nominal_mbit} Mbit/s; measured ${r.link.rtt_ms.toFixed(1)} ms RTT (min ${r.link.rtt_min_ms.toFixed(1)}), ${r.link.mbit.toFixed(0)} Mbit/s bulk.`, '');
  out.push('| image | arm | TTFO median (p90) s | total median (p90) s | wire MB | read MB | catalog MB | requests (far) | objects | prefetched MB (unused) | physical limit s | total / limit |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const [img, v] of Object.entries(r.images)) {
    for (const [arm, a] of Object.entries(v.arms)) {
      out.push(`| ${img} | ${arm} | ${f2(a.ttfo_s.median)} (${f2(a.ttfo_s.p90)}) | ${f2(a.total_s.median)} (${f2(a.total_s.p90)}) | ${mb(a.wire_bytes)} | ${mb(a.read_bytes)} | ${mb(a.catalog_bytes)} | `
        + `${a.requests} (${a.far_requests}) | ${a.objects_fetched} | ${typeof a.prefetch_bytes === 'number' ? `${mb(a.prefetch_bytes)} (${mb(typeof a.prefetch_waste_bytes === 'number' ? a.prefetch_waste_bytes : 0)})` : '–'} | `
        + `${a.limit_s ? f2(a.limit_s.median) : '–'} | ${a.limit_s ? `${(a.total_s.median / a.limit_s.median).toFixed(2)}×` : '–'} |`);
    }
  }
  out.push('', '| target | wanted | measured | met |', '|---|---|---|---|');
  for (const t of r.targets) out.push(`| ${t.name} | ${t.target} | ${t.value}${t.note ? `; ${t.note}` : ''} | ${t.met === null ? 'n/a' : t.met ? 'yes' : '**no**'} |`);
  if (r.notes.length) out.push('', ...r.notes.map((n) => `- ${n}`));
  return out.join('\n') + '\n';
}

/** Bars per arm (TTFO and total medians, p90 as error bars), images side by side, log time axis. */
export async function chart(r: Results, png: string, workDir: string): Promise<boolean> {
  const dat = path.join(workDir, 'chart.dat');
  const rows: string[] = [];
  for (const [img, v] of Object.entries(r.images)) {
    for (const [arm, a] of Object.entries(v.arms)) {
      rows.push(`"${img}\\n${arm}" ${a.ttfo_s.median} ${a.ttfo_s.p90} ${a.total_s.median} ${a.total_s.p90}`);
    }
  }
  fs.writeFileSync(dat, rows.join('\n') + '\n');
  const gp = path.join(workDir, 'chart.gp');
  const width = Math.max(1200, rows.length * 90);
  fs.writeFileSync(gp, [
    `set terminal pngcairo size ${width},620 font "DejaVu Sans,10"`,
    `set output "${png}"`,
    `set title "Container start over a ${r.link.nominal_rtt_ms} ms / ${r.link.nominal_mbit} Mbit/s link (measured ${r.link.rtt_ms.toFixed(1)} ms, ${r.link.mbit.toFixed(0)} Mbit/s): medians, p90 as error bars"`,
    'set style data histograms', 'set style histogram errorbars gap 2 lw 1', 'set style fill solid 0.8 border -1',
    'set logscale y', 'set yrange [0.1:*]', 'set ylabel "seconds (log)"', 'set grid ytics mytics',
    'set xtics rotate by -40 font ",8"', 'set bmargin 9', 'set key top left',
    `plot "${dat}" using 2:2:3:xtic(1) title "time to first output", "" using 4:4:5 title "total"`,
    '',
  ].join('\n'));
  try {
    await run('gnuplot', [gp]);
    return fs.existsSync(png);
  } catch (err) {
    console.error(`chart: gnuplot failed: ${(err as Error).message}`);
    return false;
  }
}
