/**
 * Property-based hostile tars against ApplyDiff (fault: hostile-layer-fuzz). Generated entry lists
 * (see test/lib/hostile-tar.ts), byte-mutated tars and entries hidden after the end marker are
 * applied into a fresh, empty layer with a canary tree beside it. Each case must:
 *   - settle within DEADLINE_MS; resolve, or reject with a DRIVER_* code;
 *   - leave everything outside the layer as it was (modes, owners, times, contents, links, xattrs,
 *     the parent's listing);
 *   - on rejection, leave the layer empty with its own mode and owner;
 *   - on success, give no canary inode a second name, and match the model of the entry list;
 *     with a --userns-remap map (a quarter of the cases), own nothing outside the map.
 * A second property applies two tars into one layer (the path where what is on disk is checked,
 * not known). The stream property delivers the same tars in random chunks, with a short idle limit: ended,
 * the outcome and the tree must be those of the whole tar (time ApplyDiff spends working is no
 * upload stall); stopped (never ended), it must fail with DRIVER_UPLOAD_STALLED within the limit.
 *
 * Fixed seed by default; `make fuzz` runs longer (FUZZ_RUNS, FUZZ_SEED, FUZZ_PATH).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import t, { type Test } from 'tap';
import { applyDiff } from '../../driver/apply-diff.js';
import { IdMapping } from '../../driver/id-map.js';
import { makeCanaryRun, snapshotDiff, type CanaryRun } from '../lib/canary.js';
import { checkProperty, codeOf, fuzzRuns, settle, showError, Tally, type Settled } from '../lib/fuzz.js';
import { caseBytes, describeTar, entriesArb, modelLayer, tarCaseArb, treeDiff, type MNode, type TarCase, type Verdict } from '../lib/hostile-tar.js';
import { notRoot, skipLoudly } from '../lib/skip.js';

const ROOT_ONLY = 'APPLYDIFF FUZZ SKIPPED: needs root to chown and mknod';
const DEADLINE_MS = 10_000;
const IDLE_MS = 200;
/** The watchdog ticks every idle/4, then the layer is emptied, on a machine that runs other suites. */
const STALL_SLACK_MS = 3_000;
const DRIVER_CODE = /^DRIVER_[A-Z_]+$/;

function tmpBase(t: Test, prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** The layer as the model describes one: every path below it, with type, contents and link targets. */
function readTree(root: string): Map<string, MNode> {
  const out = new Map<string, MNode>();
  const walk = (dir: string, rel: string) => {
    for (const n of fs.readdirSync(dir)) {
      const p = path.join(dir, n);
      const r = rel ? `${rel}/${n}` : n;
      const st = fs.lstatSync(p);
      if (st.isDirectory()) { out.set(r, { type: 'dir' }); walk(p, r); }
      else if (st.isFile()) out.set(r, { type: 'file', content: fs.readFileSync(p) });
      else if (st.isSymbolicLink()) out.set(r, { type: 'symlink', target: fs.readlinkSync(p) });
      else if (st.isCharacterDevice()) out.set(r, { type: 'char' });
      else if (st.isBlockDevice()) out.set(r, { type: 'block' });
      else if (st.isFIFO()) out.set(r, { type: 'fifo' });
      else out.set(r, { type: 'file', content: Buffer.from(`(socket or unknown type ${st.mode.toString(8)})`) });
    }
  };
  walk(root, '');
  return out;
}

/** Every path in the layer that shares an inode with the canary. */
function canaryNamesIn(r: CanaryRun): string[] {
  const inodes = r.canaryInodes();
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const n of fs.readdirSync(dir)) {
      const p = path.join(dir, n);
      const st = fs.lstatSync(p);
      if (inodes.has(`${st.dev}:${st.ino}`)) out.push(path.relative(r.target, p));
      if (st.isDirectory()) walk(p);
    }
  };
  walk(r.target);
  return out;
}

