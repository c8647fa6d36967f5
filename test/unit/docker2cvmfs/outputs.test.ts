import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import t, { type Test } from 'tap';
import { verifiedLayer } from '../../../docker2cvmfs/layer-stream.js';
import { chainIds, writeDockerArchive } from '../../../docker2cvmfs/outputs/archive.js';
import { loadIntoDocker, parseDockerHost, parseLoadAnswer } from '../../../docker2cvmfs/outputs/docker-load.js';
import { openDockerArchive } from '../../../docker2cvmfs/sources/docker-archive.js';
import { tarOf } from '../../lib/tar-of.js';

const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function image(files: string[], tags: string[]) {
  const layers = await Promise.all(files.map((f) => tarOf([{ type: 'file', name: f, content: `${f}\n` }])));
  const config = Buffer.from(JSON.stringify({ os: 'linux', architecture: 'amd64', config: { Entrypoint: ['/x'] }, rootfs: { type: 'layers', diff_ids: layers.map(sha) } }));
  return { repoTags: tags, config, layers: layers.map((l) => ({ diffId: sha(l), tar: l })), raw: layers };
}

async function collect(r: Readable): Promise<Buffer> { const p: Buffer[] = []; for await (const c of r) p.push(c as Buffer); return Buffer.concat(p); }

t.test('writeDockerArchive → openDockerArchive round trip (path: temp file, renamed)', async (t) => {
  const dir = t.testdir();
  const a = await image(['a', 'b', 'a'], ['one:1']);
  const b = await image(['a', 'c'], ['two:2', 'two:latest']);
  const file = path.join(dir, 'out.tar');
  await writeDockerArchive(file, [
    { ...a, layers: [a.layers[0]!, { diffId: a.layers[1]!.diffId, tar: () => Readable.from([a.raw[1]!]) }, { ...a.layers[2]!, tar: () => Readable.from([a.raw[2]!]), size: a.raw[2]!.length }] },
    b,
  ]);
  t.same(fs.readdirSync(dir), ['out.tar'], 'no temp file left');
  for (const [img, ref] of [[a, 'one:1'], [b, 'two:latest']] as const) {
    const r = await openDockerArchive(file, { ref });
    t.ok(r.configBytes.equals(img.config), `${ref}: config bytes kept`);
    t.equal(r.manifest.layers.length, img.raw.length);
    for (const [i, d] of r.manifest.layers.entries()) {
      const v = verifiedLayer(await r.source.openBlob(d), d, r.config.rootfs.diff_ids[i]!);
      t.ok((await collect(v.tar)).equals(img.raw[i]!), `${ref}: layer ${i + 1} verified`);
      await v.done;
    }
  }
  t.equal(chainIds(a.layers.map((l) => l.diffId))[0], a.layers[0]!.diffId);
  t.not(chainIds(a.layers.map((l) => l.diffId))[2], a.layers[0]!.diffId, 'repeated diffID, distinct chain id');
});

t.test('writeDockerArchive is deterministic and writes to a stream', async (t) => {
  const a = await image(['a'], ['x:1']);
  const one = new PassThrough(); const two = new PassThrough();
  const [b1, b2] = await Promise.all([collect(one), collect(two), writeDockerArchive(one, [a]), writeDockerArchive(two, [a])]);
  t.ok((b1 as Buffer).equals(b2 as Buffer));
});

