import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { tarOf } from '../../lib/tar-of.js';

const run = promisify(execFile);
const CLI = path.resolve('dist/cvmfs/cli.js');

async function cli(args: string[], input?: Buffer): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = run(process.execPath, [CLI, ...args]);
  if (input) { p.child.stdin!.end(input); } else p.child.stdin?.end();
  try {
    const { stdout, stderr } = await p;
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

t.test('cvmfs-repo init, ingest (stdin and file), info, resign; errors exit non-zero with the code', async (t) => {
  if (!fs.existsSync(CLI)) { t.fail('dist/cvmfs/cli.js missing: run "make build" first'); return; }
  const d = t.testdir();
  const repo = path.join(d, 'repo'), keys = path.join(d, 'keys');
  let r = await cli(['init', '--dir', repo, '--keys', keys, '--name', 'cli.example.org', '--hash', 'shake128']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /created cli\.example\.org .*revision 1, shake128/);
  for (const f of ['masterkey', 'pub', 'key', 'crt']) t.ok(fs.existsSync(path.join(keys, `cli.example.org.${f}`)), `${f} written`);
  t.equal(fs.statSync(path.join(keys, 'cli.example.org.masterkey')).mode & 0o777, 0o600, 'private keys are 0600');
  const tar = await tarOf([{ type: 'file', name: 'hello', content: 'hi' }]);
  r = await cli(['ingest', '--dir', repo, '--keys', keys, '--path', '/layers/a'], tar);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /revision 2: \/layers\/a ← 1 entries \(none\)/);
  fs.writeFileSync(path.join(d, 'l.tar'), tar);
  r = await cli(['ingest', '--dir', repo, '--keys', keys, '--path', '/layers/b', path.join(d, 'l.tar')]);
  t.equal(r.code, 0, r.stderr);
  r = await cli(['info', '--dir', repo]);
  t.match(r.stdout, /revision\s+3/);
  t.match(r.stdout, /catalogs\s+3/);
  t.match(r.stdout, /-shake128/);
  r = await cli(['info', '--dir', repo, '--json']);
  t.equal(JSON.parse(r.stdout).totals.regular, 4);
  const { serveRepository } = await import('../../../cvmfs/index.js');
  const srv = await serveRepository({ dir: repo, fqrn: 'cli.example.org' });
  t.teardown(() => srv.close());
  const client = ['--url', srv.url, '--name', 'cli.example.org', '--pubkey', path.join(keys, 'cli.example.org.pub'), '--cache', path.join(d, 'cache')];
  r = await cli(['ls', ...client, '/layers/a']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /-0644\s+0\s+0\s+2 hello/);
  r = await cli(['cat', ...client, '/layers/b/hello']);
  t.equal(r.stdout, 'hi');
  r = await cli(['cat', ...client, '/layers/b/missing']);
  t.equal(r.code, 1);
  t.match(r.stderr, /CVMFS_PATH_NOT_FOUND: \/layers\/b\/missing does not exist/);
  r = await cli(['resign', '--dir', repo, '--keys', keys, '--days', '7']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /expires/);

  r = await cli(['init', '--dir', path.join(d, 'x'), '--keys', path.join(d, 'xk'), '--name', 'x.example.org', '--hash', 'md5']);
  t.equal(r.code, 1);
  t.match(r.stderr, /CVMFS_UNKNOWN_HASH_ALGORITHM: unknown hash algorithm "md5"/);
  r = await cli(['ingest', '--dir', repo, '--keys', path.join(d, 'nokeys'), '--path', '/c'], tar);
  t.equal(r.code, 1);
  t.match(r.stderr, /CVMFS_KEYS_MISSING/);
  r = await cli(['ingest', '--dir', repo, '--keys', keys, '--path', '/c'], Buffer.from('garbage'.repeat(100)));
  t.equal(r.code, 1);
  t.match(r.stderr, /CVMFS_TAR_CORRUPT/);
  r = await cli(['info', '--dir', path.join(d, 'nothing')]);
  t.match(r.stderr, /CVMFS_REPO_NOT_FOUND: no repository at/);
  r = await cli(['frobnicate']);
  t.equal(r.code, 2);
  t.match(r.stderr, /unknown command "frobnicate"/);
  r = await cli(['ingest', '--dir', repo]);
  t.equal(r.code, 2);
  t.match(r.stderr, /missing --keys/);
});
