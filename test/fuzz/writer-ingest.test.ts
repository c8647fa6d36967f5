/**
 * Property-based hostile tars against the writer's ingest (fault: hostile-layer-fuzz). Generated
 * entry lists, byte-mutated tars and entries hidden after the end marker, plain or gzip/zstd
 * compressed (and sometimes mutated after compression), are ingested into a fresh copy of a
 * repository made by makeRepo, with a canary tree beside it. Each case must:
 *   - settle within DEADLINE_MS; resolve, or reject with a CVMFS_* code;
 *   - on rejection, leave the manifest's bytes as they were and data/txn empty (lock released);
 *   - on success, verify with the independent reader (signatures, every object's hash, sizes,
 *     counters: no unverified byte is served) and hold exactly the model's tree, file bytes
 *     included ("later entry wins");
 *   - change nothing outside the repository directory (the canary, the parent, the keys).
 *
 * Each case starts a zlib worker (about 0.7 s under tap's TypeScript loader), so this suite runs
 * fewer cases than the ApplyDiff one: FUZZ_RUNS scaled by WRITER_SCALE.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import t from 'tap';
import { makeCanaryRun, snapshotDiff } from '../lib/canary.js';
import { checkProperty, codeOf, fuzzRuns, settle, showError, Tally } from '../lib/fuzz.js';
import {
  caseBytes, compressed, describeTar, modelLayer, mutationArb, mutate, tarCaseArb, treeDiff,
  type Compression, type MNode, type Mutation, type TarCase, type Verdict,
} from '../lib/hostile-tar.js';
import { copyRepo } from '../lib/repo-copy.js';
import { makeRepo } from '../lib/repo-fixture.js';
import { tarOf } from '../lib/tar-of.js';
import type { ReadRepository } from '../lib/repo-reader.js';

const DEADLINE_MS = 30_000;
const MOUNT = '/layers/fuzz';
const CVMFS_CODE = /^CVMFS_[A-Z_]+$/;
const WRITER_SCALE = 0.5;

interface WriterCase {
  readonly tar: TarCase;
  readonly compression: Compression;
  /** Mutations of the compressed stream. */
  readonly outer: readonly Mutation[];
  readonly threads: number;
}

const writerCaseArb: fc.Arbitrary<WriterCase> = fc.record({
  tar: tarCaseArb,
  compression: fc.constantFrom<Compression>('none', 'none', 'gzip', 'zstd'),
  outer: fc.oneof({ weight: 6, arbitrary: fc.constant([]) }, { weight: 1, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 2 }) }),
  threads: fc.constantFrom(1, 1, 2),
});

/** The repository's tree below MOUNT, as the model describes one (the catalog marker left out). */
function treeOf(read: ReadRepository): Map<string, MNode> {
  const out = new Map<string, MNode>();
  for (const [p, e] of read.entries) {
    if (!p.startsWith(`${MOUNT}/`)) continue;
    const rel = p.slice(MOUNT.length + 1);
    if (rel === '.cvmfscatalog') continue;
    const type = e.mode & 0o170000;
    out.set(rel, type === 0o040000 ? { type: 'dir' } : type === 0o100000 ? { type: 'file', content: e.content ?? Buffer.alloc(0) }
      : type === 0o120000 ? { type: 'symlink', target: e.target ?? '' } : type === 0o020000 ? { type: 'char' }
        : type === 0o060000 ? { type: 'block' } : { type: 'fifo' });
  }
  return out;
}

function withoutMarker(tree: ReadonlyMap<string, MNode>): Map<string, MNode> {
  const m = new Map(tree);
  m.delete('.cvmfscatalog');
  return m;
}

