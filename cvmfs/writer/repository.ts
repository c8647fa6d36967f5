/**
 * Repository operations: init, ingest (tar stream → nested catalog at a path → new signed
 * revision, a one-operation transaction of transaction.ts), resign and info. Each write runs
 * under the writer lock: objects first, then catalogs bottom-up, then the certificate, a flush,
 * and the manifest last.
 * A failure anywhere before the manifest leaves the previous revision served unchanged; the
 * objects already written are unreferenced and harmless.
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { CvmfsError } from '../errors.js';
import { addCounters, catalogFlags, DIR_SIZE, S_IFDIR, type Counters } from '../format/catalog-schema.js';
import { CatalogDatabase } from '../format/catalog-statements.js';
import type { HashAlgo } from '../format/hash.js';
import { encodeObject } from '../format/object.js';
import { whitelistExpired, whitelistExpiresAt } from '../format/whitelist.js';
import { generateKeys, loadMasterKeys, loadSigningKeys } from './keys.js';
import type { LayerReadStats } from './layer-reader.js';
import { ObjectSink, type SinkStats } from './object-sink.js';
import { publishManifest, publishWhitelist } from './publish.js';
import { loadState, MANIFEST_FILE, stageCatalog, type RepositoryState } from './repository-state.js';
import { checkKeysNotServed, normalizeRepoPath, systemClock, underLock, withScratch, type Clock } from './session.js';
import type { RepositoryStorage } from './storage.js';
import { transaction } from './transaction.js';

export { normalizeRepoPath, systemClock, type Clock } from './session.js';

export const WRITABLE_HASH_ALGOS: readonly HashAlgo[] = ['sha1', 'shake128'];
const FQRN_PATTERN = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/;

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

/** One tar at one path, as a one-operation transaction (transaction.ts). */
export async function ingest(o: IngestOptions): Promise<IngestResult> {
  const mountPath = normalizeRepoPath(o.path);
  if (mountPath === '') throw new CvmfsError('CVMFS_BAD_ARGUMENT', 'ingest needs a path below the repository root, such as /layers/<digest>');
  const r = await transaction({
    storage: o.storage, keysDir: o.keysDir, what: `cvmfs-repo ingest ${mountPath}`,
    ...(o.clock ? { clock: o.clock } : {}), ...(o.threads ? { threads: o.threads } : {}),
  }, async (tx) => ({ fqrn: tx.fqrn, ...await tx.ingest(mountPath, o.input, { catalogMarker: o.catalogMarker ?? true }) }));
  const { fqrn, catalogHash, layer, counters } = r.value;
  return { fqrn, revision: r.revision, rootHash: r.rootHash, catalogHash, layer, objects: r.objects, counters };
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
