/**
 * Repository operations: init, ingest (tar stream → nested catalog at a path → new signed
 * revision), resign and info. Each write runs as one transaction under the writer lock:
 * objects first, then catalogs bottom-up, then the certificate, a flush, and the manifest last.
 * A failure anywhere before the manifest leaves the previous revision served unchanged; the
 * objects already written are unreferenced and harmless.
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { CvmfsError } from '../errors.js';
import { addCounters, catalogFlags, DEFAULT_TTL_SECONDS, DIR_SIZE, S_IFDIR, type Counters } from '../format/catalog-schema.js';
import { CatalogDatabase } from '../format/catalog-statements.js';
import { fingerprintOf, fingerprintToTextual, textualHash, type HashAlgo } from '../format/hash.js';
import { encodeObject } from '../format/object.js';
import { whitelistExpired, whitelistExpiresAt } from '../format/whitelist.js';
import { buildLayerCatalog } from './catalog-build.js';
import { ZlibPool } from '../zlib-pool.js';
import { applyGraft, closePlan, planGraft } from './graft.js';
import { generateKeys, loadMasterKeys, loadSigningKeys, type SigningKeys } from './keys.js';
import { readLayer, type LayerReadStats } from './layer-reader.js';
import { ObjectSink, type SinkStats } from './object-sink.js';
import { publishManifest, publishWhitelist } from './publish.js';
import { loadState, MANIFEST_FILE, stageCatalog, type RepositoryState } from './repository-state.js';
import type { RepositoryStorage, WriterLock } from './storage.js';
import { NAME_MAX_BYTES, PATH_MAX_BYTES } from './tree.js';

export const WRITABLE_HASH_ALGOS: readonly HashAlgo[] = ['sha1', 'shake128'];
const FQRN_PATTERN = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/;

export interface Clock { now(): Date }
export const systemClock: Clock = { now: () => new Date() };

async function withScratch<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cvmfs-repo-'));
  try { return await fn(dir); } finally { await fs.rm(dir, { recursive: true, force: true }); }
}

async function underLock<T>(storage: RepositoryStorage, what: string, fn: (lock: WriterLock) => Promise<T>): Promise<T> {
  const lock = await storage.lock(what);
  try {
    await storage.sweepStaging();
    return await fn(lock);
  } finally {
    await lock.release();
  }
}

/** A string for messages: NULs shown as \0, long ones cut after `max` characters. */
function shown(s: string, max = 60): string {
  const v = s.replace(/\0/g, '\\0');
  return v.length > max ? `${v.slice(0, max)}…` : v;
}

/**
 * Normalises a repository path: absolute, no trailing slash, no `.`/`..`/empty components, at
 * most NAME_MAX_BYTES per component and PATH_MAX_BYTES in all (what a Linux client can look up).
 */
export function normalizeRepoPath(p: string): string {
  if (!p.startsWith('/')) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `repository path "${shown(p)}" must be absolute (start with /)`);
  const parts = p.split('/').filter((c) => c !== '');
  for (const c of parts) {
    if (c === '.' || c === '..' || c.includes('\0')) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `repository path "${shown(p)}" contains "${shown(c)}"`);
    const n = Buffer.byteLength(c);
    if (n > NAME_MAX_BYTES) {
      throw new CvmfsError('CVMFS_BAD_ARGUMENT', `repository path "${shown(p)}": the name "${shown(c, 40)}" is ${n} bytes; at most ${NAME_MAX_BYTES}`);
    }
  }
  const normal = parts.length ? '/' + parts.join('/') : '';
  const n = Buffer.byteLength(normal);
  if (n > PATH_MAX_BYTES) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `repository path "${shown(p)}" is ${n} bytes; at most ${PATH_MAX_BYTES}`);
  return normal;
}

/**
 * Where `p` really is: absolute, with every symlink along it resolved, including dangling ones and
 * those met inside symlink targets. The part that does not exist yet is appended as it is, as
 * `mkdir -p` would create it. (Lexical normalisation first, as the writer's own paths get it.)
 */