/** The invariants every settled ApplyDiff must meet; returns the problems found. */
function checkSettled(out: Settled<number>, r: CanaryRun, before: Map<string, string>, rootBefore: fs.Stats, tally: Tally): string[] {
  const problems: string[] = [];
  if (out.kind === 'timeout') problems.push(`ApplyDiff did not settle within ${DEADLINE_MS} ms`);
  else if (out.kind === 'rejected') {
    const code = codeOf(out.error);
    tally.add(process.env['FUZZ_DEBUG'] ? `${String(code)}[${String((out.error as Error).message).replace(/"[^"]*"/g, '_').slice(0, 70)}]` : String(code));
    if (typeof code !== 'string' || !DRIVER_CODE.test(code)) problems.push(`rejected without a DRIVER_* code: ${showError(out.error)}`);
    if (code === 'DRIVER_INTERNAL') problems.push(`an internal error on input: ${showError(out.error)}`);
    const left = fs.readdirSync(r.target);
    if (left.length > 0) problems.push(`the rejected apply left ${JSON.stringify(left.slice(0, 10))} in the layer`);
    const st = fs.lstatSync(r.target);
    if (st.mode !== rootBefore.mode || st.uid !== rootBefore.uid || st.gid !== rootBefore.gid) {
      problems.push(`the rejected apply left the layer root at mode ${st.mode.toString(8)} ${st.uid}:${st.gid} (was ${rootBefore.mode.toString(8)} ${rootBefore.uid}:${rootBefore.gid})`);
    }
  } else {
    tally.add('resolved');
    const names = canaryNamesIn(r);
    if (names.length > 0) problems.push(`layer entries share an inode with the canary: ${JSON.stringify(names)}`);
  }
  const diff = snapshotDiff(before, r.snapshot());
  if (diff.length > 0) problems.push(`outside the layer changed:\n  ${diff.slice(0, 12).join('\n  ')}`);
  return problems;
}

/** The model's verdict against what ApplyDiff did. */
function checkModel(c: TarCase, out: Settled<number>, canary: string, tree: () => Map<string, MNode>, model: Tally, mayRefuse = false): string[] {
  let got: Map<string, MNode> | undefined;
  const judge = (v: Verdict): string[] => {
    const problems: string[] = [];
    if (v.kind === 'fail' && out.kind === 'resolved') problems.push(`accepted a tar that must be refused (${v.why})`);
    if (v.kind === 'ok' && !mayRefuse && out.kind === 'rejected') problems.push(`refused a valid tar: ${showError(out.error)}`);
    if (v.kind !== 'fail' && v.tree !== null && out.kind === 'resolved') {
      const d = treeDiff(v.tree, got ??= tree());
      if (d.length > 0) problems.push(`the layer differs from the model:\n  ${d.join('\n  ')}`);
    }
    return problems;
  };
  const v = modelLayer(c, 'apply', canary);
  model.add(process.env['FUZZ_DEBUG'] ? `${v.kind}:${'why' in v ? v.why : ''}` : v.kind);
  const problems = judge(v);
  return problems;
}

t.test('the canary snapshot sees every change the properties look for', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const base = tmpBase(t, 'fuzz-canary-');
  const changes: [string, (r: CanaryRun) => void][] = [
    ['chmod', (r) => fs.chmodSync(path.join(r.canary, 'file'), 0o4777)],
    ['lchown of a symlink', (r) => fs.lchownSync(path.join(r.canary, 'link'), 1, 1)],
    ['a second name', (r) => fs.linkSync(path.join(r.canary, 'file'), path.join(r.target, 'x'))],
    ['a time', (r) => fs.utimesSync(path.join(r.canary, 'sub'), new Date(), new Date())],
    ['contents', (r) => fs.writeFileSync(path.join(r.canary, 'sub', 'inner'), 'inner\n')],
    ['an xattr', (r) => execFileSync('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', path.join(r.canary, 'sub')])],
    ['a file beside the layer', (r) => fs.writeFileSync(path.join(r.parent, 'new'), '')],
    ['a file above the parent', (r) => fs.mkdirSync(path.join(r.run, 'd1', 'canary'))],
  ];
  for (const [i, [what, change]] of changes.entries()) {
    const r = makeCanaryRun(path.join(base, String(i)));
    const before = r.snapshot();
    change(r);
    t.ok(snapshotDiff(before, r.snapshot()).length > 0, `${what} is seen`);
  }
  const r = makeCanaryRun(path.join(base, 'same'));
  const before = r.snapshot();
  fs.writeFileSync(path.join(r.target, 'inside'), 'x');
  fs.chmodSync(r.target, 0o755);
  t.same(snapshotDiff(before, r.snapshot()), [], 'what happens inside the layer is not');
  t.same(canaryNamesIn(makeCanaryRun(path.join(base, 'none'))), [], 'an empty layer shares no inode');
});

/** The daemon's --userns-remap map in a quarter of the cases: container 0…65535 is host 100000…165535. */
const REMAP = new IdMapping([{ containerId: 0, hostId: 100_000, size: 65_536 }], [{ containerId: 0, hostId: 100_000, size: 65_536 }]);

/** Whether an entry list names an owner that REMAP does not cover (ApplyDiff must then refuse it). */
function outsideRemap(c: TarCase): boolean {
  return [...c.entries, ...c.trailing].some((e) => e.kind !== 'raw' && (e.meta.uid >= 65_536 || e.meta.gid >= 65_536
    || ['uid', 'gid'].some((k) => { const v = e.meta.pax[k]; return v !== undefined && !(typeof v === 'string' && /^\d{1,5}$/.test(v) && Number(v) < 65_536); })));
}

