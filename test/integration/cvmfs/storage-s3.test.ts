/**
 * A repository kept in an S3 bucket (s3rver, in-process): written through the API and the CLI,
 * read back over the bucket's plain HTTP endpoint by our client and by the independent
 * repo-reader; the manifest is the last thing written; a failure leaves the previous revision; the
 * writer lock keeps out a second writer on this host and on another one.
 */
import { execFile, spawnSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { promisify } from 'node:util';
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import t, { type Test } from 'tap';
import {
  CvmfsError, ingest, initRepository, MANIFEST_FILE, openRepository, repositoryInfo, resign,
  type ObjectStats, type RepositoryStorage, type WriterLock,
} from '../../../cvmfs/index.js';
import { S3_LOCK_OBJECT, S3Storage } from '../../../cvmfs/writer/storage-s3.js';
import { readRepository, type Fetch } from '../../lib/repo-reader.js';
import { S3RVER_CREDENTIALS, startS3, type S3Server } from '../../lib/s3.js';
import { tarOf, type TarSpec } from '../../lib/tar-of.js';

const run = promisify(execFile);
const CLI = path.resolve('dist/cvmfs/cli.js');
const FQRN = 's3.example.org';

function httpFetch(base: string, seen?: Set<string>): Fetch {
  return async (rel) => {
    seen?.add(rel);
    const r = await fetch(`${base}/${rel}`);
    if (r.status !== 200) throw new Error(`GET ${rel}: HTTP ${r.status}`);
    return Buffer.from(await r.arrayBuffer());
  };
}

async function listKeys(s3: S3Server, bucket: string, prefix: string): Promise<Set<string>> {
  const keys = new Set<string>();
  let token: string | undefined;
  do {
    const page = await s3.client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
    for (const o of page.Contents ?? []) keys.add(o.Key!);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return keys;
}

async function getText(s3: S3Server, bucket: string, key: string): Promise<string | undefined> {
  try {
    const r = await s3.client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return await r.Body!.transformToString();
  } catch { return undefined; }
}

interface Setup {
  readonly s3: S3Server;
  readonly base: string;
  readonly keys: string;
  readonly lockDir: string;
  storage(o?: Partial<ConstructorParameters<typeof S3Storage>[0]>): S3Storage;
  readonly httpBase: string;
  pub(): string;
}

async function setup(t: Test, bucket = 'repo', prefix = `cvmfs/${FQRN}`): Promise<Setup> {
  const s3 = await startS3([bucket]);
  t.teardown(() => s3.close());
  const base = t.testdir();
  const keys = path.join(base, 'keys');
  const lockDir = path.join(base, 'locks');
  const storage = (o: Partial<ConstructorParameters<typeof S3Storage>[0]> = {}): S3Storage => {
    const st = new S3Storage({ bucket, prefix, endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS, lockDir, ...o });
    t.teardown(() => st.close());
    return st;
  };
  return { s3, base, keys, lockDir, storage, httpBase: s3.url(bucket, prefix), pub: () => fs.readFileSync(path.join(keys, `${FQRN}.pub`), 'utf8') };
}

const files = (n: number, tag: string): TarSpec[] =>
  Array.from({ length: n }, (_, i) => ({ type: 'file' as const, name: `d${i % 10}/f${i}`, content: `${tag} ${i} ${'x'.repeat(i % 300)}` }));

t.test('a repository in S3 through the API: several revisions, chunked file, nested catalogs, read back over HTTP byte for byte', async (t) => {
  const s = await setup(t);
  // Objects above 5 MiB go multipart here (the minimum), so the 4–16 MiB chunks of big.bin take both paths.
  const storage = s.storage({ multipartBytes: 5 * 1024 * 1024 });
  const commands: string[] = [];
  storage.client.middlewareStack.add((next, context) => async (args) => { commands.push(context.commandName ?? '?'); return next(args); },
    { step: 'initialize', name: 'recordCommands' });
  await initRepository({ storage, keysDir: s.keys, fqrn: FQRN });
  // Seeded, so that the chunk boundaries are the same each run: at least one chunk is above 5 MiB.
  const big = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16)).update(Buffer.alloc(20 * 1024 * 1024));
  const revs: { at: string; specs: TarSpec[] }[] = [
    { at: '/layers/a', specs: [{ type: 'file', name: 'hello', content: 'hi\n' }, { type: 'directory', name: 'sub' },
      { type: 'file', name: 'sub/x', content: 'x'.repeat(10_000), mode: 0o755 }, { type: 'symlink', name: 'ln', target: 'hello' }] },
    { at: '/layers/b', specs: [{ type: 'file', name: 'big.bin', content: big }, { type: 'file', name: 'small', content: 'small' }] },
    { at: '/layers/a/inner', specs: [{ type: 'file', name: 'deep', content: 'nested twice' }] },
    { at: '/layers/c', specs: files(100, 'c') },
  ];
  let revision = 1;
  for (const r of revs) {
    const res = await ingest({ storage, keysDir: s.keys, path: r.at, input: Readable.from([await tarOf(r.specs)]) });
    t.equal(res.revision, ++revision, `${r.at}: revision ${revision}`);
  }
  t.notOk(await getText(s.s3, 'repo', `cvmfs/${FQRN}/${S3_LOCK_OBJECT}`), 'the lock object is gone after each write');

  // The independent reader, over the bucket's anonymous HTTP endpoint.
  const read = await readRepository(httpFetch(s.httpBase), FQRN, s.pub());
  t.same(read.problems, [], 'repo-reader finds no problem');
  t.equal(read.revision, 5);
  t.equal(read.entries.get('/layers/a/hello')!.content!.toString(), 'hi\n');
  t.equal(read.entries.get('/layers/a/inner/deep')!.content!.toString(), 'nested twice');
  t.ok(read.entries.get('/layers/b/big.bin')!.content!.equals(big), 'chunked file byte for byte');
  t.ok(read.entries.get('/layers/b/big.bin')!.chunks > 1, 'big.bin is chunked');
  t.same([...read.catalogs.keys()].sort(), ['', '/layers/a', '/layers/a/inner', '/layers/b', '/layers/c'], 'nested catalogs');

  // Our client, with the bucket URL as its stratum 0.
  const repo = await openRepository({ fqrn: FQRN, servers: [s.httpBase], cacheDir: path.join(s.base, 'cache'),
    publicKeys: [{ name: 'pub', pem: s.pub() }] });
  t.teardown(() => repo.close());
  t.equal(repo.revision, 5);
  t.ok((await repo.readFile('/layers/b/big.bin')).equals(big), 'client reads the chunked file byte for byte');
  t.equal((await repo.readFile('/layers/a/sub/x')).toString(), 'x'.repeat(10_000));
  t.equal(await repo.readlink('/layers/a/ln'), 'hello');
  for (let i = 0; i < 100; i += 17) t.equal((await repo.readFile(`/layers/c/d${i % 10}/f${i}`)).toString(), `c ${i} ${'x'.repeat(i % 300)}`);

  // Served as `cvmfs-repo serve` serves: letters 61 s, objects 3 days, objects as octet-stream.
  const m = await fetch(`${s.httpBase}/${MANIFEST_FILE}`);
  t.equal(m.headers.get('cache-control'), 'public, max-age=61');
  t.equal(m.headers.get('content-type'), 'application/x-cvmfs');
  const keys = await listKeys(s.s3, 'repo', `cvmfs/${FQRN}/data/`);
  const anObject = [...keys][0]!;
  const o = await fetch(s.s3.url('repo', anObject));
  t.equal(o.headers.get('cache-control'), 'public, max-age=259200');
  t.equal(o.headers.get('content-type'), 'application/octet-stream');
  t.ok(commands.includes('CreateMultipartUploadCommand') && commands.includes('CompleteMultipartUploadCommand'), 'chunks above 5 MiB went up as multipart uploads');
  t.ok(commands.filter((c) => c === 'HeadObjectCommand').length >= commands.filter((c) => c === 'PutObjectCommand').length - 10, 'objects are looked up before they are put');

  const info = await repositoryInfo(storage);
  t.equal(info.revision, 5);
  t.equal(info.catalogs, 5);
  t.equal(info.objects, keys.size, 'objectStats counts every data/ key (paginated listing)');
  t.ok(info.objectBytes > big.length, 'and their bytes');

  const exp = await resign({ storage, keysDir: s.keys, days: 10 });
  t.ok(exp.getTime() > Date.now() + 9 * 86_400_000, 'resign through S3');
  t.same((await readRepository(httpFetch(s.httpBase), FQRN, s.pub())).problems, [], 'still verifies after resign');
  const again = await ingest({ storage, keysDir: s.keys, path: '/layers/b', input: Readable.from([await tarOf(revs[1]!.specs)]) });
  t.equal(again.objects.written, 2, 'the same content again: only the new catalog and the root catalog are written (dedup over HeadObject)');
  t.ok(again.objects.present >= 3, 'the chunks are found present');
});

