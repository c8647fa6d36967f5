import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import t from 'tap';
import { repositoryInfo, serveRepository, resign, whitelistExpired, loadState } from '../../../cvmfs/index.js';
import { CHUNK_MAX_BYTES } from '../../../cvmfs/writer/chunker.js';
import { MAX_BODY_BYTES_IN_FLIGHT } from '../../../cvmfs/writer/layer-reader.js';
import { makeRepo } from '../../lib/repo-fixture.js';
import { readRepository } from '../../lib/repo-reader.js';
import { tarOf, type TarSpec } from '../../lib/tar-of.js';

/** A random tree: files of many sizes (some chunked), hardlinks, symlinks, xattrs, devices, deep paths. */
function randomTree(seed: number): { specs: TarSpec[]; files: Map<string, Buffer> } {
  let s = seed;
  const rnd = (n: number) => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s % n; };
  const specs: TarSpec[] = [];
  const files = new Map<string, Buffer>();
  const dirs = ['d0'];
  specs.push({ type: 'directory', name: 'd0/', mode: 0o750, uid: 1000, gid: 1000 });
  let deep = 'deep';
  for (let i = 0; i < 40; i++) deep += `/level${i}`;
  specs.push({ type: 'file', name: `${deep}/bottom.txt`, content: 'at the bottom' });
  files.set(`${deep}/bottom.txt`, Buffer.from('at the bottom'));
  for (let i = 0; i < 60; i++) {
    if (rnd(5) === 0) { const d = `${dirs[rnd(dirs.length)]}/sub${i}`; dirs.push(d); specs.push({ type: 'directory', name: d, mode: 0o755 }); }
    const sizes = [0, 1, 100, 4096, 65_536, 300_000];
    const content = randomBytes(sizes[rnd(sizes.length)]!);
    const name = `${dirs[rnd(dirs.length)]}/file${i}`;
    specs.push({ type: 'file', name, content, mode: [0o644, 0o755, 0o600, 0o4755][rnd(4)]!, uid: rnd(3) * 1000, gid: rnd(2) * 100,
      mtime: new Date((1_600_000_000 + i) * 1000),
      ...(rnd(4) === 0 ? { pax: { 'SCHILY.xattr.user.note': `file ${i}`, 'SCHILY.xattr.security.capability': Buffer.from([1, 0, 0, 2, 0x20, 0, 0, 0, 0xff, 0x80, 0, 0]) } } : {}) });
    files.set(name, content);
  }
  const big = randomBytes(40 * 1024 * 1024 + 12345);
  specs.push({ type: 'file', name: 'd0/big.bin', content: big });
  files.set('d0/big.bin', big);
  const medium = Buffer.alloc(5 * 1024 * 1024, 7);
  specs.push({ type: 'file', name: 'd0/zeros5m.bin', content: medium });
  files.set('d0/zeros5m.bin', medium);
  specs.push({ type: 'file', name: 'd0/dup-of-big.bin', content: big });
  files.set('d0/dup-of-big.bin', big);
  specs.push({ type: 'link', name: 'd0/hard-a', target: 'd0/big.bin' });
  specs.push({ type: 'link', name: 'hard-b', target: 'd0/big.bin' });
  specs.push({ type: 'symlink', name: 'd0/rel-link', target: '../d0/file1' });
  specs.push({ type: 'symlink', name: 'abs-link', target: '/etc/passwd' });
  specs.push({ type: 'symlink', name: 'var-link', target: '$(CVMFS_ARCH:-amd64)/bin' });
  specs.push({ type: 'character-device', name: 'dev/null', major: 1, minor: 3, mode: 0o666 });
  specs.push({ type: 'block-device', name: 'dev/sda1', major: 8, minor: 1, mode: 0o660 });
  specs.push({ type: 'fifo', name: 'dev/fifo', mode: 0o600 });
  specs.push({ type: 'file', name: 'd0/.wh.deleted', content: '' });
  specs.push({ type: 'file', name: 'd0/.wh..wh..opq', content: '' });
  specs.push({ type: 'file', name: 'ünïcødé name.txt', content: 'utf-8' });
  files.set('ünïcødé name.txt', Buffer.from('utf-8'));
  return { specs, files };
}