async function physicalPath(p: string): Promise<string> {
  const pending = path.resolve(p).split('/');
  let cur = '/';
  let links = 0;
  let missing = false;
  while (pending.length) {
    const c = pending.shift()!;
    if (c === '' || c === '.') continue;
    if (c === '..') { cur = path.dirname(cur); continue; }
    const next = path.join(cur, c);
    if (!missing) {
      const st = await fs.lstat(next).catch(() => undefined);
      if (st === undefined) missing = true;
      else if (st.isSymbolicLink()) {
        if (++links > 40) throw new CvmfsError('CVMFS_BAD_ARGUMENT', `${p}: too many levels of symbolic links`);
        const target = await fs.readlink(next);
        pending.unshift(...target.split('/'));
        if (target.startsWith('/')) cur = '/';
        continue;
      }
    }
    cur = next;
  }
  return cur;
}

const within = (inner: string, outer: string): boolean =>
  inner === outer || inner.startsWith(outer.endsWith(path.sep) ? outer : outer + path.sep);

/**
 * Refuses a key directory inside the served tree, following symlinks on either side (a key
 * directory reached through a symlink into the tree, or a tree reached through a symlink). A tree
 * inside the key directory is allowed: the keys then sit above what is served, not in it.
 */
async function checkKeysNotServed(storage: RepositoryStorage, keysDir: string): Promise<void> {
  if (storage.localDir === undefined) return;
  const [keys, served] = await Promise.all([physicalPath(keysDir), physicalPath(storage.localDir)]);
  if (within(keys, served)) {
    const real = [[keysDir, keys], [storage.localDir, served]].filter(([given, is]) => path.resolve(given!) !== is);
    const via = real.length ? ` (through symlinks: ${real.map(([given, is]) => `${given} is ${is}`).join(', ')})` : '';
    throw new CvmfsError('CVMFS_BAD_ARGUMENT',
      `the key directory ${path.resolve(keysDir)} lies inside the served tree ${storage.location}${via}; private keys must never be served: move them out of the tree`);
  }
}

/** The certificate must be listed in the current whitelist, or clients would reject the revision. */
function checkCertificateListed(state: RepositoryState, keys: SigningKeys, keysDir: string): void {
  const listed = state.whitelist.fingerprints;
  const fp = fingerprintToTextual(fingerprintOf(state.algo, keys.certDer));
  const fpSha1 = fingerprintToTextual(fingerprintOf('sha1', keys.certDer));
  if (!listed.includes(fp) && !listed.includes(fpSha1)) {
    throw new CvmfsError('CVMFS_KEYS_MISMATCH',
      `the certificate in ${keysDir} is not listed in the whitelist of ${state.manifest.fqrn}: wrong key directory for this repository?`);
  }
}

// ---------------------------------------------------------------------------------------------

export interface InitOptions {
  readonly storage: RepositoryStorage;
  readonly keysDir: string;
  readonly fqrn: string;
  readonly algo?: HashAlgo;
  readonly clock?: Clock;
}

