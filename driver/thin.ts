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
/** A file a recorded start-up read: `path` inside layer `layer` (an index of `layers`, base 0), "/a/b". */
export interface PrefetchEntry { readonly layer: number; readonly path: string }
export interface ThinDescriptor {
  readonly version: string;
  readonly origin: string;
  readonly layers: readonly ThinLayer[];
  /** The recorded access list (`prefetch`), well-formed entries only, in recorded order. */
  readonly prefetch: readonly PrefetchEntry[];
  /** Entries of the list that were malformed, out of range or beyond the bound, and left out. */
  readonly prefetchDropped: number;
}

/** At most this many list entries are taken; the rest are dropped. */
export const MAX_PREFETCH_ENTRIES = 100_000;
const MAX_PREFETCH_PATH = 4096;

/**
 * The recorded access list thin.json may carry (written by `docker2cvmfs record`):
 * `"prefetch": {"version": 1, "files": [[layer index, "path/in/layer"], …]}`. Readers that do not
 * know it ignore it (unknown keys, §2.2). It only steers prefetch, so a bad list never fails the
 * image: malformed entries, paths that leave their layer and entries past the bound are dropped.
 */
function prefetchOf(v: unknown, layerCount: number): { prefetch: PrefetchEntry[]; prefetchDropped: number } {
  const files = v !== null && typeof v === 'object' && !Array.isArray(v) && (v as Record<string, unknown>).version === 1
    ? (v as Record<string, unknown>).files : undefined;
  if (!Array.isArray(files)) return { prefetch: [], prefetchDropped: v === undefined ? 0 : 1 };
  const prefetch: PrefetchEntry[] = [];
  let dropped = 0;
  for (const e of files) {
    if (prefetch.length >= MAX_PREFETCH_ENTRIES || !Array.isArray(e) || e.length !== 2) { dropped++; continue; }
    const [layer, p] = e as unknown[];
    if (typeof layer !== 'number' || !Number.isInteger(layer) || layer < 0 || layer >= layerCount
      || typeof p !== 'string' || p.length === 0 || p.length > MAX_PREFETCH_PATH) { dropped++; continue; }
    const parts = p.split('/').filter((c) => c !== '');
    if (parts.length === 0 || parts.some((c) => c === '.' || c === '..' || c.includes('\0'))) { dropped++; continue; }
    prefetch.push({ layer, path: '/' + parts.join('/') });
  }
  return { prefetch, prefetchDropped: dropped };
}

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
    return { version: '0', origin: '', layers, prefetch: [], prefetchDropped: 0 };
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
  return { version, origin: typeof o.origin === 'string' ? o.origin : '', layers, ...prefetchOf(o.prefetch, layers.length) };
}

// ---- writing thin.json (thin commits) ------------------------------------------------------

const SCHEMA_DIGEST = /^(sha256:)?[0-9a-f]{64}$/;
const SCHEMA_URL = /^cvmfs:\/\/[^/]+\/.+$/;

/**
 * The JSON Schema of thin-images-and-layout.md §2.2, checked by hand (no validator dependency):
 * the reasons a document fails it, empty when it passes.
 */
export function thinSchemaErrors(doc: unknown): string[] {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return ['the descriptor is not a JSON object'];
  const o = doc as Record<string, unknown>;
  const errs: string[] = [];
  if (typeof o.version !== 'string') errs.push('"version" is missing or not a string');
  for (const k of ['min_version', 'origin', 'comment'] as const) if (k in o && typeof o[k] !== 'string') errs.push(`"${k}" is not a string`);
  if (!('layers' in o)) errs.push('"layers" is missing');
  else if (o.layers !== null && !Array.isArray(o.layers)) errs.push('"layers" is neither a list nor null');
  else {
    for (const [i, l] of ((o.layers ?? []) as unknown[]).entries()) {
      if (l === null || typeof l !== 'object' || Array.isArray(l)) { errs.push(`layer ${i + 1} is not an object`); continue; }
      const e = l as Record<string, unknown>;
      if (typeof e.digest !== 'string' || !SCHEMA_DIGEST.test(e.digest)) errs.push(`layer ${i + 1} "digest" ${JSON.stringify(e.digest)} is not sha256 hex`);
      if ('url' in e && (typeof e.url !== 'string' || !SCHEMA_URL.test(e.url))) errs.push(`layer ${i + 1} "url" ${JSON.stringify(e.url)} is not cvmfs://<repository>/<path>`);
    }
  }
  return errs;
}

/** The URL of a located layer, as thin.json writes it. */
export const thinUrlOf = (l: ThinLayer): string => `cvmfs://${l.fqrn}${l.path}`;

/**
 * A thin commit's descriptor (R1): the parent's layers, base first, with the new layer appended
 * as the top-most; version 1.0, the parent's origin kept; two-space indentation and a final newline
 * as the Go producers write it. What fails the schema (§2.2) or our own reader is never returned
 * (R6): the caller gets DRIVER_THIN_INVALID instead.
 */
export function appendedThinJson(parent: ThinDescriptor, layer: { readonly digest: string; readonly url: string }): Buffer {
  const layers = [...parent.layers.map((l) => ({ digest: l.digest, url: thinUrlOf(l) })), { digest: layer.digest.replace(/^sha256:/, ''), url: layer.url }];
  // The parent's access list stays valid: its layer indexes are unchanged below the new top layer.
  const prefetch = parent.prefetch.length ? { prefetch: { version: 1, files: parent.prefetch.map((e) => [e.layer, e.path.slice(1)]) } } : {};
  const doc = { version: '1.0', ...(parent.origin ? { origin: parent.origin } : {}), layers, ...prefetch };
  const errs = thinSchemaErrors(doc);
  if (errs.length) throw invalid('thin.json', `the committed descriptor would fail the schema: ${errs.join('; ')}`);
  const bytes = Buffer.from(JSON.stringify(doc, null, 2) + '\n');
  parseThin('thin.json', bytes);
  return bytes;
}
