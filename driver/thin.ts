/**
 * Thin image descriptors (thin-images-and-layout.md §2): `thin.json` (version 1.0, or 0.1 from an
 * old fixture) and the older `.thin.json` (`{digest, repo}` entries) and `.thin` (one digest per
 * line, in a default repository). Pure: bytes in, validated layer locations out, base layer first.
 */
import { DriverError } from './errors.js';

export const THIN_FILES = ['thin.json', '.thin.json', '.thin'] as const;
export type ThinFile = (typeof THIN_FILES)[number];
const SUPPORTED_VERSIONS = new Set(['1.0', '0.1']);
const DIGEST = /^(sha256:)?([0-9a-f]{64})$/;
const FQRN = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/;

export interface ThinLayer { readonly digest: string; readonly fqrn: string; readonly path: string }
export interface ThinDescriptor { readonly version: string; readonly origin: string; readonly layers: readonly ThinLayer[] }

const invalid = (file: string, why: string) => new DriverError('DRIVER_THIN_INVALID', `${file}: ${why}`);

function digestOf(v: unknown, file: string, i: number): string {
  const m = typeof v === 'string' ? DIGEST.exec(v) : null;
  if (!m) throw invalid(file, `layer ${i + 1} has no valid "digest" (sha256 hex)`);
  return m[2]!;
}

/** A repository path that stays inside its repository: absolute, no `.`/`..`/empty components. */
function layerPath(rest: string, file: string, i: number): string {
  const parts = rest.split('/').filter((c) => c !== '');
  if (parts.length === 0 || parts.some((c) => c === '.' || c === '..' || c.includes('\0'))) {
    throw invalid(file, `layer ${i + 1} URL path "/${rest}" leaves its repository or is empty`);
  }
  return '/' + parts.join('/');
}

function parseUrl(url: unknown, file: string, i: number): { fqrn: string; path: string } {
  if (typeof url !== 'string') throw invalid(file, `layer ${i + 1} has no "url"`);
  const m = /^([a-z]+):\/\/([^/]+)\/(.*)$/.exec(url);
  if (!m) throw invalid(file, `layer ${i + 1} URL "${url}" is not cvmfs://<repository>/<path>`);
  if (m[1] !== 'cvmfs') throw invalid(file, `layer ${i + 1} URL "${url}" has scheme "${m[1]}", not cvmfs`);
  if (!FQRN.test(m[2]!)) throw invalid(file, `layer ${i + 1} URL "${url}" names no valid repository`);
  return { fqrn: m[2]!, path: layerPath(m[3]!, file, i) };
}

export function parseThin(file: ThinFile, bytes: Buffer, defaultRepository?: string): ThinDescriptor {
  const text = bytes.toString('utf8');
  if (file === '.thin') {
    if (!defaultRepository) throw invalid(file, 'an old .thin descriptor needs a default repository (CVMFSGD_DEFAULT_REPOSITORY)');
    const layers = text.split('\n').map((l) => l.trim()).filter(Boolean)
      .map((d, i) => ({ digest: digestOf(d, file, i), fqrn: defaultRepository, path: '' }))
      .map((l) => ({ ...l, path: `/layers/${l.digest}` }));
    return { version: '0', origin: '', layers };
  }
  let doc: unknown;
  try { doc = JSON.parse(text); } catch (err) { throw invalid(file, `is not JSON (${(err as Error).message})`); }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw invalid(file, 'is not a JSON object');
  const o = doc as Record<string, unknown>;
  const version = typeof o.version === 'string' ? o.version : file === '.thin.json' ? '0' : '';
  if (file === 'thin.json' && !SUPPORTED_VERSIONS.has(version)) {
    throw invalid(file, `version "${String(o.version)}" is not supported (supported: ${[...SUPPORTED_VERSIONS].join(', ')})`);
  }
  const raw = o.layers === null || o.layers === undefined ? [] : o.layers;
  if (!Array.isArray(raw)) throw invalid(file, '"layers" is not a list');
  const layers = raw.map((l: unknown, i): ThinLayer => {
    if (l === null || typeof l !== 'object') throw invalid(file, `layer ${i + 1} is not an object`);
    const e = l as Record<string, unknown>;
    const digest = digestOf(e.digest, file, i);
    if (file === '.thin.json') {
      const repo = typeof e.repo === 'string' ? e.repo : defaultRepository;
      if (!repo || !FQRN.test(repo)) throw invalid(file, `layer ${i + 1} names no repository`);
      return { digest, fqrn: repo, path: `/layers/${digest}` };
    }
    if (e.url === undefined || e.url === '') {
      if (!defaultRepository) throw invalid(file, `layer ${i + 1} has no "url" and no default repository is configured`);
      return { digest, fqrn: defaultRepository, path: `/layers/${digest}` };
    }
    return { digest, ...parseUrl(e.url, file, i) };
  });
  return { version, origin: typeof o.origin === 'string' ? o.origin : '', layers };
}
