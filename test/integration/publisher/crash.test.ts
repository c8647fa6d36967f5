/**
 * kill-9-mid-ingest: the publisher CLI (a child process) is killed with SIGKILL while it ingests a
 * large layer. The repository must stay at its last revision, consistent and served throughout
 * (a client reading through our reader from a separate `cvmfs-repo serve` process keeps reading);
 * after a restart the job resumes from the queue database, finishes, and the layer reads back
 * byte for byte.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import t, { type Test } from 'tap';
import { makeRepo } from '../../lib/repo-fixture.js';
import { startS3 } from '../../lib/s3.js';
import { tarOf } from '../../lib/tar-of.js';
import { client, minioEvent, postEvent, sha256, statusJson, upload, waitFor } from '../../lib/publisher.js';

const PUBLISHER = path.resolve('dist/publisher/cli.js');
const REPO_CLI = path.resolve('dist/cvmfs/cli.js');
const FQRN = 'crash.example.org';
const TOKEN = 'crash-token';

/** Starts a CLI and resolves with the first URL it prints on stdout matching `re`. */
function startCli(t: Test, file: string, args: string[], env: Record<string, string>, re: RegExp, log: string[]): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [file, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  child.stderr!.on('data', (d: Buffer) => log.push(d.toString()));
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${path.basename(file)} did not start: ${out} ${log.join('')}`)), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = re.exec(out);
      if (m) { clearTimeout(timer); resolve({ child, url: m[1]! }); }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${path.basename(file)} exited ${code}: ${out} ${log.join('')}`)); });
  });
}

if (!fs.existsSync(PUBLISHER) || !fs.existsSync(REPO_CLI)) t.fail('dist/publisher/cli.js or dist/cvmfs/cli.js missing: run "make build" first');
else t.test('kill-9-mid-ingest: the repository stays consistent and served; after a restart the job finishes', async (t) => {
  const base = t.testdir();
  const repo = await makeRepo(base, FQRN);
  const s3 = await startS3(['layers']);
  t.teardown(() => s3.close());
  const tokenFile = path.join(base, 'token');
  fs.writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  const logs: string[] = [];
  const args = ['--repo', repo.dir, '--keys', repo.keys, '--name', FQRN, '--s3-endpoint', s3.endpoint, '--bucket', 'layers',
    '--token-file', tokenFile, '--port', '0', '--state', path.join(base, 'state'), '-v'];
  const LISTENING = /listening on (http:\/\/[^\s]+) /;

  const served = await startCli(t, REPO_CLI, ['serve', '--dir', repo.dir, '--port', '0'], {}, /serving \S+ at (http:\/\/\S+)/, logs);
  let pub = await startCli(t, PUBLISHER, args, s3.env, LISTENING, logs);

  // A first, small layer: the revision the client reads during the crash.
  const small = gzipSync(await tarOf([{ type: 'file', name: 'hello', content: 'still here\n' }]));
  const upSmall = await upload(s3.client, 'layers', sha256(small), small);
  await postEvent(pub.url, minioEvent('layers', [upSmall]), TOKEN);
  const s1 = await waitFor(pub.url, upSmall.key, TOKEN);
  t.equal(s1.state, 'done', s1.reason ?? '');
  const smallPath = `/.layers/${upSmall.key.slice(0, 2)}/${upSmall.key}/layerfs/hello`;
  const r = await client(served.url, FQRN, repo.keys, path.join(base, 'cache'));
  t.teardown(() => r.close());
  t.equal(r.revision, s1.revision, 'the client mounted revision ' + s1.revision);
  t.equal((await r.readFile(smallPath)).toString(), 'still here\n');

  // A large layer (tens of MB, incompressible): its ingest takes a while.
  const files = [randomBytes(16 << 20), randomBytes(16 << 20), randomBytes(8 << 20)];
  const bigTar = await tarOf(files.map((content, i) => ({ type: 'file' as const, name: `big/${i}.bin`, content })));
  const big = gzipSync(bigTar, { level: 1 });
  const upBig = await upload(s3.client, 'layers', sha256(big), big);
  await postEvent(pub.url, minioEvent('layers', [upBig]), TOKEN);
  await waitFor(pub.url, upBig.key, TOKEN, (s) => s.state === 'publishing', 30_000);
  // Into the ingest: objects of the layer are being staged.
  const txn = path.join(repo.dir, 'data', 'txn');
  const until = Date.now() + 30_000;
  while (fs.readdirSync(txn).filter((f) => f !== 'writer.lock').length === 0 && Date.now() < until) await new Promise((res) => setTimeout(res, 10));
  const mid = await statusJson(pub.url, upBig.key, TOKEN);
  t.equal(mid.state, 'publishing', 'still publishing when killed');
  t.ok(fs.existsSync(path.join(txn, 'writer.lock')), 'the writer lock is held');
  pub.child.kill('SIGKILL');
  await new Promise((res) => pub.child.once('exit', res));
  t.equal(pub.child.signalCode, 'SIGKILL');

  // Served throughout: the client keeps reading, a new client opens the same consistent revision.
  t.equal((await r.readFile(smallPath)).toString(), 'still here\n', 'the mounted client keeps reading');
  t.notOk(await r.refresh(), 'no new revision appeared');
  const fresh = await client(served.url, FQRN, repo.keys, path.join(base, 'cache2'));
  t.teardown(() => fresh.close());
  t.equal(fresh.revision, s1.revision, 'a new client verifies and opens revision ' + s1.revision);
  await t.rejects(fresh.stat(`/.layers/${upBig.key.slice(0, 2)}/${upBig.key}`), { code: 'CVMFS_PATH_NOT_FOUND' });
  const check = await repo.read();
  t.same(check.problems, [], 'the repository as the independent test reader sees it: signatures, hashes, counters');
  t.equal(check.revision, s1.revision);

  // Restart: the job resumes (the dead writer's lock is taken over) and finishes.
  pub = await startCli(t, PUBLISHER, args, s3.env, LISTENING, logs);
  const s2 = await waitFor(pub.url, upBig.key, TOKEN, undefined, 180_000);
  t.equal(s2.state, 'done', s2.reason ?? '');
  t.equal(s2.revision, s1.revision! + 1, 'one more revision');
  t.match(logs.join(''), /1 jobs were publishing when the publisher stopped: queued again/);
  t.ok(await r.refresh(), 'the mounted client switches to the new revision');
  for (const [i, content] of files.entries()) {
    t.ok((await r.readFile(`/.layers/${upBig.key.slice(0, 2)}/${upBig.key}/layerfs/big/${i}.bin`)).equals(content), `big/${i}.bin byte for byte`);
  }
  t.equal((await r.readFile(smallPath)).toString(), 'still here\n');
  t.same((await repo.read()).problems, []);
  pub.child.kill('SIGTERM');
  const code = await new Promise((res) => pub.child.once('exit', (c) => res(c)));
  t.equal(code, 0, 'SIGTERM stops the publisher cleanly');
});