t.test('consecutive 16 MiB chunks never wait on each other: a 40 MiB file of zeros is cut at the maximum, twice, under the in-flight budget', { timeout: 120_000 }, async (t) => {
  t.ok(MAX_BODY_BYTES_IN_FLIGHT < 2 * CHUNK_MAX_BYTES, 'the budget holds fewer than two maximal chunks');
  const repo = await makeRepo(path.join(t.testdir(), 'r'), 'zeros.example.org');
  const zeros = Buffer.alloc(40 * 1024 * 1024);
  const r = await repo.ingest('/z', await tarOf([{ type: 'file', name: 'zeros.bin', content: zeros }, { type: 'file', name: 'after', content: 'after' }]));
  t.equal(r.revision, 2);
  const read = await repo.read();
  t.same(read.problems, []);
  const e = read.entries.get('/z/zeros.bin')!;
  t.equal(e.chunks, 3, 'cut at 16 + 16 + 8 MiB');
  t.ok(e.content?.equals(zeros), 'read back byte for byte');
  t.equal(read.entries.get('/z/after')!.content!.toString(), 'after');
});

t.test('random trees round-trip byte for byte, with correct catalogs and counters (sha1 and shake128)', async (t) => {
  const dir = t.testdir();
  for (const algo of ['sha1', 'shake128'] as const) {
    const repo = await makeRepo(path.join(dir, algo), 'rt.example.org', algo);
    const { specs, files } = randomTree(algo === 'sha1' ? 1 : 2);
    const r = await repo.ingest('/layers/aa/one', gzipSync(await tarOf(specs), { level: 1 }));
    t.equal(r.revision, 2);
    const read = await repo.read();
    t.same(read.problems, [], `${algo}: reader finds no problem`);
    const base = '/layers/aa/one';
    for (const [name, content] of files) {
      const e = read.entries.get(`${base}/${name}`);
      t.ok(e?.content?.equals(content), `${algo}: ${name} (${content.length} bytes) matches`);
    }
    const bigE = read.entries.get(`${base}/d0/big.bin`)!;
    t.ok(bigE.chunks >= 3, `40 MiB file is chunked (${bigE.chunks} chunks)`);
    t.equal(read.entries.get(`${base}/d0/zeros5m.bin`)!.chunks, 0, 'a file that yields one chunk is stored whole');
    const ha = read.entries.get(`${base}/d0/hard-a`)!, hb = read.entries.get(`${base}/hard-b`)!;
    t.ok(bigE.hardlinkGroup > 0 && bigE.hardlinkGroup === ha.hardlinkGroup && ha.hardlinkGroup === hb.hardlinkGroup, 'one hardlink group');
    t.equal(bigE.linkcount, 3);
    t.equal(read.entries.get(`${base}/d0/dup-of-big.bin`)!.hardlinkGroup, 0, 'same content, not a hardlink');
    t.equal(read.entries.get(`${base}/var-link`)!.target, '$(CVMFS_ARCH:-amd64)/bin', 'symlink targets verbatim');
    t.equal(read.entries.get(`${base}/abs-link`)!.target, '/etc/passwd');
    const dev = read.entries.get(`${base}/dev/null`)!;
    t.equal(dev.mode, 0o020666);
    t.equal(dev.size, 0x103n, 'device number in size');
    t.equal(read.entries.get(`${base}/dev/fifo`)!.mode, 0o010600);
    t.equal(read.entries.get(`${base}/dev/sda1`)!.mode, 0o060660);
    t.ok(read.entries.has(`${base}/d0/.wh.deleted`) && read.entries.has(`${base}/d0/.wh..wh..opq`), 'whiteouts kept as AUFS files (as DUCC stores them)');
    t.equal(read.entries.get(`${base}/d0`)!.mode, 0o040750, 'directory mode');
    t.equal(read.entries.get(`${base}/d0`)!.uid, 1000, 'directory owner kept');
    t.equal(read.entries.get(`${base}/deep`)!.uid, 0, 'synthesised parents are 0:0 0755');
    t.equal(read.entries.get(`${base}/deep`)!.mode, 0o040755);
    t.ok(read.entries.has(`${base}/.cvmfscatalog`), 'nested catalog marker');
    const capFiles = [...read.entries.values()].filter((e) => e.xattrs['security.capability']);
    t.ok(capFiles.length > 0, 'some files carry xattrs');
    for (const e of capFiles) {
      t.equal(e.xattrs['security.capability'], '0100000220000000ff800000', `${e.path}: binary xattr byte-exact`);
      t.equal(Buffer.from(e.xattrs['user.note']!, 'hex').toString(), `file ${e.path.match(/file(\d+)$/)![1]}`);
    }
    for (const spec of specs) {
      if (spec.type !== 'file' || !spec.mode) continue;
      const e = read.entries.get(`${base}/${spec.name}`);
      if (e && files.get(spec.name)) t.equal(e.mode & 0o7777, spec.mode, `${spec.name}: mode`);
    }
    t.ok(read.catalogs.has(base), 'the layer is its own nested catalog');
    t.equal(read.catalogs.get('')!.subtree.regular, read.catalogs.get(base)!.self.regular, 'root subtree counters hold the layer');
  }
});

