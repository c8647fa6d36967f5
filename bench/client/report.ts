/** bench/client's rows, statistics and tables. */

export interface Spread { readonly median: number; readonly min: number; readonly max: number; readonly samples: readonly number[] }

export function spread(samples: readonly number[]): Spread {
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median, min: s[0] ?? NaN, max: s[s.length - 1] ?? NaN, samples };
}

/** One sample's accounting: where the time of one arm went. */
export interface Diag {
  readonly seconds: number;
  /** CPU seconds of this process: our client and its FUSE thread (or the limit's loop). */
  readonly clientCpu: number;
  readonly serverCpu: number;
  /** CPU seconds of the reading children (python), when they report it. */
  readonly readerCpu: number;
  /** CPU seconds the rest of the machine used meanwhile (all cores busy − the three above; dd, kernel threads, others). */
  readonly otherCpu: number;
  readonly fetchedBytes: number;
  readonly objects: number;
  readonly requests: number;
  /** Named parts of `seconds` (mount: open, mount, ls). */
  readonly parts?: Readonly<Record<string, number>>;
}

export interface RowDef {
  readonly key: string;
  readonly name: string;
  /** `ms` rows are times (lower is better); the others are rates. */
  readonly unit: 'ms' | 'MB/s' | 'files/s' | '/s';
  readonly stock: number;
  /** ours ÷ stock must reach this (issue 13); null for a row the issue has no target for. */
  readonly target: number | null;
  readonly limitIs: string;
}

export interface RowResult {
  readonly def: RowDef;
  readonly ours: Spread;
  readonly limit: Spread;
  readonly oursDiag: readonly Diag[];
  readonly limitDiag: readonly Diag[];
}

/** ours ÷ other as a rate ratio: above 1 means ours is faster (times are inverted). */
export function ratio(def: RowDef, ours: number, other: number): number {
  return def.unit === 'ms' ? other / ours : ours / other;
}

export function fmt(v: number, unit: RowDef['unit']): string {
  if (!Number.isFinite(v)) return '–';
  if (unit === 'MB/s') return v < 100 ? v.toFixed(1) : Math.round(v).toLocaleString('en-US');
  return Math.round(v).toLocaleString('en-US');
}

const fmtSpread = (s: Spread, unit: RowDef['unit']) =>
  s.samples.length > 1 ? `${fmt(s.median, unit)} [${fmt(s.min, unit)}–${fmt(s.max, unit)}] ${unit}` : `${fmt(s.median, unit)} ${unit}`;

export function summary(r: RowResult) {
  const oursOverLimit = ratio(r.def, r.ours.median, r.limit.median);
  const oursOverStock = ratio(r.def, r.ours.median, r.def.stock);
  return { oursOverLimit, oursOverStock, pass: r.def.target === null ? null : oursOverStock >= r.def.target };
}

export function markdownTable(rows: readonly RowResult[]): string {
  const out = [
    '| workload | ours | physical limit | ours ÷ limit | stock (issue 13) | ours ÷ stock | target | |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    const s = summary(r);
    out.push(`| ${r.def.name} | ${fmtSpread(r.ours, r.def.unit)} | ${fmtSpread(r.limit, r.def.unit)} | ${s.oursOverLimit.toFixed(2)}× | ` +
      `${fmt(r.def.stock, r.def.unit)} ${r.def.unit} | ${s.oursOverStock.toFixed(2)}× | ${r.def.target === null ? '–' : `≥ ${r.def.target.toFixed(1)}×`} | ` +
      `${s.pass === null ? 'info' : s.pass ? 'PASS' : 'FAIL'} |`);
  }
  return out.join('\n');
}

const med = (xs: readonly number[]) => spread(xs).median;

export function diagTable(rows: readonly RowResult[]): string {
  const out = [
    '| workload | arm | wall s | client CPU s | server CPU s | reader CPU s | other CPU s | fetched MB | objects | requests |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    for (const [arm, ds] of [['ours', r.oursDiag], ['limit', r.limitDiag]] as const) {
      if (ds.length === 0) continue;
      const m = (f: (d: Diag) => number, digits = 2) => med(ds.map(f)).toFixed(digits);
      out.push(`| ${arm === 'ours' ? r.def.name : ''} | ${arm} | ${m((d) => d.seconds, 3)} | ${m((d) => d.clientCpu)} | ${m((d) => d.serverCpu)} | ` +
        `${m((d) => d.readerCpu)} | ${m((d) => d.otherCpu)} | ${m((d) => d.fetchedBytes / 1e6, 1)} | ${m((d) => d.objects, 0)} | ${m((d) => d.requests, 0)} |`);
    }
  }
  return out.join('\n');
}
