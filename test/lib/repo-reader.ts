/**
 * An independent, minimal reader used to check what the writer produced, the way a client reads
 * it: manifest and whitelist signatures, every object's hash over its stored bytes, inflate, size
 * against the catalog, catalogs attached at their mountpoints. It also checks the catalog
 * invariants a stock client relies on (rowid 1 root, rollback journal, 24 counters, non-NULL
 * name/symlink) and recounts every statistics counter.
 */
import { createHash, createPublicKey, X509Certificate, constants, publicDecrypt, verify } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { inflateSync } from 'node:zlib';
import Database from 'better-sqlite3';

export type Fetch = (rel: string) => Promise<Buffer>;

export interface ReadEntry {
  readonly path: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtime: number;
  readonly size: bigint;
  readonly content?: Buffer;
  readonly target?: string;
  readonly xattrs: Record<string, string>;
  readonly linkcount: number;
  readonly hardlinkGroup: number;
  readonly chunks: number;
  readonly catalog: string;
}

export interface ReadRepository {
  readonly revision: number;
  readonly entries: Map<string, ReadEntry>;
  readonly catalogs: Map<string, { self: Record<string, bigint>; subtree: Record<string, bigint> }>;
  readonly problems: string[];
}

const FIELDS = ['regular', 'symlink', 'special', 'dir', 'nested', 'chunked', 'chunks', 'file_size', 'chunked_size', 'xattr', 'external', 'external_file_size'];

export function dirFetch(root: string): Fetch {
  return async (rel) => fs.promises.readFile(path.join(root, rel));
}

function algoOf(textual: string): { name: string; id: string } {
  if (textual.endsWith('-shake128')) return { name: 'shake128', id: '-shake128' };
  return { name: 'sha1', id: '' };
}
function hashHex(algo: string, data: Buffer): string {
  return algo === 'shake128' ? createHash('shake128', { outputLength: 20 }).update(data).digest('hex') : createHash('sha1').update(data).digest('hex');
}

