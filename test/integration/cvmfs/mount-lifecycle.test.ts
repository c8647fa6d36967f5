/**
 * `cvmfs-repo mount` and friends as processes: a mount ends cleanly (exit 0, "unmounted", the
 * mount gone) within a bounded wait after SIGTERM, SIGINT or an unmount from outside, and every
 * failure of open/cat/ls/mount ends the process with a coded error (`CVMFS_…:` on stderr, exit ≠ 0)
 * within a bounded time instead of hanging. Runs the built CLI (dist/cvmfs/cli.js).
 */
import { execFile, spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { serveRepository } from '../../../cvmfs/index.js';
import { linkCopy, rewriteLayouts } from '../../lib/catalog-layouts.js';
import { deadUrl } from '../../lib/faulty-server.js';
import { skipWithoutFuse } from '../../lib/fuse-gate.js';
import { makeRepo } from '../../lib/repo-fixture.js';
import { tarOf } from '../../lib/tar-of.js';

const run = promisify(execFile);
const sh = (cmd: string) => run('bash', ['-c', cmd], { timeout: 30_000 }).then((r) => r.stdout);
const CLI = path.resolve('dist/cvmfs/cli.js');
const SCRATCH = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
/** How long a process may take to go away after it was told to (signal, unmount) or failed. */
const EXIT_BOUND_MS = 10_000;
/** How long a failing command may take in all (a dead server costs one retry with back-off). */
const FAIL_BOUND_MS = 15_000;

function isMounted(dir: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === dir);
}

interface Proc {
  readonly child: ReturnType<typeof spawn>;
  out(): string;
  err(): string;
  /** Resolves at exit, or after `boundMs` with `hung` (the process is then SIGKILLed). */
  exit(boundMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; hung: boolean; ms: number; errAtMs: number | null }>;
}

function cli(args: string[]): Proc {
  const started = Date.now();
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  let errAt: number | null = null;
  child.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => { err += c.toString(); if (errAt === null && /CVMFS_[A-Z_]+:/.test(err)) errAt = Date.now() - started; });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
  return {
    child, out: () => out, err: () => err,
    exit: async (boundMs) => {
      const from = Date.now();
      let timer: NodeJS.Timeout | undefined;
      const bounded = await Promise.race([exited, new Promise<null>((r) => { timer = setTimeout(() => r(null), boundMs); })]);
      clearTimeout(timer);
      if (bounded === null) {
        child.kill('SIGKILL');
        const e = await exited;
        return { ...e, hung: true, ms: Date.now() - from, errAtMs: errAt };
      }
      return { ...bounded, hung: false, ms: Date.now() - from, errAtMs: errAt };
    },
  };
}

async function waitFor(p: Proc, re: RegExp, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (re.test(p.out())) return true;
    if (p.child.exitCode !== null || p.child.signalCode !== null) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

interface Env {
  readonly base: string;
  readonly fqrn: string;
  readonly pub: string;
  readonly wrongPub: string;
  readonly url: string;
  readonly schema30Url: string;
  readonly deadUrl: string;
}

let envP: Promise<Env> | undefined;
/** One repository (served), a copy of it whose root catalog has schema 3.0 (served), a dead URL, a wrong key. */
function env(): Promise<Env> {
  envP ??= (async () => {
    const base = fs.mkdtempSync(path.join(SCRATCH, 'mount-lifecycle-'));
    const repo = await makeRepo(path.join(base, 'r'), 'life.example.org');
    await repo.ingest('/l', await tarOf([{ type: 'file', name: 'hello', content: 'hello\n' }]));
    const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
    const s30 = path.join(base, 's30');
    linkCopy(repo.dir, s30);
    await rewriteLayouts(s30, repo.keys, repo.fqrn, { layouts: { '': { schema: '3.0', revision: 7 } } });
    const srv30 = await serveRepository({ dir: s30, fqrn: repo.fqrn });
    t.teardown(async () => { await srv.close(); await srv30.close(); fs.rmSync(base, { recursive: true, force: true }); });
    const wrongPub = path.join(base, 'wrong.pub');
    fs.writeFileSync(wrongPub, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }));
    return { base, fqrn: repo.fqrn, pub: path.join(repo.keys, `${repo.fqrn}.pub`), wrongPub, url: srv.url, schema30Url: srv30.url, deadUrl: await deadUrl(repo.fqrn) };
  })();
  return envP;
}