/** Records the order of storage operations and what the bucket held when the manifest was written. */
class Recording implements RepositoryStorage {
  readonly location: string;
  inFlight = 0;
  written = 0;
  /** Called after each object written. */
  onWritten: (n: number) => void = () => {};
  readonly problems: string[] = [];
  /** data/ keys present at the moment each manifest was about to be written. */
  readonly snapshots: Set<string>[] = [];
  constructor(private readonly inner: S3Storage, private readonly s3: S3Server) { this.location = inner.location; }
  init(): Promise<void> { return this.inner.init(); }
  get(name: string): Promise<Buffer | undefined> { return this.inner.get(name); }
  async putObject(p: string, data: Uint8Array): Promise<'written' | 'present'> {
    this.inFlight++;
    try {
      const r = await this.inner.putObject(p, data);
      if (r === 'written') this.onWritten(++this.written);
      return r;
    } finally { this.inFlight--; }
  }
  flush(): Promise<void> { return this.inner.flush(); }
  async putLetter(name: string, data: Uint8Array): Promise<void> {
    if (name === MANIFEST_FILE) {
      if (this.inFlight !== 0) this.problems.push(`${this.inFlight} object uploads still in flight when the manifest was written`);
      this.snapshots.push(await listKeys(this.s3, this.inner.bucket, `${this.inner.prefix}/data/`));
    }
    await this.inner.putLetter(name, data);
  }
  lock(owner: string): Promise<WriterLock> { return this.inner.lock(owner); }
  sweepStaging(): Promise<void> { return this.inner.sweepStaging(); }
  objectStats(): Promise<ObjectStats> { return this.inner.objectStats(); }
}