/** Paths in the layer (below its root) owned by a host ID outside REMAP's range. */
function unmappedOwners(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const n of fs.readdirSync(dir)) {
      const p = path.join(dir, n);
      const st = fs.lstatSync(p);
      if (st.uid < 100_000 || st.uid >= 165_536 || st.gid < 100_000 || st.gid >= 165_536) out.push(`${path.relative(root, p)} ${st.uid}:${st.gid}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(root);
  return out;
}

t.test('hostile-layer-fuzz: generated and mutated tars against ApplyDiff', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const base = tmpBase(t, 'fuzz-applydiff-');
  const tally = new Tally();
  const model = new Tally();
  let n = 0;
  const arb = fc.record({ tar: tarCaseArb, remap: fc.oneof({ weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }) });
  await checkProperty(t, 'ApplyDiff', arb, async ({ tar: c, remap }) => {
    const run = path.join(base, `case-${n++}`);
    try {
      const r = makeCanaryRun(run);
      const before = r.snapshot();
      const rootBefore = fs.lstatSync(r.target);
      const bytes = await caseBytes(c, r.canary);
      const out = await settle(applyDiff(r.target, Readable.from([bytes]), remap ? { ids: REMAP } : {}), DEADLINE_MS);
      const problems = checkSettled(out, r, before, rootBefore, tally);
      if (out.kind !== 'timeout') problems.push(...checkModel(c, out, r.canary, () => readTree(r.target), model, remap && outsideRemap(c)));
      if (remap && out.kind === 'resolved') {
        const bad = unmappedOwners(r.target);
        if (bad.length > 0) problems.push(`with --userns-remap, layer entries are owned outside the map: ${JSON.stringify(bad.slice(0, 10))}`);
      }
      if (problems.length > 0) throw new Error(`${problems.join('\n')}\n${remap ? 'with the userns remap 0:100000:65536\n' : ''}${describeTar(bytes)}`);
    } finally {
      fs.rmSync(run, { recursive: true, force: true });
    }
  }, { runs: fuzzRuns(250), maxShrinks: 300, tally });
  t.comment(`model verdicts: ${model}`);
});

t.test('hostile-layer-fuzz: a second tar into a layer that is not empty (what is on disk is checked, not assumed)', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const base = tmpBase(t, 'fuzz-applydiff-twice-');
  const tally = new Tally();
  let n = 0;
  await checkProperty(t, 'ApplyDiff twice', fc.tuple(tarCaseArb, tarCaseArb), async ([first, second]) => {
    const run = path.join(base, `case-${n++}`);
    try {
      const r = makeCanaryRun(run);
      const before = r.snapshot();
      const rootBefore = fs.lstatSync(r.target);
      const b1 = await caseBytes(first, r.canary);
      const out1 = await settle(applyDiff(r.target, Readable.from([b1])), DEADLINE_MS);
      const problems = checkSettled(out1, r, before, rootBefore, new Tally());
      const b2 = await caseBytes(second, r.canary);
      const out2 = await settle(applyDiff(r.target, Readable.from([b2])), DEADLINE_MS);
      if (out2.kind === 'timeout') problems.push(`the second ApplyDiff did not settle within ${DEADLINE_MS} ms`);
      else if (out2.kind === 'rejected') {
        const code = codeOf(out2.error);
        tally.add(String(code));
        if (typeof code !== 'string' || !DRIVER_CODE.test(code) || code === 'DRIVER_INTERNAL') problems.push(`the second apply was rejected without a proper code: ${showError(out2.error)}`);
      } else {
        tally.add('resolved');
        const names = canaryNamesIn(r);
        if (names.length > 0) problems.push(`layer entries share an inode with the canary: ${JSON.stringify(names)}`);
      }
      const diff = snapshotDiff(before, r.snapshot());
      if (diff.length > 0) problems.push(`outside the layer changed:\n  ${diff.slice(0, 12).join('\n  ')}`);
      if (problems.length > 0) throw new Error(`${problems.join('\n')}\nfirst ${describeTar(b1)}\nsecond ${describeTar(b2)}`);
    } finally {
      fs.rmSync(run, { recursive: true, force: true });
    }
  }, { runs: fuzzRuns(60, 0.25), maxShrinks: 200, tally });
});

interface StreamCase {
  readonly tar: TarCase;
  readonly chunks: readonly number[];
  /** Where the upload stops for good (a fraction of the tar, in millionths), or null: it ends. */
  readonly stopAt: number | null;
  readonly pauses: boolean;
}

const streamCaseArb: fc.Arbitrary<StreamCase> = fc.record({
  tar: fc.record({ entries: entriesArb, mutations: fc.constant([]), trailing: fc.constant([]) }),
  chunks: fc.array(fc.oneof(fc.integer({ min: 1, max: 16 }), fc.integer({ min: 1, max: 700 }), fc.integer({ min: 500, max: 70_000 })), { minLength: 1, maxLength: 12 }),
  stopAt: fc.option(fc.nat(999_999), { freq: 2 }),
  pauses: fc.boolean(),
});

/** An upload that sends `bytes` in `chunks` (cycled), yielding between them; stops at `stop` bytes without ending if set. */
function upload(bytes: Buffer, chunks: readonly number[], stop: number | null, pauses: boolean) {
  const stream = new Readable({ read() {} });
  let lastPush = Date.now();
  let halted = false;
  const limit = stop ?? bytes.length;
  const done = (async () => {
    let off = 0;
    for (let i = 0; off < limit && !halted; i++) {
      const n = Math.min(chunks[i % chunks.length]!, limit - off);
      stream.push(bytes.subarray(off, off + n));
      lastPush = Date.now();
      off += n;
      await new Promise((r) => (pauses && i % 3 === 0 ? setTimeout(r, 1) : setImmediate(r)));
    }
    if (stop === null && !halted) stream.push(null);
  })();
  return { stream, lastPush: () => lastPush, halt: async () => { halted = true; await done; stream.destroy(); } };
}

t.test('upload-stalled-fuzz: the same tars in random chunks; ended alike, stopped as DRIVER_UPLOAD_STALLED', async (t) => {
  if (notRoot()) { skipLoudly(t, ROOT_ONLY); return; }
  const base = tmpBase(t, 'fuzz-applydiff-stream-');
  const tally = new Tally();
  let n = 0;
  await checkProperty(t, 'ApplyDiff stream', streamCaseArb, async (c) => {
    const dir = path.join(base, `case-${n++}`);
    try {
      // The same tar, whole, as the reference.
      const ref = makeCanaryRun(path.join(dir, 'whole'));
      const bytes = await caseBytes(c.tar, ref.canary);
      const whole = await settle(applyDiff(ref.target, Readable.from([bytes])), DEADLINE_MS);
      const wholeTree = whole.kind === 'resolved' ? readTree(ref.target) : null;

      // The canary path is part of the tar: the chunked run uses the same one, after the reference is gone.
      fs.rmSync(path.join(dir, 'whole'), { recursive: true, force: true });
      const r = makeCanaryRun(path.join(dir, 'whole'));
      const before = r.snapshot();
      const rootBefore = fs.lstatSync(r.target);
      const stop = c.stopAt === null ? null : Math.floor((c.stopAt / 1_000_000) * bytes.length);
      const up = upload(bytes, c.chunks, stop, c.pauses);
      const out = await settle(applyDiff(r.target, up.stream, { idleTimeoutMs: IDLE_MS }), DEADLINE_MS + IDLE_MS);
      const settledAt = Date.now();
      await up.halt();
      const problems = checkSettled(out, r, before, rootBefore, tally);
      const what = (s: Settled<number>) => (s.kind === 'rejected' ? String(codeOf(s.error)) : s.kind);
      if (stop === null) {
        if (what(out) !== what(whole)) problems.push(`delivered in chunks the tar gave ${what(out)}, whole it gave ${what(whole)}: ${out.kind === 'rejected' ? showError(out.error) : ''}`);
        else if (out.kind === 'resolved' && wholeTree) {
          const d = treeDiff(wholeTree, readTree(r.target));
          if (d.length > 0) problems.push(`delivered in chunks the layer differs from the whole tar's:\n  ${d.join('\n  ')}`);
        }
      } else {
        const code = out.kind === 'rejected' ? codeOf(out.error) : undefined;
        if (out.kind === 'resolved') problems.push(`an upload stopped at byte ${stop} of ${bytes.length} (never ended) was taken as a whole layer`);
        else if (code !== 'DRIVER_UPLOAD_STALLED' && !(whole.kind === 'rejected' && code === codeOf(whole.error))) {
          problems.push(`an upload stopped at byte ${stop} of ${bytes.length} failed with ${String(code)}, not DRIVER_UPLOAD_STALLED (whole: ${what(whole)}): ${out.kind === 'rejected' ? showError(out.error) : ''}`);
        } else if (code === 'DRIVER_UPLOAD_STALLED' && settledAt - up.lastPush() > IDLE_MS + STALL_SLACK_MS) {
          problems.push(`the stall was noticed ${settledAt - up.lastPush()} ms after the last byte (idle limit ${IDLE_MS} ms)`);
        }
      }
      if (problems.length > 0) throw new Error(`${problems.join('\n')}\nchunks ${JSON.stringify(c.chunks)}, stop ${stop}\n${describeTar(bytes)}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, { runs: fuzzRuns(40, 0.2), maxShrinks: 100, tally });
});