let dirs = 0;
function freshDir(e: Env, what: string): string {
  const d = path.join(e.base, `${what}-${dirs++}`);
  fs.mkdirSync(d, { mode: 0o700 });
  return d;
}

/** A mountpoint torn down after the test, forcibly if the process left it behind. */
function mountpoint(t: Test, e: Env, p?: () => Proc | undefined): string {
  const mnt = freshDir(e, 'mnt');
  t.teardown(async () => {
    const c = p?.();
    if (c && c.child.exitCode === null && c.child.signalCode === null) c.child.kill('SIGKILL');
    if (isMounted(mnt)) await sh(`fusermount -uz '${mnt}'`).catch(() => {});
  });
  return mnt;
}

if (!fs.existsSync(CLI)) {
  t.fail('dist/cvmfs/cli.js missing: run "npx tsc -p tsconfig.json" first');
} else {
  const triggers: [string, (p: Proc, mnt: string) => Promise<unknown>, RegExp][] = [
    ['SIGTERM', async (p) => p.child.kill('SIGTERM'), /\(SIGTERM\)/],
    ['SIGINT', async (p) => p.child.kill('SIGINT'), /\(SIGINT\)/],
    ['an external fusermount -u', (_p, mnt) => sh(`fusermount -u '${mnt}'`), /\(unmounted from outside\)/],
    ['an external lazy umount -l', (_p, mnt) => sh(`umount -l '${mnt}'`), /\(unmounted from outside\)/],
  ];
  for (const [what, trigger, why] of triggers) {
    t.test(`cvmfs-repo mount exits cleanly within ${EXIT_BOUND_MS / 1000} s after ${what}`, async (t) => {
      if (skipWithoutFuse(t)) return;
      const e = await env();
      let p: Proc | undefined;
      const mnt = mountpoint(t, e, () => p);
      p = cli(['mount', '--url', e.url, '--name', e.fqrn, '--pubkey', e.pub, '--cache', freshDir(e, 'cache'), mnt]);
      if (!t.ok(await waitFor(p, /mounted life\.example\.org revision \d+ at /, 20_000), 'mounted', { stderr: p.err() })) return;
      t.equal(await sh(`cat '${mnt}/l/hello'`), 'hello\n', 'serves files');
      await trigger(p, mnt);
      const x = await p.exit(EXIT_BOUND_MS);
      t.notOk(x.hung, `exited within ${EXIT_BOUND_MS} ms (took ${x.ms} ms)`, { stderr: p.err() });
      t.equal(x.code, 0, 'exit code 0');
      t.match(p.out(), new RegExp(`unmounted ${mnt.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} ${why.source}`), 'says "unmounted" and why');
      t.notOk(isMounted(mnt), 'the mount is gone');
      t.notMatch(p.err(), /CVMFS_|Error/, 'no error on stderr');
    });
  }

  /** A command that must fail with a coded error, promptly. */
  interface FailCase { readonly name: string; readonly args: (e: Env, t: Test) => string[]; readonly code: RegExp; readonly exit?: number; readonly fuse?: boolean }
  const client = (e: Env, url: string, pub: string) => ['--url', url, '--name', e.fqrn, '--pubkey', pub];
  const failures: FailCase[] = [];
  const faults: [string, (e: Env) => [string, string], RegExp][] = [
    ['wrong master key', (e) => [e.url, e.wrongPub], /CVMFS_(BAD_SIGNATURE|BAD_WHITELIST|UNTRUSTED_CERTIFICATE):/],
    ['dead server URL', (e) => [e.deadUrl, e.pub], /CVMFS_(ALL_SERVERS_FAILED|CONNECTION_FAILED):/],
    ['root catalog of schema 3.0', (e) => [e.schema30Url, e.pub], /CVMFS_BAD_CATALOG: .*schema 3/],
  ];
  for (const [fault, where, code] of faults) {
    failures.push(
      { name: `ls, ${fault}`, args: (e) => ['ls', ...client(e, ...where(e)), '--cache', freshDir(e, 'cache'), '/l'], code },
      { name: `cat, ${fault}`, args: (e) => ['cat', ...client(e, ...where(e)), '--cache', freshDir(e, 'cache'), '/l/hello'], code },
      { name: `mount, ${fault}`, args: (e, t) => ['mount', ...client(e, ...where(e)), '--cache', freshDir(e, 'cache'), mountpoint(t, e)], code, fuse: true },
    );
  }
  failures.push(
    { name: 'cat of a missing path (after a successful open)', args: (e) => ['cat', ...client(e, e.url, e.pub), '--cache', freshDir(e, 'cache'), '/l/nope'], code: /CVMFS_PATH_NOT_FOUND:/ },
    { name: 'ls of a file (after a successful open)', args: (e) => ['ls', ...client(e, e.url, e.pub), '--cache', freshDir(e, 'cache'), '/l/hello'], code: /CVMFS_NOT_A_DIRECTORY:/ },
    { name: 'mount onto a missing mountpoint (after a successful open)', args: (e) => ['mount', ...client(e, e.url, e.pub), '--cache', freshDir(e, 'cache'), path.join(e.base, 'no-such-dir')], code: /CVMFS_[A-Z_]+:/, fuse: true },
    { name: 'mount onto a regular file (after a successful open)', args: (e) => {
      const f = path.join(freshDir(e, 'file'), 'f'); fs.writeFileSync(f, '');
      return ['mount', ...client(e, e.url, e.pub), '--cache', freshDir(e, 'cache'), f];
    }, code: /CVMFS_[A-Z_]+:/, fuse: true },
    { name: 'a missing public key file', args: (e) => ['cat', '--url', e.url, '--name', e.fqrn, '--pubkey', path.join(e.base, 'none.pub'), '--cache', freshDir(e, 'cache'), '/l/hello'], code: /CVMFS_BAD_ARGUMENT:/, exit: 2 },
    { name: 'a cache directory others can write', args: (e) => {
      const c = freshDir(e, 'cache'); fs.chmodSync(c, 0o777);
      return ['cat', ...client(e, e.url, e.pub), '--cache', c, '/l/hello'];
    }, code: /CVMFS_CACHE_UNSAFE:/ },
  );

  t.test(`every failure of open, cat, ls and mount exits with a coded error within ${FAIL_BOUND_MS / 1000} s (run side by side)`, async (t) => {
    const e = await env();
    const fuseMissing = (await import('../../lib/fuse-gate.js')).fuseUnavailable();
    if (fuseMissing) t.comment(`FUSE TESTS SKIPPED: ${fuseMissing}: the mount cases of this test do not run`);
    const cases = failures.filter((f) => !f.fuse || !fuseMissing);
    const results = await Promise.all(cases.map(async (f) => {
      const p = cli(f.args(e, t));
      return { f, p, x: await p.exit(FAIL_BOUND_MS) };
    }));
    for (const { f, p, x } of results) {
      t.test(f.name, async (t) => {
        t.notOk(x.hung, `exited by itself (took ${x.ms} ms)`, { stderr: p.err().slice(0, 2000) });
        t.equal(x.signal, null, 'not killed');
        t.equal(x.code, f.exit ?? 1, `exit code ${f.exit ?? 1}`);
        t.match(p.err(), f.code, 'a coded error on stderr');
        t.notMatch(p.err(), /CVMFS_INTERNAL/, 'not an internal error');
        if (x.errAtMs !== null) t.ok(x.ms - x.errAtMs < EXIT_BOUND_MS, `gone within ${EXIT_BOUND_MS} ms of printing the error`);
        t.equal(p.out(), '', 'nothing on stdout');
      });
    }
  });
}