export async function initRepository(o: InitOptions): Promise<RepositoryState> {
  const algo = o.algo ?? 'sha1';
  if (!WRITABLE_HASH_ALGOS.includes(algo)) {
    throw new CvmfsError('CVMFS_UNKNOWN_HASH_ALGORITHM', `cannot write repositories hashed with ${algo}: use ${WRITABLE_HASH_ALGOS.join(' or ')}`);
  }
  if (!FQRN_PATTERN.test(o.fqrn)) {
    throw new CvmfsError('CVMFS_BAD_ARGUMENT', `"${o.fqrn}" is not a fully qualified repository name (like sw.example.org)`);
  }
  const now = (o.clock ?? systemClock).now();
  await checkKeysNotServed(o.storage, o.keysDir); // before anything is created
  await o.storage.init();
  if (await o.storage.get(MANIFEST_FILE)) throw new CvmfsError('CVMFS_REPO_EXISTS', `${o.storage.location} already holds a repository`);
  return underLock(o.storage, 'cvmfs-repo init', (lock) => withScratch(async (scratch) => {
    const keys = await generateKeys(o.keysDir, o.fqrn, now);
    await publishWhitelist(o.storage, lock, o.fqrn, keys, algo, now);
    const sink = new ObjectSink(o.storage);
    const empty = encodeObject(new Uint8Array(0), '', algo);
    await sink.put(empty.path, empty.stored);
    const nowSeconds = Math.floor(now.getTime() / 1000);
    const file = path.join(scratch, 'root.sqlite');
    const db = CatalogDatabase.create(file, { rootPrefix: null, revision: 1, lastModified: nowSeconds });
    try {
      db.transaction(() => {
        db.upsert('', { name: '', mode: S_IFDIR | 0o755, size: DIR_SIZE, mtime: nowSeconds, mtimens: null, uid: 0, gid: 0,
          flags: catalogFlags({ kind: 'dir' }), linkcount: 2, hardlinkGroup: 0, hash: null, symlink: '', xattr: null });
        db.setCounters('self', db.computeSelfCounters());
      });
      db.finalize();
    } finally { db.close(); }
    const bytes = await fs.readFile(file);
    const root = encodeObject(bytes, 'C', algo);
    await sink.put(root.path, root.stored);
    await publishManifest(o.storage, lock, sink, keys, {
      fqrn: o.fqrn, algo, rootHash: root.textual, rootSize: BigInt(bytes.length), revision: 1, publishTime: nowSeconds });
    return loadState(o.storage);
  }));
}

// ---------------------------------------------------------------------------------------------

export interface IngestOptions {
  readonly storage: RepositoryStorage;
  readonly keysDir: string;
  /** Absolute repository path that receives the tar's tree as its own nested catalog. */
  readonly path: string;
  readonly input: Readable;
  readonly clock?: Clock;
  readonly threads?: number;
  /** Adds `.cvmfscatalog` to the new catalog root, as cvmfs_server does (default true). */
  readonly catalogMarker?: boolean;
}

export interface IngestResult {
  readonly fqrn: string;
  readonly revision: number;
  readonly rootHash: string;
  readonly catalogHash: string;
  readonly layer: LayerReadStats;
  readonly objects: SinkStats;
  readonly counters: Counters;
}

export async function ingest(o: IngestOptions): Promise<IngestResult> {
  const mountPath = normalizeRepoPath(o.path);
  if (mountPath === '') throw new CvmfsError('CVMFS_BAD_ARGUMENT', 'ingest needs a path below the repository root, such as /layers/<digest>');
  await checkKeysNotServed(o.storage, o.keysDir);
  return underLock(o.storage, `cvmfs-repo ingest ${mountPath}`, (lock) => withScratch(async (scratch) => {
    const state = await loadState(o.storage);
    const keys = await loadSigningKeys(o.keysDir, state.manifest.fqrn);
    checkCertificateListed(state, keys, o.keysDir);
    const now = (o.clock ?? systemClock).now();
    const publishTime = Math.max(Math.floor(now.getTime() / 1000), state.manifest.publishTime);
    const { algo } = state;
    const sink = new ObjectSink(o.storage);
    const ctx = { storage: o.storage, sink, algo, now, scratchDir: scratch };
    const plan = await planGraft(ctx, state.manifest.rootHash, mountPath);
    const pool = new ZlibPool(o.threads ? { threads: o.threads } : {});
    try {
      const { tree, stats } = await readLayer(o.input, { mountPath, algo, pool, sink, now });
      const file = path.join(scratch, 'layer.sqlite');
      const built = await buildLayerCatalog(file, tree.root, mountPath, {
        algo, now, catalogMarker: o.catalogMarker ?? true,
        revision: (plan.previous?.revision ?? 0) + 1, previousRevision: plan.previous?.hash ?? null });
      const bytes = await fs.readFile(file);
      const enc = encodeObject(bytes, 'C', algo);
      await sink.put(enc.path, enc.stored);
      const catalogHash = textualHash(algo, enc.digest);
      const revision = state.manifest.revision + 1;
      const root = await applyGraft(ctx, plan, { hash: catalogHash, size: BigInt(bytes.length), rootEntry: built.rootEntry, totals: built.self }, revision);
      const rootTtl = state.manifest.ttlSeconds || DEFAULT_TTL_SECONDS;
      await publishManifest(o.storage, lock, sink, keys, {
        fqrn: state.manifest.fqrn, algo, rootHash: root.hash, rootSize: root.size, revision, ttlSeconds: rootTtl, publishTime });
      return { fqrn: state.manifest.fqrn, revision, rootHash: root.hash, catalogHash, layer: stats, objects: sink.stats, counters: built.self };
    } finally {
      closePlan(plan);
      await pool.close();
      await sink.drain().catch(() => {});
    }
  }));
}

