/**
 * bench/cache-trust: what re-verifying cached data costs. Prints, from one run:
 *   - verifying a revision's cached letters (read `cvmfsletters.<fqrn>` + manifest signature,
 *     whitelist signature, fingerprint, names), which the client does at every open;
 *   - `ObjectCache.open` of a cache with N objects (the owner/symlink checks and lstat scan);
 *   - for comparison, what re-verifying cached objects would cost per MB: the cache stores objects
 *     inflated and their names hash the compressed bytes, so it is deflate + hash (SHA-1), plus
 *     the read; and the hash alone, were inflated hashes stored.
 *   node dist/bench/cache-trust.js [--objects 20000] [--mb 256]
 */
import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { deflateSync } from 'node:zlib';
import { DirStorage, initRepository, ObjectCache, openRepository, serveRepository } from '../cvmfs/index.js';
import { ZLIB_LEVEL } from '../cvmfs/format/object.js';
import { verifyLetters } from '../cvmfs/reader/trust.js';

const { values } = parseArgs({ options: { objects: { type: 'string', default: '20000' }, mb: { type: 'string', default: '256' } } });
const OBJECTS = Number(values.objects);
const MB_TOTAL = Number(values.mb);

function median(xs: number[]): number { const s = [...xs].sort((a, b) => a - b); return s[s.length >> 1]!; }
function timeMs(f: () => unknown): number { const t0 = process.hrtime.bigint(); f(); return Number(process.hrtime.bigint() - t0) / 1e6; }
async function timeMsAsync(f: () => Promise<unknown>): Promise<number> { const t0 = process.hrtime.bigint(); await f(); return Number(process.hrtime.bigint() - t0) / 1e6; }

/** Text-like content, as bench/ingest: compresses like real layers. */
function textLike(size: number, seed: number): Buffer {
  const words = ['lib', 'share', 'python3', 'def ', 'return ', 'import ', '0x', '\n', 'ELF', 'site-packages', '__init__'];
  const b = Buffer.allocUnsafe(size);
  let s = seed | 1;
  for (let pos = 0; pos < size;) { s = (s * 1103515245 + 12345) & 0x7fffffff; pos += b.write(words[s % words.length]! + (s % 4099).toString(36), pos); }
  return b;
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-cache-trust-'));
try {
  const fqrn = 'bench.example.org';
  const storage = new DirStorage(path.join(work, 'repo'));
  await initRepository({ storage, keysDir: path.join(work, 'keys'), fqrn });
  const pem = fs.readFileSync(path.join(work, 'keys', `${fqrn}.pub`), 'utf8');
  const srv = await serveRepository({ dir: path.join(work, 'repo'), fqrn });
  const cacheDir = path.join(work, 'cache');
  await (await openRepository({ fqrn, servers: [srv.url], publicKeys: [{ name: 'pub', pem }], cacheDir })).close();
  await srv.close();

  const cache = await ObjectCache.open(cacheDir);
  const keys = [{ name: 'pub', key: createPublicKey(pem) }];
  const trust = { fqrn, masterKeys: keys, now: new Date(), acceptExpired: true };
  for (let i = 0; i < 50; i++) verifyLetters((await cache.readLetters(fqrn))!, trust);
  const verify: number[] = [], readAndVerify: number[] = [];
  for (let i = 0; i < 500; i++) {
    const letters = (await cache.readLetters(fqrn))!;
    verify.push(timeMs(() => verifyLetters(letters, trust)));
    readAndVerify.push(await timeMsAsync(async () => verifyLetters((await cache.readLetters(fqrn))!, trust)));
  }

  const objDir = path.join(work, 'objects');
  await ObjectCache.open(objDir);
  for (let i = 0; i < OBJECTS; i++) {
    const h = createHash('sha1').update(String(i)).digest('hex');
    fs.writeFileSync(path.join(objDir, h.slice(0, 2), h.slice(2)), textLike(512, i));
  }
  await ObjectCache.open(objDir);
  const scans: number[] = [];
  for (let i = 0; i < 5; i++) scans.push(await timeMsAsync(() => ObjectCache.open(objDir)));

  const piece = 1 << 20;
  const data = Array.from({ length: MB_TOTAL }, (_, i) => (i % 3 === 0 ? randomBytes(piece) : textLike(piece, i)));
  const hashOnly = timeMs(() => { for (const b of data) createHash('sha1').update(b).digest(); });
  const deflateHash = timeMs(() => { for (const b of data) createHash('sha1').update(deflateSync(b, { level: ZLIB_LEVEL })).digest(); });
  const mb = (MB_TOTAL * piece) / 1e6;

  console.log(`re-verify cached letters at open:   ${median(verify).toFixed(3)} ms (verify only), ${median(readAndVerify).toFixed(3)} ms (read + verify), median of 500`);
  console.log(`ObjectCache.open, ${OBJECTS} objects:   ${median(scans).toFixed(1)} ms (checks + lstat scan), median of 5`);
  console.log(`re-hash cached objects (one core):  deflate level ${ZLIB_LEVEL} + SHA-1 ${(deflateHash / mb).toFixed(2)} ms/MB (${(mb / deflateHash * 1000).toFixed(0)} MB/s); ` +
    `SHA-1 alone ${(hashOnly / mb).toFixed(2)} ms/MB (${(mb / hashOnly * 1000).toFixed(0)} MB/s); over ${mb.toFixed(0)} MB, a third incompressible`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
