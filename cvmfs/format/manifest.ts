/** Manifest `.cvmfspublished` text part (docs/cvmfs-format.md §7.1). */
import { CvmfsError } from '../errors.js';
import { parseTextualHash } from './hash.js';
import { ROOT_PATH_MD5 } from './path-key.js';

export interface Manifest {
  readonly rootHash: string;            // C
  readonly rootCatalogSize?: bigint;    // B
  readonly rootPathMd5: string;         // R
  readonly ttlSeconds: number;          // D
  readonly revision: number;            // S
  readonly garbageCollectable: boolean; // G
  readonly alternativeNames: boolean;   // A
  readonly fqrn: string;                // N
  readonly certificateHash: string;     // X
  readonly historyHash?: string;        // H
  readonly publishTime: number;         // T
  readonly metainfoHash?: string;       // M
  readonly reflogHash?: string;         // Y
}

/** Key lines in the order cvmfs_server writes them, each ending in `\n`. */
export function manifestBody(m: Manifest): string {
  const lines = [`C${m.rootHash}`];
  if (m.rootCatalogSize !== undefined) lines.push(`B${m.rootCatalogSize}`);
  lines.push(`R${m.rootPathMd5}`, `D${m.ttlSeconds}`, `S${m.revision}`,
    `G${m.garbageCollectable ? 'yes' : 'no'}`, `A${m.alternativeNames ? 'yes' : 'no'}`);
  if (m.fqrn) lines.push(`N${m.fqrn}`);
  if (m.certificateHash) lines.push(`X${m.certificateHash}`);
  if (m.historyHash) lines.push(`H${m.historyHash}`);
  if (m.publishTime > 0) lines.push(`T${m.publishTime}`);
  if (m.metainfoHash) lines.push(`M${m.metainfoHash}`);
  if (m.reflogHash) lines.push(`Y${m.reflogHash}`);
  return lines.join('\n') + '\n';
}

export function parseManifest(body: Buffer | string): Manifest {
  const text = typeof body === 'string' ? body : body.toString('utf8');
  const kv = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '--') break;
    if (line === '') continue;
    kv.set(line[0]!, line.slice(1));
  }
  const need = (k: string, what: string): string => {
    const v = kv.get(k);
    if (v === undefined) throw new CvmfsError('CVMFS_BAD_MANIFEST', `manifest lacks ${what} (key ${k})`);
    return v;
  };
  const int = (k: string, what: string): number => {
    const v = need(k, what);
    if (!/^\d+$/.test(v)) throw new CvmfsError('CVMFS_BAD_MANIFEST', `manifest ${what} "${v}" is not a number`);
    return Number(v);
  };
  const rootHash = need('C', 'the root catalog hash');
  parseTextualHash(rootHash);
  const b = kv.get('B');
  const m: Manifest = {
    rootHash,
    ...(b !== undefined && /^\d+$/.test(b) ? { rootCatalogSize: BigInt(b) } : {}),
    rootPathMd5: need('R', 'the root path hash'),
    ttlSeconds: int('D', 'TTL'),
    revision: int('S', 'revision'),
    garbageCollectable: kv.get('G') === 'yes',
    alternativeNames: kv.get('A') === 'yes',
    fqrn: kv.get('N') ?? '',
    certificateHash: kv.get('X') ?? '',
    ...(kv.get('H') ? { historyHash: kv.get('H')! } : {}),
    publishTime: kv.has('T') ? int('T', 'publish time') : 0,
    ...(kv.get('M') ? { metainfoHash: kv.get('M')! } : {}),
    ...(kv.get('Y') ? { reflogHash: kv.get('Y')! } : {}),
  };
  if (m.rootPathMd5 !== ROOT_PATH_MD5) {
    throw new CvmfsError('CVMFS_BAD_MANIFEST', `manifest root path hash is ${m.rootPathMd5}, expected ${ROOT_PATH_MD5}`);
  }
  return m;
}