// ---------------------------------------------------------------------------------------------

export async function resign(o: { storage: RepositoryStorage; keysDir: string; days?: number; clock?: Clock }): Promise<Date> {
  await checkKeysNotServed(o.storage, o.keysDir);
  return underLock(o.storage, 'cvmfs-repo resign', async (lock) => {
    const state = await loadState(o.storage);
    const fqrn = state.manifest.fqrn;
    const [signing, master] = await Promise.all([loadSigningKeys(o.keysDir, fqrn), loadMasterKeys(o.keysDir, fqrn)]);
    if (!new X509Certificate(signing.certPem).raw.equals(new X509Certificate(state.certPem).raw)) {
      throw new CvmfsError('CVMFS_KEYS_MISMATCH', `the certificate in ${o.keysDir} is not the one that signed the current manifest of ${fqrn}`);
    }
    const now = (o.clock ?? systemClock).now();
    await publishWhitelist(o.storage, lock, fqrn, { ...signing, ...master }, state.algo, now, o.days);
    return whitelistExpiresAt((await loadState(o.storage)).whitelist);
  });
}

// ---------------------------------------------------------------------------------------------

export interface RepositoryInfo {
  readonly fqrn: string;
  readonly revision: number;
  readonly rootHash: string;
  readonly publishTime: number;
  readonly hashAlgorithm: HashAlgo;
  readonly whitelistExpires: Date;
  readonly whitelistExpired: boolean;
  readonly catalogs: number;
  readonly objects: number;
  readonly objectBytes: number;
  /** self + subtree counters of the root catalog: the whole repository. */
  readonly totals: Counters;
}

export async function repositoryInfo(storage: RepositoryStorage, clock: Clock = systemClock): Promise<RepositoryInfo> {
  const state = await loadState(storage);
  return withScratch(async (scratch) => {
    let catalogs = 0;
    let totals: Counters | undefined;
    const walk = async (hash: string, mp: string): Promise<void> => {
      const c = await stageCatalog(storage, hash, mp, scratch);
      catalogs++;
      try {
        totals ??= addCounters(c.db.counters('self'), c.db.counters('subtree'));
        for (const n of c.db.nestedCatalogs()) await walk(n.hash, n.path);
      } finally { c.db.close(); await fs.rm(c.file, { force: true }); }
    };
    await walk(state.manifest.rootHash, '');
    const objects = await storage.objectStats();
    return {
      fqrn: state.manifest.fqrn, revision: state.manifest.revision, rootHash: state.manifest.rootHash,
      publishTime: state.manifest.publishTime, hashAlgorithm: state.algo,
      whitelistExpires: whitelistExpiresAt(state.whitelist), whitelistExpired: whitelistExpired(state.whitelist, clock.now()),
      catalogs, objects: objects.count, objectBytes: objects.bytes, totals: totals!,
    };
  });
}