t.test('writeDockerArchive refuses layers that do not match the config, leaving nothing behind', async (t) => {
  const dir = t.testdir();
  const a = await image(['a', 'b'], ['x:1']);
  const other = await tarOf([{ type: 'file', name: 'z', content: 'z' }]);
  await t.rejects(writeDockerArchive(path.join(dir, 'f.tar'), [{ ...a, layers: [a.layers[0]!] }]), { code: 'D2C_BAD_IMAGE', message: /2 diff_ids, 1 layers/ });
  await t.rejects(writeDockerArchive(path.join(dir, 'f.tar'), [{ ...a, layers: [a.layers[1]!, a.layers[0]!] }]), { code: 'D2C_DIFFID_MISMATCH' });
  await t.rejects(writeDockerArchive(path.join(dir, 'f.tar'), [{ ...a, layers: [a.layers[0]!, { diffId: a.layers[1]!.diffId, tar: other }] }]), { code: 'D2C_DIFFID_MISMATCH' }, 'buffer');
  await t.rejects(writeDockerArchive(path.join(dir, 'f.tar'), [{ ...a, layers: [a.layers[0]!, { diffId: a.layers[1]!.diffId, tar: () => Readable.from([other]) }] }]),
    { code: 'D2C_DIFFID_MISMATCH' }, 'spooled stream');
  await t.rejects(writeDockerArchive(path.join(dir, 'f.tar'), [{ ...a, layers: [a.layers[0]!, { diffId: a.layers[1]!.diffId, tar: () => Readable.from([other]), size: other.length }] }]),
    { code: 'D2C_DIFFID_MISMATCH' }, 'sized stream');
  await t.rejects(writeDockerArchive(path.join(dir, 'f.tar'), [{ ...a, layers: [a.layers[0]!, { diffId: a.layers[1]!.diffId, tar: () => Readable.from([a.raw[1]!.subarray(0, 512)]), size: a.raw[1]!.length }] }]),
    { code: 'D2C_TRUNCATED' }, 'stream shorter than its size');
  await t.rejects(writeDockerArchive(path.join(dir, 'f.tar'), []), { code: 'D2C_USAGE' });
  t.same(fs.readdirSync(dir), [], 'no partial archive, no temp files');
});

/** A fake Engine API on a unix socket: records the body, answers with `lines`. */
async function fakeDocker(t: Test, answer: (body: Buffer) => { status: number; body: string }) {
  // Short: a socket path is limited to 107 bytes.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'd2c-sock-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sock = path.join(dir, 'docker.sock');
  const seen: { method?: string; url?: string; type?: string; body?: Buffer } = {};
  const server = http.createServer((req, res) => {
    seen.method = req.method; seen.url = req.url; seen.type = req.headers['content-type'];
    void collect(req).then((b) => { seen.body = b; const a = answer(b); res.writeHead(a.status, { 'Content-Type': 'application/json' }); res.end(a.body); });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { host: `unix://${sock}`, seen };
}
t.test('loadIntoDocker: POST /images/load, JSON lines parsed', async (t) => {
  const d = await fakeDocker(t, () => ({ status: 200, body: '{"stream":"Loaded image: thin/x:1\\n"}\n{"stream":"Loaded image ID: sha256:abc\\n"}\n' }));
  const refs = await loadIntoDocker(Readable.from([Buffer.from('tarbytes')]), { dockerHost: d.host });
  t.same(refs, ['thin/x:1', 'sha256:abc']);
  t.equal(d.seen.method, 'POST'); t.match(d.seen.url, /^\/images\/load/); t.equal(d.seen.type, 'application/x-tar');
  t.equal(d.seen.body?.toString(), 'tarbytes');
});

t.test('loadIntoDocker: errorDetail, HTTP errors and no daemon are D2C_DOCKER_ERROR', async (t) => {
  const e1 = await fakeDocker(t, () => ({ status: 200, body: '{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}\n' }));
  await t.rejects(loadIntoDocker(Readable.from([Buffer.from('x')]), { dockerHost: e1.host }), { code: 'D2C_DOCKER_ERROR', message: /unexpected EOF/ });
  const e2 = await fakeDocker(t, () => ({ status: 500, body: '{"message":"no space left"}' }));
  await t.rejects(loadIntoDocker(Readable.from([Buffer.from('x')]), { dockerHost: e2.host }), { code: 'D2C_DOCKER_ERROR', message: /HTTP 500: no space left/ });
  await t.rejects(loadIntoDocker(Readable.from([Buffer.from('x')]), { dockerHost: `unix://${os.tmpdir()}/d2c-none-${process.pid}.sock` }), { code: 'D2C_DOCKER_ERROR', message: /cannot reach/ });
  t.throws(() => parseDockerHost('ssh://me@host'), { code: 'D2C_USAGE' });
  t.same(parseDockerHost('tcp://127.0.0.1:2375'), { host: '127.0.0.1', port: 2375 });
  t.same(parseDockerHost('unix:///run/d.sock'), { socketPath: '/run/d.sock' });
  t.throws(() => parseLoadAnswer('not json', 'h'), { code: 'D2C_DOCKER_ERROR' });
});