t.test('hostile-layer-fuzz: generated and mutated tars against the writer', async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-writer-'));
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const template = await makeRepo(path.join(base, 'template'));
  await template.ingest('/layers/base', await tarOf([{ type: 'file', name: 'kept', content: 'kept' }]));
  const keysBefore = fs.readdirSync(template.keys).map((n) => `${n}:${fs.readFileSync(path.join(template.keys, n)).toString('base64')}`).join();
  const tally = new Tally();
  const model = new Tally();
  let n = 0;
  await checkProperty(t, 'writer ingest', writerCaseArb, async (c) => {
    const run = path.join(base, `case-${n++}`);
    try {
      const r = makeCanaryRun(run, 'repo', false);
      const repo = copyRepo(template, r.target);
      const before = r.snapshot();
      const manifestBefore = repo.manifest();
      const tarBytes = await caseBytes(c.tar, r.canary);
      const input = mutate(compressed(tarBytes, c.compression), c.outer);
      const out = await settle(repo.ingest(MOUNT, input, c.threads), DEADLINE_MS);
      const problems: string[] = [];
      let got: Map<string, MNode> | undefined;
      if (out.kind === 'timeout') problems.push(`ingest did not settle within ${DEADLINE_MS} ms`);
      else if (out.kind === 'rejected') {
        const code = codeOf(out.error);
        tally.add(process.env['FUZZ_DEBUG'] ? `${String(code)}[${String((out.error as Error).message).replace(/"[^"]*"/g, '_').slice(0, 70)}]` : String(code));
        if (typeof code !== 'string' || !CVMFS_CODE.test(code)) problems.push(`rejected without a CVMFS_* code: ${showError(out.error)}`);
        if (code === 'CVMFS_INTERNAL') problems.push(`an internal error on input: ${showError(out.error)}`);
        if (!repo.manifest().equals(manifestBefore)) problems.push('the manifest changed although the ingest failed');
      } else {
        tally.add('resolved');
        if (repo.manifest().equals(manifestBefore)) problems.push('the ingest resolved but published nothing');
        try {
          const read = await repo.read();
          if (read.problems.length > 0) problems.push(`the verifying reader found problems: ${read.problems.slice(0, 10).join('; ')}`);
          got = treeOf(read);
        } catch (err) {
          problems.push(`the verifying reader failed: ${showError(err)}`);
        }
      }
      if (out.kind !== 'timeout') {
        const staging = fs.readdirSync(path.join(r.target, 'data/txn'));
        if (staging.length > 0) problems.push(`data/txn holds ${JSON.stringify(staging.slice(0, 10))} after the ingest`);
      }
      if (out.kind !== 'timeout' && c.outer.length === 0) {
        const judge = (v: Verdict): string[] => {
          const ps: string[] = [];
          if (v.kind === 'fail' && out.kind === 'resolved') ps.push(`accepted a tar that must be refused (${v.why})`);
          if (v.kind === 'ok' && out.kind === 'rejected') ps.push(`refused a valid tar: ${showError(out.error)}`);
          if (v.kind !== 'fail' && v.tree !== null && got !== undefined) {
            const d = treeDiff(withoutMarker(v.tree), got);
            if (d.length > 0) ps.push(`the repository differs from the model:\n  ${d.join('\n  ')}`);
          }
          return ps;
        };
        const v = modelLayer(c.tar, 'writer', r.canary, Buffer.byteLength(MOUNT));
        model.add(process.env['FUZZ_DEBUG'] ? `${v.kind}:${'why' in v ? v.why : ''}` : v.kind);
        problems.push(...judge(v));
      }
      const diff = snapshotDiff(before, r.snapshot());
      if (diff.length > 0) problems.push(`outside the repository changed:\n  ${diff.slice(0, 12).join('\n  ')}`);
      const keysNow = fs.readdirSync(template.keys).map((k) => `${k}:${fs.readFileSync(path.join(template.keys, k)).toString('base64')}`).join();
      if (keysNow !== keysBefore) problems.push('the key directory changed');
      if (problems.length > 0) throw new Error(`${problems.join('\n')}\ncompression ${c.compression}, threads ${c.threads}\n${describeTar(tarBytes)}`);
    } finally {
      fs.rmSync(run, { recursive: true, force: true });
    }
  }, { runs: fuzzRuns(60, WRITER_SCALE), maxShrinks: 60, tally });
  t.comment(`model verdicts: ${model}`);
});