export async function readRepository(fetch: Fetch, fqrn: string, masterPubPem: string): Promise<ReadRepository> {
  const problems: string[] = [];
  const fetchObject = async (textual: string, suffix: string, expectSize?: bigint): Promise<Buffer> => {
    const rel = `data/${textual.slice(0, 2)}/${textual.slice(2)}${suffix}`;
    const stored = await fetch(rel);
    const { name, id } = algoOf(textual);
    if (hashHex(name, stored) + id !== textual) throw new Error(`object ${rel}: hash mismatch`);
    const plain = inflateSync(stored);
    if (expectSize !== undefined && BigInt(plain.length) !== expectSize) throw new Error(`object ${rel}: size ${plain.length} != ${expectSize}`);
    return plain;
  };

  const manifestRaw = await fetch('.cvmfspublished');
  const sep = manifestRaw.indexOf('\n--\n');
  const body = manifestRaw.subarray(0, sep + 1);
  const hashEnd = manifestRaw.indexOf('\n', sep + 4);
  const hashLine = manifestRaw.subarray(sep + 4, hashEnd).toString();
  const sig = manifestRaw.subarray(hashEnd + 1);
  const kv = new Map(body.toString().split('\n').filter(Boolean).map((l) => [l[0]!, l.slice(1)] as const));
  const rootHash = kv.get('C')!;
  if (hashHex(algoOf(rootHash).name, body) + algoOf(rootHash).id !== hashLine) problems.push('manifest hash line mismatch');
  const certPem = (await fetchObject(kv.get('X')!, 'X')).toString();
  const cert = new X509Certificate(certPem);
  if (!verify('sha1', Buffer.from(hashLine), cert.publicKey, sig)) problems.push('manifest signature invalid');
  if (kv.get('N') !== fqrn) problems.push(`manifest N=${kv.get('N')}`);
  if (kv.get('R') !== 'd41d8cd98f00b204e9800998ecf8427e') problems.push('manifest R');
  if (!kv.has('T') || !kv.has('S') || !kv.has('D')) problems.push('manifest lacks T, S or D');

  const wl = await fetch('.cvmfswhitelist');
  const wsep = wl.indexOf('\n--\n');
  const wEnd = wl.indexOf('\n', wsep + 4);
  const wHash = wl.subarray(wsep + 4, wEnd).toString();
  if (createHash('sha1').update(wl.subarray(0, wsep + 1)).digest('hex') !== wHash) problems.push('whitelist hash line mismatch');
  const plain = publicDecrypt({ key: createPublicKey(masterPubPem), padding: constants.RSA_PKCS1_PADDING }, wl.subarray(wEnd + 1));
  if (plain.toString() !== wHash) problems.push('whitelist signature invalid');
  const fp = createHash(algoOf(rootHash).name === 'shake128' ? 'sha1' : 'sha1').update(cert.raw).digest('hex').toUpperCase().match(/../g)!.join(':');
  const wlText = wl.subarray(0, wsep).toString();
  if (!wlText.includes(fp) && !wlText.toLowerCase().replace(/:/g, '').includes(hashHex(algoOf(rootHash).name, cert.raw))) problems.push('certificate not in whitelist');
  if (!wlText.split('\n').includes(`N${fqrn}`)) problems.push('whitelist N');

  const entries = new Map<string, ReadEntry>();
  const catalogs = new Map<string, { self: Record<string, bigint>; subtree: Record<string, bigint> }>();
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'reader-'));
  const md5 = (p: string) => { const d = createHash('md5').update(p).digest(); return [d.readBigInt64LE(0), d.readBigInt64LE(8)] as const; };

  const loadCatalog = async (textual: string, mountPath: string, expectSize?: bigint) => {
    const bytes = await fetchObject(textual, 'C', expectSize);
    if (bytes[18] !== 1 || bytes[19] !== 1) problems.push(`catalog ${mountPath || '/'}: not a rollback-journal database`);
    const file = path.join(scratch, textual);
    fs.writeFileSync(file, bytes);
    const db = new Database(file, { readonly: true });
    db.defaultSafeIntegers(true);
    return db;
  };

  type Row = { rowid: bigint; md5path_1: bigint; md5path_2: bigint; hardlinks: bigint; hash: Buffer | null; size: bigint; mode: bigint;
    mtime: bigint; flags: bigint; name: string | null; symlink: string | null; uid: bigint; gid: bigint; xattr: Buffer | null };

  const walkCatalog = async (textual: string, mountPath: string, expectSize?: bigint): Promise<Record<string, bigint>> => {
    const db = await loadCatalog(textual, mountPath, expectSize);
    const where = mountPath || '/';
    try {
      const stats = new Map((db.prepare('SELECT counter, value FROM statistics').all() as { counter: string; value: bigint }[]).map((r) => [r.counter, r.value]));
      const self: Record<string, bigint> = {}, subtree: Record<string, bigint> = {};
      for (const f of FIELDS) {
        if (!stats.has(`self_${f}`) || !stats.has(`subtree_${f}`)) problems.push(`catalog ${where}: counter ${f} missing`);
        self[f] = stats.get(`self_${f}`) ?? 0n;
        subtree[f] = stats.get(`subtree_${f}`) ?? 0n;
      }
      catalogs.set(mountPath, { self, subtree });
      const props = new Map((db.prepare('SELECT key, value FROM properties').all() as { key: string; value: string }[]).map((r) => [r.key, r.value]));
      if (props.get('schema') !== '2.5' || props.get('schema_revision') !== '7') problems.push(`catalog ${where}: schema`);
      if (mountPath && props.get('root_prefix') !== mountPath) problems.push(`catalog ${where}: root_prefix ${props.get('root_prefix')}`);
      const first = db.prepare('SELECT rowid, md5path_1, md5path_2 FROM catalog ORDER BY rowid LIMIT 1').get() as Row;
      const [k1, k2] = md5(mountPath);
      if (first.rowid !== 1n || first.md5path_1 !== k1 || first.md5path_2 !== k2) problems.push(`catalog ${where}: root entry is not rowid 1`);
      if ((db.prepare('SELECT COUNT(*) AS n FROM catalog WHERE name IS NULL OR symlink IS NULL').get() as { n: bigint }).n !== 0n) problems.push(`catalog ${where}: NULL name or symlink`);

      const nested = new Map((db.prepare('SELECT path, sha1, size FROM nested_catalogs').all() as { path: string; sha1: string; size: bigint }[]).map((r) => [r.path, r]));
      const count: Record<string, bigint> = Object.fromEntries(FIELDS.map((f) => [f, 0n]));
      let childTotals: Record<string, bigint> = Object.fromEntries(FIELDS.map((f) => [f, 0n]));
      const byParent = db.prepare('SELECT rowid, * FROM catalog WHERE parent_1 = ? AND parent_2 = ?');
      const byKey = db.prepare('SELECT rowid, * FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?');
      const chunksOf = db.prepare('SELECT offset, size, hash FROM chunks WHERE md5path_1 = ? AND md5path_2 = ? ORDER BY offset');
      const tally = (r: Row) => {
        const t = Number(r.mode) & 0o170000;
        if (t === 0o100000) { count.regular!++; count.file_size! += r.size; }
        else if (t === 0o120000) count.symlink!++;
        else if (t === 0o040000) count.dir!++;
        else count.special!++;
        if (Number(r.flags) & 64) { count.chunked!++; count.chunked_size! += r.size; }
        if (r.xattr !== null) count.xattr!++;
      };
      const rootRow = byKey.get(k1, k2) as Row;
      tally(rootRow);
      const record = async (p: string, r: Row) => {
        const mode = Number(r.mode);
        const xattrs: Record<string, string> = {};
        if (r.xattr) {
          const b = r.xattr;
          let pos = 2;
          for (let i = 0; i < b[1]!; i++) { const kl = b[pos]!, vl = b[pos + 1]!; xattrs[b.toString('utf8', pos + 2, pos + 2 + kl)] = b.subarray(pos + 2 + kl, pos + 2 + kl + vl).toString('hex'); pos += 2 + kl + vl; }
        }
        let content: Buffer | undefined;
        let nchunks = 0;
        if ((mode & 0o170000) === 0o100000) {
          const algo = ['', '-rmd160', '-shake128'][(Number(r.flags) >> 8) & 7]!;
          if (Number(r.flags) & 64) {
            const [c1, c2] = md5(p);
            const chunks = chunksOf.all(c1, c2) as { offset: bigint; size: bigint; hash: Buffer }[];
            nchunks = chunks.length;
            count.chunks! += BigInt(chunks.length);
            let off = 0n;
            const parts: Buffer[] = [];
            for (const c of chunks) {
              if (c.offset !== off) problems.push(`${p}: chunk gap at ${off}`);
              parts.push(await fetchObject(c.hash.toString('hex') + algo, 'P', c.size));
              off += c.size;
            }
            content = Buffer.concat(parts);
            if (r.hash !== null) problems.push(`${p}: chunked file with a hash`);
          } else {
            if (r.hash === null) problems.push(`${p}: regular file without hash`);
            else content = await fetchObject(r.hash.toString('hex') + algo, '', r.size);
          }
          if (content && BigInt(content.length) !== r.size) problems.push(`${p}: size mismatch`);
          const expectFlags = 4 | (Number(r.flags) & 64) | (Number(r.flags) & 0x700);
          if (Number(r.flags) !== expectFlags) problems.push(`${p}: flags ${r.flags}`);
        } else if ((mode & 0o170000) === 0o120000 && Number(r.flags) !== 12) problems.push(`${p}: symlink flags ${r.flags}`);
        entries.set(p, {
          path: p, mode, uid: Number(r.uid), gid: Number(r.gid), mtime: Number(r.mtime), size: r.size, xattrs,
          linkcount: Number(r.hardlinks & 0xffffffffn), hardlinkGroup: Number(r.hardlinks >> 32n), chunks: nchunks, catalog: mountPath,
          ...(content ? { content } : {}), ...((mode & 0o170000) === 0o120000 ? { target: r.symlink ?? '' } : {}),
        });
      };
      if (!entries.has(mountPath)) await record(mountPath, rootRow);
      const walk = async (dirPath: string) => {
        const [p1, p2] = md5(dirPath);
        for (const r of byParent.all(p1, p2) as Row[]) {
          const p = `${dirPath}/${r.name}`;
          tally(r);
          if (Number(r.flags) & 2) {
            const n = nested.get(p);
            if (!n) { problems.push(`${p}: mountpoint without nested_catalogs row`); continue; }
            await record(p, r);
            const t = await walkCatalog(n.sha1, p, n.size);
            for (const f of FIELDS) childTotals[f]! += t[f]!;
            continue;
          }
          await record(p, r);
          if ((Number(r.mode) & 0o170000) === 0o040000) {
            const subdirs = (byParent.all(...md5(p)) as Row[]).filter((c) => (Number(c.mode) & 0o170000) === 0o040000).length;
            if (Number(r.hardlinks & 0xffffffffn) !== 2 + subdirs) problems.push(`${p}: linkcount ${r.hardlinks} for ${subdirs} subdirs`);
            await walk(p);
          }
        }
      };
      await walk(mountPath);
      count.nested = BigInt(nested.size);
      for (const f of FIELDS) {
        if (self[f] !== count[f]) problems.push(`catalog ${where}: self_${f} = ${self[f]}, recounted ${count[f]}`);
        if (subtree[f] !== childTotals[f]) problems.push(`catalog ${where}: subtree_${f} = ${subtree[f]}, children hold ${childTotals[f]}`);
      }
      return Object.fromEntries(FIELDS.map((f) => [f, self[f]! + subtree[f]!]));
    } finally {
      db.close();
    }
  };
  try {
    await walkCatalog(rootHash, '', kv.has('B') ? BigInt(kv.get('B')!) : undefined);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  return { revision: Number(kv.get('S')), entries, catalogs, problems };
}