t.test('re-ingest replaces, nested layers stack, replacing a directory drops its nested catalogs; over HTTP', async (t) => {
  const repo = await makeRepo(t.testdir());
  const one = await tarOf([{ type: 'file', name: 'a', content: 'one' }, { type: 'file', name: 'only-in-one', content: 'x' }]);
  const two = await tarOf([{ type: 'file', name: 'a', content: 'two' }, { type: 'directory', name: 'sub' }]);
  await repo.ingest('/x/l1', one);
  await repo.ingest('/x/l2', one);
  await repo.ingest('/x/l1', two);
  await repo.ingest('/x/l1/sub/inner', one);
  let read = await repo.read();
  t.same(read.problems, []);
  t.equal(read.revision, 5);
  t.equal(read.entries.get('/x/l1/a')!.content!.toString(), 'two', 'replaced layer content');
  t.notOk(read.entries.has('/x/l1/only-in-one'), 'old content gone');
  t.equal(read.entries.get('/x/l1/sub/inner/a')!.content!.toString(), 'one', 'catalog nested inside a layer catalog');
  t.equal(read.catalogs.size, 4);
  await repo.ingest('/x', two);
  read = await repo.read();
  t.same(read.problems, [], 'counters stay exact after dropping three nested catalogs');
  t.equal(read.catalogs.size, 2);
  t.notOk(read.entries.has('/x/l2/a'));

  const srv = await serveRepository({ dir: repo.dir, fqrn: repo.fqrn });
  t.teardown(() => srv.close());
  const httpRead = await readRepository(async (rel) => {
    const res = await fetch(`${srv.url}/${rel}`);
    if (!res.ok) throw new Error(`${rel}: HTTP ${res.status}`);
    return Buffer.from(await res.arrayBuffer());
  }, repo.fqrn, fs.readFileSync(path.join(repo.keys, `${repo.fqrn}.pub`), 'utf8'));
  t.same(httpRead.problems, []);
  t.equal(httpRead.entries.get('/x/a')!.content!.toString(), 'two', 'served over HTTP');
  const m = await fetch(`${srv.url}/.cvmfspublished`);
  t.equal(m.headers.get('cache-control'), 'public, max-age=61');
  t.equal(m.headers.get('last-modified'), null);
  t.equal(m.headers.get('etag'), null);
  const obj = [...fs.readdirSync(path.join(repo.dir, 'data/e8'))][0]!;
  t.match((await fetch(`${srv.url}/data/e8/${obj}`)).headers.get('cache-control'), /max-age=259200/);
  t.equal((await fetch(`${srv.url}/data/txn/writer.lock`)).status, 404, 'staging area never served');
  t.equal((await fetch(`${srv.url}/../keys/x`)).status, 404);
});

t.test('GNU tar of a real directory (long names, hardlinks, gzip), and info/resign', async (t) => {
  const base = t.testdir();
  const src = path.join(base, 'src');
  const long = 'n'.repeat(200);
  fs.mkdirSync(path.join(src, long, long), { recursive: true });
  fs.writeFileSync(path.join(src, long, long, 'f'), 'deep long');
  fs.writeFileSync(path.join(src, 'h1'), 'linked');
  fs.linkSync(path.join(src, 'h1'), path.join(src, 'h2'));
  fs.symlinkSync('h1', path.join(src, 's'));
  const tgz = execFileSync('tar', ['-C', src, '-czf', '-', '.'], { maxBuffer: 1 << 26 });
  const repo = await makeRepo(path.join(base, 'r'));
  await repo.ingest('/gnu', tgz);
  const read = await repo.read();
  t.same(read.problems, []);
  t.equal(read.entries.get(`/gnu/${long}/${long}/f`)!.content!.toString(), 'deep long');
  t.equal(read.entries.get('/gnu/h2')!.content!.toString(), 'linked');
  t.equal(read.entries.get('/gnu/h1')!.linkcount, 2);
  t.equal(read.entries.get('/gnu/s')!.target, 'h1');

  const info = await repositoryInfo(repo.storage);
  t.equal(info.revision, 2);
  t.equal(info.catalogs, 2);
  t.equal(info.totals.regular, 4n, 'h1, h2, f, .cvmfscatalog');
  t.ok(info.objects >= 5);
  const later = { now: () => new Date(Date.now() + 40 * 86_400_000) };
  t.ok(whitelistExpired((await loadState(repo.storage)).whitelist, later.now()), 'expired after 40 days');
  const exp = await resign({ storage: repo.storage, keysDir: repo.keys, clock: later });
  t.ok(exp.getTime() > later.now().getTime() + 29 * 86_400_000, 'resigned for 30 more days');
  t.notOk(whitelistExpired((await loadState(repo.storage)).whitelist, later.now()));
  t.same((await repo.read()).problems, [], 'new whitelist verifies with the master key');
});