t.test('the manifest is written last: no manifest ever names an object the bucket lacks', async (t) => {
  const s = await setup(t);
  const storage = new Recording(s.storage(), s.s3);
  await initRepository({ storage, keysDir: s.keys, fqrn: FQRN });

  // A reader polling the bucket's HTTP endpoint the whole time, checking every manifest it sees in full.
  let done = false;
  const seen = new Map<string, string[]>();
  // s3rver (unlike S3) rewrites an object in place, so a read racing the manifest's PUT can see
  // it torn or get a 500: such samples, and those the manifest changed under, are not judged.
  const manifestNow = async (): Promise<string | undefined> => {
    const r = await fetch(`${s.httpBase}/${MANIFEST_FILE}`);
    const body = Buffer.from(await r.arrayBuffer()).toString('latin1');
    return r.status === 200 ? body : undefined;
  };
  const poller = (async () => {
    while (!done) {
      const raw = await manifestNow();
      if (raw !== undefined && !seen.has(raw)) {
        let problems: string[];
        try {
          problems = (await readRepository(httpFetch(s.httpBase), FQRN, s.pub())).problems;
        } catch (err) { problems = [(err as Error).message]; }
        if (problems.length === 0 || (await manifestNow()) === raw) seen.set(raw, problems);
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  try {
    for (const [i, at] of ['/layers/a', '/layers/b', '/layers/a/nested'].entries()) {
      await ingest({ storage, keysDir: s.keys, path: at, input: Readable.from([await tarOf(files(150, `rev${i}`))]) });
    }
  } finally {
    done = true;
    await poller;
  }
  t.same(storage.problems, [], 'no upload in flight when a manifest was written');
  t.equal(storage.snapshots.length, 4, 'init and three ingests wrote one manifest each');
  // Every object the final revision references was in the bucket before its manifest was written.
  const referenced = new Set<string>();
  const final = await readRepository(httpFetch(s.httpBase, referenced), FQRN, s.pub());
  t.same(final.problems, []);
  const before = storage.snapshots.at(-1)!;
  const missing = [...referenced].filter((rel) => rel.startsWith('data/') && !before.has(`cvmfs/${FQRN}/${rel}`));
  t.same(missing, [], `all ${referenced.size} objects of the last revision were stored before its manifest`);
  t.ok(seen.size >= 2, `the poller saw ${seen.size} manifests`);
  for (const [, problems] of seen) t.same(problems, [], 'each manifest seen by the poller was complete when seen');
});

t.test('a failure in the middle leaves the previous revision served', async (t) => {
  const s = await setup(t);
  const storage = new Recording(s.storage(), s.s3);
  await initRepository({ storage, keysDir: s.keys, fqrn: FQRN });
  await ingest({ storage, keysDir: s.keys, path: '/layers/ok', input: Readable.from([await tarOf([{ type: 'file', name: 'keep', content: 'kept' }])]) });
  const manifestBefore = Buffer.from(await (await fetch(`${s.httpBase}/${MANIFEST_FILE}`)).arrayBuffer());
  const objectsBefore = (await storage.objectStats()).count;

  // A tar of many files that breaks off halfway (a connection reset while streaming).
  const tar = await tarOf(files(200, 'half'));
  const input = new Readable({ read() {} });
  input.push(tar.subarray(0, tar.length / 2));
  const base = storage.written;
  storage.onWritten = (n) => { if (n === base + 20) input.destroy(Object.assign(new Error('connection reset by peer'), { code: 'ECONNRESET' })); };
  const err = await ingest({ storage, keysDir: s.keys, path: '/layers/bad', input }).then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof Error, 'the ingest fails');
  t.ok((await storage.objectStats()).count > objectsBefore, 'objects of the broken tar had been uploaded');
  const manifestAfter = Buffer.from(await (await fetch(`${s.httpBase}/${MANIFEST_FILE}`)).arrayBuffer());
  t.ok(manifestAfter.equals(manifestBefore), 'the manifest is unchanged');
  const read = await readRepository(httpFetch(s.httpBase), FQRN, s.pub());
  t.same(read.problems, []);
  t.equal(read.revision, 2, 'still revision 2');
  t.equal(read.entries.get('/layers/ok/keep')!.content!.toString(), 'kept');
  t.notOk(read.entries.has('/layers/bad'));
  t.notOk(await getText(s.s3, 'repo', `cvmfs/${FQRN}/${S3_LOCK_OBJECT}`), 'the lock object was released');
  const next = await ingest({ storage, keysDir: s.keys, path: '/layers/bad', input: Readable.from([await tarOf(files(10, 'fixed'))]) });
  t.equal(next.revision, 3, 'the next writer carries on');
});

t.test('the writer lock: a second writer on this host or another gets CVMFS_REPO_LOCKED', async (t) => {
  const s = await setup(t);
  const a = s.storage();
  await initRepository({ storage: a, keysDir: s.keys, fqrn: FQRN });
  const lockKey = `cvmfs/${FQRN}/${S3_LOCK_OBJECT}`;

  const lockA = await a.lock('writer A');
  const held = JSON.parse((await getText(s.s3, 'repo', lockKey))!) as { host: string; pid: number; nonce: string; owner: string };
  t.match(held, { host: os.hostname(), pid: process.pid, owner: 'writer A' }, 'the lock object names host, pid and owner');
  t.match(held.nonce, /^[0-9a-f]{32}$/);
  await lockA.verify();
  // Same host, same state directory: the local lock file.
  await t.rejects(s.storage().lock('writer B'), { code: 'CVMFS_REPO_LOCKED', message: /being written by another process \(pid \d+: writer A\)/ });
  // Another host (its own state directory): the lock object in the bucket.
  const elsewhere = s.storage({ lockDir: path.join(s.base, 'other-host-locks'), hostname: 'other-host' });
  await t.rejects(elsewhere.lock('writer C'), { code: 'CVMFS_REPO_LOCKED', message: new RegExp(`host ${os.hostname()} pid ${process.pid}: writer A.*delete s3://repo/${lockKey}`) });
  await t.rejects(ingest({ storage: elsewhere, keysDir: s.keys, path: '/x', input: Readable.from([await tarOf(files(1, 'x'))]) }), { code: 'CVMFS_REPO_LOCKED' });
  await lockA.release();
  await lockA.release();
  t.notOk(await getText(s.s3, 'repo', lockKey), 'released');
  const lockC = await elsewhere.lock('writer C');
  await t.rejects(a.lock('writer A again'), { code: 'CVMFS_REPO_LOCKED', message: /host other-host pid \d+: writer C/ }, 'and the other way round');
  await lockC.release();

  // A lock object whose writer (this host, dead pid) is gone is taken over.
  const dead = spawnSync(process.execPath, ['-e', '']).pid!;
  await s.s3.client.send(new PutObjectCommand({ Bucket: 'repo', Key: lockKey,
    Body: JSON.stringify({ host: os.hostname(), pid: dead, nonce: 'f'.repeat(32), owner: 'crashed', since: new Date().toISOString() }) }));
  const r = await ingest({ storage: a, keysDir: s.keys, path: '/after-crash', input: Readable.from([await tarOf(files(3, 'y'))]) });
  t.equal(r.revision, 2, 'a dead writer\'s lock of this host is taken over');
  // One of another host cannot be judged: it stays until removed by hand.
  await s.s3.client.send(new PutObjectCommand({ Bucket: 'repo', Key: lockKey,
    Body: JSON.stringify({ host: 'far-away', pid: dead, nonce: 'e'.repeat(32), owner: 'remote', since: new Date().toISOString() }) }));
  await t.rejects(a.lock('x'), { code: 'CVMFS_REPO_LOCKED', message: /host far-away pid \d+: remote/ });
  await s.s3.client.send(new DeleteObjectCommand({ Bucket: 'repo', Key: lockKey }));

  // The lock object replaced by another host mid-ingest: the writer does not publish, and leaves that lock alone.
  const before = await getText(s.s3, 'repo', `cvmfs/${FQRN}/${MANIFEST_FILE}`);
  const input = new PassThrough();
  const tar = await tarOf(files(50, 'z'));
  input.write(tar.subarray(0, 4096));
  const objects = (await a.objectStats()).count;
  const pending = ingest({ storage: a, keysDir: s.keys, path: '/stolen', input });
  pending.catch(() => {});
  // Once objects of this tar arrive, the writer holds the lock.
  while ((await a.objectStats()).count === objects) await new Promise((resolve) => setTimeout(resolve, 10));
  const thief = JSON.stringify({ host: 'thief-host', pid: 1, nonce: 'd'.repeat(32), owner: 'thief', since: new Date().toISOString() });
  await s.s3.client.send(new PutObjectCommand({ Bucket: 'repo', Key: lockKey, Body: thief }));
  input.end(tar.subarray(4096));
  await t.rejects(pending, { code: 'CVMFS_REPO_LOCKED', message: /lock object .* is no longer held by this writer \(now host thief-host pid 1: thief/ });
  t.equal(await getText(s.s3, 'repo', `cvmfs/${FQRN}/${MANIFEST_FILE}`), before, 'not published');
  t.equal(await getText(s.s3, 'repo', lockKey), thief, 'the other writer\'s lock is not removed');
  await s.s3.client.send(new DeleteObjectCommand({ Bucket: 'repo', Key: lockKey }));
  t.equal((await ingest({ storage: a, keysDir: s.keys, path: '/stolen', input: Readable.from([tar]) })).revision, 3);
});

t.test('a missing bucket, an unreachable or silent endpoint: coded errors naming bucket and endpoint', async (t) => {
  const s = await setup(t);
  const nope = s.storage({ bucket: 'no-such-bucket' });
  await t.rejects(initRepository({ storage: nope, keysDir: s.keys, fqrn: FQRN }),
    { code: 'CVMFS_STORAGE_FAILED', message: new RegExp(`the bucket no-such-bucket does not exist at ${s.s3.endpoint}`) });
  t.notOk(fs.existsSync(s.keys), 'nothing created (keys) for a store that is not there');
  await t.rejects(repositoryInfo(nope), { code: 'CVMFS_STORAGE_FAILED', message: /s3:\/\/no-such-bucket\/cvmfs\/s3\.example\.org\/\.cvmfspublished .*NoSuchBucket/ });
  await t.rejects(repositoryInfo(s.storage()), { code: 'CVMFS_REPO_NOT_FOUND' }, 'an empty prefix is no repository');

  const closed = await new Promise<number>((resolve) => { const srv = net.createServer().listen(0, '127.0.0.1', () => {
    const port = (srv.address() as net.AddressInfo).port; srv.close(() => resolve(port)); }); });
  const refused = s.storage({ endpoint: `http://127.0.0.1:${closed}`, maxAttempts: 2 });
  await t.rejects(refused.get(MANIFEST_FILE), { code: 'CVMFS_STORAGE_FAILED', message: new RegExp(`127\\.0\\.0\\.1:${closed}: ECONNREFUSED`) });

  const sockets = new Set<net.Socket>();
  const silent = net.createServer((c) => { sockets.add(c); c.on('error', () => {}); });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.teardown(() => { for (const c of sockets) c.destroy(); silent.close(); });
  const port = (silent.address() as net.AddressInfo).port;
  const slow = s.storage({ endpoint: `http://127.0.0.1:${port}`, timeoutMs: 400, maxAttempts: 1 });
  const t0 = Date.now();
  await t.rejects(slow.putObject('data/00/abc', Buffer.from('x')), { code: 'CVMFS_STORAGE_FAILED', message: /data\/00\/abc .*Timeout: no answer within 0 s|Timeout/ });
  t.ok(Date.now() - t0 < 5000, 'the timeout holds');
  await t.rejects(slow.get('../escape'), { code: 'CVMFS_BAD_ARGUMENT' });
  t.ok(new CvmfsError('CVMFS_STORAGE_FAILED', 'x').kind === 'unavailable');
});

async function cli(args: string[], env: NodeJS.ProcessEnv, input?: Buffer): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = run(process.execPath, [CLI, ...args], { env, maxBuffer: 16 * 1024 * 1024 });
  if (input) p.child.stdin!.end(input); else p.child.stdin?.end();
  try {
    const { stdout, stderr } = await p;
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

t.test('cvmfs-repo init/ingest/info/resign --store s3://bucket/prefix, read with ls/cat from the bucket URL', async (t) => {
  if (!fs.existsSync(CLI)) { t.fail('dist/cvmfs/cli.js missing: run "make build" first'); return; }
  const s = await setup(t, 'clibucket', 'cli');
  await s.s3.createBucket('rootbucket');
  const env = { ...process.env, ...s.s3.env, XDG_STATE_HOME: path.join(s.base, 'state'), AWS_ENDPOINT_URL_S3: '', AWS_ENDPOINT_URL: '' };
  const store = ['--store', 's3://clibucket/cli/', '--s3-endpoint', s.s3.endpoint];
  let r = await cli(['init', ...store, '--keys', s.keys, '--name', FQRN], env);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, new RegExp(`created ${FQRN} at s3://clibucket/cli at ${s.s3.endpoint} \\(revision 1, sha1\\)`));
  const big = randomBytes(6 * 1024 * 1024);
  const tarFile = path.join(s.base, 'l.tar');
  fs.writeFileSync(tarFile, await tarOf([{ type: 'file', name: 'big', content: big }, { type: 'file', name: 'hello', content: 'hi' }]));
  r = await cli(['ingest', ...store, '--keys', s.keys, '--path', '/layers/a', tarFile], env);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /revision 2: \/layers\/a ← 2 entries/);
  r = await cli(['ingest', ...store, '--keys', s.keys, '--path', '/layers/a/b'], env, await tarOf([{ type: 'file', name: 'x', content: 'stdin' }]));
  t.equal(r.code, 0, r.stderr);
  r = await cli(['info', ...store], env);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /revision\s+3/);
  t.match(r.stdout, /catalogs\s+3/);
  r = await cli(['info', ...store, '--json'], env);
  t.equal(JSON.parse(r.stdout).totals.regular, 5, "3 files and 2 .cvmfscatalog markers");
  r = await cli(['resign', ...store, '--keys', s.keys, '--days', '7'], env);
  t.equal(r.code, 0, r.stderr);

  const client = ['--url', s.s3.url('clibucket', 'cli'), '--name', FQRN, '--pubkey', path.join(s.keys, `${FQRN}.pub`), '--cache', path.join(s.base, 'cache')];
  r = await cli(['ls', ...client, '/layers/a'], env);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /-0644\s+0\s+0\s+2 hello/);
  const cat = await run(process.execPath, [CLI, 'cat', ...client, '/layers/a/big'], { env, encoding: 'buffer', maxBuffer: 16 * 1024 * 1024 });
  t.ok(cat.stdout.equals(big), 'cat of the chunked file from the bucket, byte for byte');
  r = await cli(['cat', ...client, '/layers/a/b/x'], env);
  t.equal(r.stdout, 'stdin');
  t.same((await readRepository(httpFetch(s.s3.url('clibucket', 'cli')), FQRN, s.pub())).problems, []);

  // The bucket's root as the repository (no prefix); the endpoint from the environment.
  const rootKeys = path.join(s.base, 'rootkeys');
  r = await cli(['init', '--store', 's3://rootbucket', '--keys', rootKeys, '--name', 'root.example.org'], { ...env, AWS_ENDPOINT_URL_S3: s.s3.endpoint });
  t.equal(r.code, 0, r.stderr);
  t.equal((await fetch(s.s3.url('rootbucket', MANIFEST_FILE))).status, 200, 'manifest at the bucket root');

  // Errors: a held lock, a missing bucket, usage.
  await s.s3.client.send(new PutObjectCommand({ Bucket: 'clibucket', Key: `cli/${S3_LOCK_OBJECT}`,
    Body: JSON.stringify({ host: 'elsewhere', pid: 42, nonce: 'a'.repeat(32), owner: 'cvmfs-repo ingest /x', since: 'now' }) }));
  r = await cli(['ingest', ...store, '--keys', s.keys, '--path', '/layers/z', tarFile], env);
  t.equal(r.code, 1);
  t.match(r.stderr, /CVMFS_REPO_LOCKED: repository s3:\/\/clibucket\/cli .*host elsewhere pid 42/);
  r = await cli(['init', '--store', 's3://missing-bucket/x', '--s3-endpoint', s.s3.endpoint, '--keys', path.join(s.base, 'k2'), '--name', FQRN], env);
  t.equal(r.code, 1);
  t.match(r.stderr, new RegExp(`CVMFS_STORAGE_FAILED: the bucket missing-bucket does not exist at ${s.s3.endpoint}`));
  for (const [args, msg] of [
    [['info', '--dir', s.base, '--store', 's3://clibucket/cli'], /not both/],
    [['info'], /missing --dir \(or --store\)/],
    [['info', '--dir', s.base, '--s3-endpoint', s.s3.endpoint], /go with --store s3/],
    [['info', '--store', 's3://'], /names no bucket/],
    [['info', '--store', 's3://b/x', '--s3-endpoint', 'ftp://x'], /not an http\(s\) URL/],
    [['serve', '--store', 's3://clibucket/cli'], /serve serves a local directory/],
  ] as const) {
    r = await cli([...args], env);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.stderr, msg);
  }
  r = await cli(['--help'], env);
  t.match(r.stdout, /--store S/);
});
