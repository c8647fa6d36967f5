/**
 * Running fast-check properties inside tap: a fixed seed unless FUZZ_SEED is set, FUZZ_RUNS cases
 * (each suite picks its default), the case count and an outcome tally in the TAP stream, and on
 * failure fast-check's report (seed, path, shrunk counterexample, error) as the failure message.
 * Re-run a failure with FUZZ_SEED=<seed> FUZZ_PATH=<path> (and tap's --grep for its subtest: the
 * path belongs to one property).
 */
import { inspect } from 'node:util';
import fc from 'fast-check';

export const FUZZ_SEED = Number(process.env['FUZZ_SEED'] ?? 20261201);
/** FUZZ_RUNS, or `fallback`; a slow property runs `scale` of FUZZ_RUNS. */
export const fuzzRuns = (fallback: number, scale = 1): number => {
  const env = process.env['FUZZ_RUNS'];
  return env === undefined || env === '' ? fallback : Math.max(1, Math.ceil(Number(env) * scale));
};

export type Settled<T> =
  | { readonly kind: 'resolved'; readonly value: T; readonly ms: number }
  | { readonly kind: 'rejected'; readonly error: unknown; readonly ms: number }
  | { readonly kind: 'timeout'; readonly ms: number };

/** How `p` settles, or 'timeout' after `deadlineMs`. */
export async function settle<T>(p: Promise<T>, deadlineMs: number): Promise<Settled<T>> {
  const t0 = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Settled<T>>((resolve) => { timer = setTimeout(() => resolve({ kind: 'timeout', ms: Date.now() - t0 }), deadlineMs); });
  try {
    return await Promise.race([
      p.then((value): Settled<T> => ({ kind: 'resolved', value, ms: Date.now() - t0 }), (error: unknown): Settled<T> => ({ kind: 'rejected', error, ms: Date.now() - t0 })),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export const codeOf = (err: unknown): unknown => (err as { code?: unknown } | null)?.code;
export const showError = (err: unknown): string => inspect(err, { depth: 2, breakLength: Infinity }).slice(0, 2000);

/** Counts of outcomes (resolved, or each error code), shown after a run. */
export class Tally {
  private readonly counts = new Map<string, number>();
  add(key: string): void { this.counts.set(key, (this.counts.get(key) ?? 0) + 1); }
  toString(): string { return [...this.counts].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k}=${n}`).join(' '); }
}

interface TapLike { comment(...a: unknown[]): void; pass(m: string): void; fail(m: string): void }

/**
 * Checks `predicate` (which throws to fail) on `runs` values of `arb`, reporting into `t`.
 * `maxShrinks` bounds the shrinking of a slow property.
 */
export async function checkProperty<T>(t: TapLike, name: string, arb: fc.Arbitrary<T>, predicate: (v: T) => Promise<void>,
  o: { runs: number; maxShrinks?: number; tally?: Tally }): Promise<void> {
  const t0 = Date.now();
  let calls = 0;
  const path = process.env['FUZZ_PATH'];
  const arbitrary = o.maxShrinks === undefined ? arb : fc.limitShrink(arb, o.maxShrinks);
  t.comment(`${name}: seed ${FUZZ_SEED}, ${o.runs} runs${path ? `, replaying path ${path}` : ''} (set FUZZ_SEED / FUZZ_RUNS / FUZZ_PATH to change)`);
  const details = await fc.check(fc.asyncProperty(arbitrary, async (v) => { calls++; await predicate(v); }), {
    seed: FUZZ_SEED, numRuns: o.runs, ...(path ? { path } : {}), verbose: 0,
  });
  const summary = `${name}: ${details.numRuns} cases ran (seed ${FUZZ_SEED}), ${details.numShrinks} shrinks, ${calls} calls in ${Date.now() - t0} ms`;
  t.comment(summary + (o.tally ? `; outcomes: ${o.tally}` : ''));
  if (details.failed) {
    const report = fc.defaultReportMessage(details) ?? `${name} failed (seed ${details.seed}, path ${details.counterexamplePath})`;
    const err = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
    const replay = `replay: FUZZ_SEED=${details.seed} FUZZ_PATH='${details.counterexamplePath}' npx tap <this file> --grep='<this subtest>'`;
    const text = `${report}\n${replay}\n\nThe shrunk case failed with:\n${err}`;
    console.error(`\n*** ${name} FAILED ***\n${text}\n`);
    for (const line of text.split('\n')) t.comment(line);
    t.fail(`${name}: property failed (seed ${details.seed}, path "${details.counterexamplePath}"): ${err.split('\n')[0]}`);
  } else {
    t.pass(summary);
  }
}
