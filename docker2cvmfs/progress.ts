/**
 * What a person sees while converting: on a TTY one progress bar per layer (bytes, rate, ETA,
 * cli-progress), otherwise one line per step; nothing with --json or --quiet (the summary is
 * printed by the caller).
 */
import cliProgress from 'cli-progress';
import type { ConvertEvent } from './convert.js';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const short = (digest: string): string => digest.replace(/^sha256:/, '').slice(0, 12);

export interface Reporter {
  readonly onEvent: (e: ConvertEvent) => void;
  /** A line of its own (kept above the bars on a TTY). */
  log(line: string): void;
  stop(): void;
}

export function silentReporter(): Reporter {
  return { onEvent: () => {}, log: () => {}, stop: () => {} };
}

/** One line per step, for logs and cron mails. */
export function lineReporter(out: NodeJS.WritableStream): Reporter {
  const write = (s: string) => { out.write(`${s}\n`); };
  return {
    onEvent(e) {
      switch (e.type) {
        case 'image': write(`image ${e.name}: ${e.layers} layers, ${e.newLayers} new`); break;
        case 'layer-start': write(`layer ${short(e.digest)}: converting ${formatBytes(e.size)}`); break;
        case 'layer-retry': write(`layer ${short(e.digest)}: attempt ${e.attempt} failed (${e.reason}); retrying`); break;
        case 'layer-done':
          write(e.status === 'reused' ? `layer ${short(e.digest)}: already in the repository`
            : `layer ${short(e.digest)}: done, ${formatBytes(e.bytes)} in ${e.seconds.toFixed(1)} s (${formatBytes(e.bytes / Math.max(e.seconds, 1e-3))}/s)`);
          break;
        case 'publish': write(e.published ? `published revision ${e.revision}` : `nothing to publish: the repository stays at revision ${e.revision}`); break;
        case 'warning': write(`warning: ${e.message}`); break;
        case 'layer-progress': break;
      }
    },
    log: write,
    stop() {},
  };
}

/** Progress bars on a terminal. */
export function barReporter(out: NodeJS.WriteStream): Reporter {
  const multi = new cliProgress.MultiBar({
    stream: out, hideCursor: true, clearOnComplete: false, etaBuffer: 20, fps: 5,
    format: ' {layer} [{bar}] {percentage}% | {done}/{size} | {rate}/s | ETA {eta_formatted}',
    formatValue: (v, _o, type) => String(v).padStart(type === 'percentage' ? 3 : 0),
  }, cliProgress.Presets.shades_classic);
  const bars = new Map<string, { bar: cliProgress.SingleBar; size: number; t0: number }>();
  const payload = (digest: string, bytes: number, size: number, t0: number) => ({
    layer: short(digest), done: formatBytes(bytes), size: formatBytes(size),
    rate: formatBytes(bytes / Math.max((Date.now() - t0) / 1000, 1e-3)),
  });
  return {
    onEvent(e) {
      switch (e.type) {
        case 'image': multi.log(`image ${e.name}: ${e.layers} layers, ${e.newLayers} new\n`); break;
        case 'layer-start': {
          const t0 = Date.now();
          bars.set(e.digest, { bar: multi.create(Math.max(e.size, 1), 0, payload(e.digest, 0, e.size, t0)), size: e.size, t0 });
          break;
        }
        case 'layer-progress': {
          const b = bars.get(e.digest);
          b?.bar.update(e.bytes, payload(e.digest, e.bytes, b.size, b.t0));
          break;
        }
        case 'layer-retry': multi.log(`layer ${short(e.digest)}: attempt ${e.attempt} failed (${e.reason}); retrying\n`); break;
        case 'layer-done': {
          const b = bars.get(e.digest);
          if (b) b.bar.update(b.size, payload(e.digest, b.size, b.size, b.t0));
          else multi.log(`layer ${short(e.digest)}: already in the repository\n`);
          break;
        }
        case 'warning': multi.log(`warning: ${e.message}\n`); break;
        case 'publish': break;
      }
    },
    log: (line) => multi.log(`${line}\n`),
    stop: () => multi.stop(),
  };
}
