/**
 * The Prometheus text exposition format (version 0.0.4, what prom-client and every exporter
 * write), parsed into samples; and the client counters of `cvmfs_client_*` samples grouped by
 * repository, as `cvmfs-repo stats` shows them. Pure: text in, values out.
 *
 * Format (https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format):
 * one sample per line, `name{label="value",…} value [timestamp_ms]`; label values escape `\\`,
 * `\"` and `\n`; values are Go floats, including `NaN`, `+Inf` and `-Inf`; `# HELP name text`
 * (escaping `\\` and `\n`) and `# TYPE name type` describe a metric; any other `#` line is a
 * comment, and blank lines are ignored.
 */
import { CvmfsError } from './errors.js';

export interface PromSample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  /** May be NaN or ±Infinity. */
  readonly value: number;
  readonly timestampMs?: number;
}

export interface PromExposition {
  readonly samples: readonly PromSample[];
  /** `# TYPE` per metric family: counter, gauge, histogram, summary, untyped. */
  readonly types: Readonly<Record<string, string>>;
  readonly help: Readonly<Record<string, string>>;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const FLOAT = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

function bad(line: number, why: string): CvmfsError {
  return new CvmfsError('CVMFS_BAD_ARGUMENT', `Prometheus text line ${line}: ${why}`);
}

/** A Go float as the format writes it; undefined if it is none. */
export function parsePromValue(s: string): number | undefined {
  if (s === 'NaN') return NaN;
  if (s === '+Inf' || s === 'Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  return FLOAT.test(s) ? Number(s) : undefined;
}

/** Parses a whole exposition; a malformed line fails with CVMFS_BAD_ARGUMENT naming its number. */
export function parsePrometheusText(text: string): PromExposition {
  const samples: PromSample[] = [];
  const types: Record<string, string> = {};
  const help: Record<string, string> = {};
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    const line = lines[i]!.replace(/\r$/, '').replace(/^[ \t]+/, '');
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^#[ \t]+(HELP|TYPE)[ \t]+([a-zA-Z_:][a-zA-Z0-9_:]*)(?:[ \t]+(.*))?$/.exec(line);
      if (!m) continue; // a plain comment
      if (m[1] === 'TYPE') types[m[2]!] = (m[3] ?? '').trim();
      else help[m[2]!] = (m[3] ?? '').replace(/\\(\\|n)/g, (_x, c: string) => (c === 'n' ? '\n' : '\\'));
      continue;
    }
    const name = NAME.exec(line)?.[0];
    if (!name) throw bad(n, `no metric name at ${JSON.stringify(line.slice(0, 40))}`);
    let pos = name.length;
    const labels: Record<string, string> = {};
    // As expfmt reads it: blanks may stand between the name and `{`, none are needed after `}`.
    while (line[pos] === ' ' || line[pos] === '\t') pos++;
    if (pos === name.length && line[pos] !== '{' && line[pos] !== undefined) throw bad(n, `bad character ${JSON.stringify(line[pos])} in metric name ${name}`);
    if (line[pos] === '{') {
      pos++;
      for (;;) {
        while (line[pos] === ' ' || line[pos] === '\t') pos++;
        if (line[pos] === '}') { pos++; break; }
        const label = LABEL_NAME.exec(line.slice(pos))?.[0];
        if (!label) throw bad(n, `bad label name in ${name}`);
        pos += label.length;
        while (line[pos] === ' ' || line[pos] === '\t') pos++;
        if (line[pos] !== '=') throw bad(n, `expected = after label ${label} of ${name}`);
        pos++;
        while (line[pos] === ' ' || line[pos] === '\t') pos++;
        if (line[pos] !== '"') throw bad(n, `expected " to open the value of label ${label} of ${name}`);
        pos++;
        let value = '';
        for (;;) {
          const c = line[pos];
          if (c === undefined) throw bad(n, `unterminated value of label ${label} of ${name}`);
          pos++;
          if (c === '"') break;
          if (c !== '\\') { value += c; continue; }
          const e = line[pos++];
          if (e === 'n') value += '\n';
          else if (e === '\\' || e === '"') value += e;
          else throw bad(n, `bad escape \\${e ?? ''} in label ${label} of ${name}`);
        }
        if (Object.hasOwn(labels, label)) throw bad(n, `label ${label} twice in ${name}`);
        labels[label] = value;
        while (line[pos] === ' ' || line[pos] === '\t') pos++;
        if (line[pos] === ',') { pos++; continue; }
        if (line[pos] === '}') { pos++; break; }
        throw bad(n, `expected , or } after label ${label} of ${name}`);
      }
    }
    const rest = line.slice(pos).trim().split(/[ \t]+/);
    if (rest[0] === '') throw bad(n, `expected a value after ${name}`);
    if (rest.length > 2) throw bad(n, `trailing text after the sample of ${name}`);
    const value = parsePromValue(rest[0]!);
    if (value === undefined) throw bad(n, `value ${JSON.stringify(rest[0])} of ${name} is not a number`);
    let timestampMs: number | undefined;
    if (rest[1] !== undefined) {
      if (!/^-?\d+$/.test(rest[1])) throw bad(n, `timestamp ${JSON.stringify(rest[1])} of ${name} is not an integer`);
      timestampMs = Number(rest[1]);
    }
    samples.push({ name, labels, value, ...(timestampMs !== undefined ? { timestampMs } : {}) });
  }
  return { samples, types, help };
}

export const CLIENT_METRIC_PREFIX = 'cvmfs_client_';

/** One repository's client counters, keyed by metric name without the prefix and `_total`. */
export interface ClientCounters {
  readonly repository: string;
  readonly values: Readonly<Record<string, number>>;
}

/**
 * The `cvmfs_client_*` samples with a `repository` label, one entry per repository in name order:
 * `cvmfs_client_bytes_fetched_total{repository="a"} 5` becomes `{repository: "a", values: {bytes_fetched: 5}}`.
 */
export function clientCountersOf(samples: readonly PromSample[]): ClientCounters[] {
  const by = new Map<string, Record<string, number>>();
  for (const s of samples) {
    const repo = s.labels.repository;
    if (!s.name.startsWith(CLIENT_METRIC_PREFIX) || repo === undefined) continue;
    const key = s.name.slice(CLIENT_METRIC_PREFIX.length).replace(/_total$/, '');
    let values = by.get(repo);
    if (!values) { values = {}; by.set(repo, values); }
    values[key] = s.value;
  }
  return [...by].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([repository, values]) => ({ repository, values }));
}
