/**
 * Diff, Changes and DiffSize of a layer against its parent, from the layer's own diff directory
 * (the overlay upper dir), and Diff of several layers squashed (docker build --squash): a 0/0
 * character device is a deletion, emitted as `.wh.<name>`; a directory with
 * `trusted.overlay.opaque=y` gets a `.wh..wh..opq` entry. Hardlinks within the
 * layer are emitted once as a file and then as links. xattrs are read with one `getfattr -R`.
 */
import { execFile } from 'node:child_process';
import { createReadStream, type Stats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { IdMapping } from './id-map.js';
import { OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX } from './tar-paths.js';

const run = promisify(execFile);

export interface WalkEntry { readonly rel: string; readonly abs: string; readonly st: Stats }

/** Depth-first, parents before children, names in byte order. */
export async function* walk(root: string, rel = ''): AsyncGenerator<WalkEntry> {
  const dir = rel ? path.join(root, rel) : root;
  const names = (await fs.readdir(dir)).sort();
  for (const n of names) {
    const r = rel ? `${rel}/${n}` : n;
    const abs = path.join(root, r);
    const st = await fs.lstat(abs);
    yield { rel: r, abs, st };
    if (st.isDirectory()) yield* walk(root, r);
  }
}

export const isWhiteout = (st: Stats): boolean => st.isCharacterDevice() && st.rdev === 0;

/** All xattrs below `root` (paths relative to it), names → bytes; overlay's own are dropped. */
export async function readXattrs(root: string): Promise<Map<string, Map<string, Buffer>>> {
  const out = new Map<string, Map<string, Buffer>>();
  let text = '';
  try {
    text = (await run('getfattr', ['-R', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root], { maxBuffer: 1 << 28 })).stdout;
  } catch (err) {
    text = (err as { stdout?: string }).stdout ?? '';
  }
  let cur: Map<string, Buffer> | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('# file: ')) {
      const abs = line.slice(8).replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
      cur = new Map();
      out.set(path.relative(root, abs), cur);
    } else if (cur && line.includes('=0x')) {
      const eq = line.indexOf('=');
      cur.set(line.slice(0, eq), Buffer.from(line.slice(eq + 3), 'hex'));
    }
  }
  return out;
}

function header(rel: string, st: Stats, extra: Partial<tar.Header>, xattrs: Map<string, Buffer> | undefined, ids: IdMapping): tar.Header {
  const pax: Record<string, string> = {};
  for (const [k, v] of xattrs ?? []) if (!k.startsWith('trusted.overlay.')) pax[`SCHILY.xattr.${k}`] = v.toString('latin1');
  return { name: rel, mode: st.mode & 0o7777, ...ids.toContainer(st.uid, st.gid), mtime: st.mtime, ...extra,
    ...(Object.keys(pax).length ? { pax } : {}) } as tar.Header;
}

export interface DiffTarOptions {
  /** The last layer sits on nothing: deletions and opaque markers have nothing to act on. */
  readonly base?: boolean;
  /** The daemon's user namespace map: stored (host) owners go out as container owners. */
  readonly ids?: IdMapping;
}

const lstatOrNone = (p: string) => fs.lstat(p).catch(() => undefined);

/**
 * The layer tar of one diff directory, or of several (top first) squashed into one: for each
 * path the top-most layer that has it wins; a deletion, a non-directory or an opaque directory in
 * one layer hides the layers below it, and a directory that hides the layers below the squashed
 * range gets an opaque marker.
 */
export function diffTar(diffDirs: string | readonly string[], o: DiffTarOptions = {}): Readable {
  const dirs = typeof diffDirs === 'string' ? [diffDirs] : [...diffDirs];
  const ids = o.ids ?? new IdMapping();
  const pack = tar.pack();
  const add = (h: tar.Header, body?: Buffer | Readable) => new Promise<void>((resolve, reject) => {
    const cb = (err?: Error | null) => (err ? reject(err) : resolve());
    if (body === undefined) pack.entry(h, cb);
    else if (Buffer.isBuffer(body)) pack.entry(h, body, cb);
    else { const s = pack.entry(h, cb); body.on('error', reject); body.pipe(s); }
  });
  const marker = (name: string, mtime: Date) => add({ name, type: 'file', size: 0, mode: 0, mtime } as tar.Header, Buffer.alloc(0));
  void (async () => {
    const xattrs = await Promise.all(dirs.map((d) => readXattrs(d)));
    const opaque = (layer: number, rel: string) => xattrs[layer]!.get(rel)?.get(OVERLAY_OPAQUE_XATTR)?.toString() === 'y';
    const seenInodes = new Map<string, string>();

    const visit = async (rel: string, layers: readonly number[]): Promise<void> => {
      const names = new Set<string>();
      for (const i of layers) for (const n of await fs.readdir(rel ? path.join(dirs[i]!, rel) : dirs[i]!).catch(() => [] as string[])) names.add(n);
      for (const name of [...names].sort()) {
        const r = rel ? `${rel}/${name}` : name;
        let top = -1;
        let st: Stats | undefined;
        for (const i of layers) { st = await lstatOrNone(path.join(dirs[i]!, r)); if (st) { top = i; break; } }
        if (!st) continue;
        const abs = path.join(dirs[top]!, r);
        const x = xattrs[top]!.get(r);
        if (isWhiteout(st)) {
          if (!o.base) await marker(rel ? `${rel}/${WHITEOUT_PREFIX}${name}` : `${WHITEOUT_PREFIX}${name}`, st.mtime);
        } else if (st.isDirectory()) {
          const below: number[] = [top];
          let hides = opaque(top, r);
          for (const j of layers.slice(layers.indexOf(top) + 1)) {
            if (hides) break;
            const sj = await lstatOrNone(path.join(dirs[j]!, r));
            if (!sj) continue;
            if (!sj.isDirectory()) { hides = true; break; }
            below.push(j);
            hides = opaque(j, r);
          }
          await add(header(`${r}/`, st, { type: 'directory' }, x, ids));
          if (hides && !o.base) await marker(`${r}/${OPAQUE_MARKER}`, st.mtime);
          await visit(r, below);
        } else if (st.isSymbolicLink()) {
          await add(header(r, st, { type: 'symlink', linkname: await fs.readlink(abs) }, x, ids));
        } else if (st.isFile()) {
          const key = `${st.dev}:${st.ino}`;
          const first = st.nlink > 1 ? seenInodes.get(key) : undefined;
          if (first !== undefined) { await add(header(r, st, { type: 'link', linkname: first }, x, ids)); continue; }
          if (st.nlink > 1) seenInodes.set(key, r);
          await add(header(r, st, { type: 'file', size: st.size }, x, ids), createReadStream(abs));
        } else if (st.isCharacterDevice() || st.isBlockDevice()) {
          await add(header(r, st, { type: st.isCharacterDevice() ? 'character-device' : 'block-device',
            devmajor: Math.floor(st.rdev / 256) & 0xfff, devminor: (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00) }, x, ids));
        } else if (st.isFIFO()) {
          await add(header(r, st, { type: 'fifo' }, x, ids));
        }
      }
    };
    await visit('', dirs.map((_, i) => i));
    pack.finalize();
  })().catch((err: Error) => pack.destroy(err));
  return pack as unknown as Readable;
}

export interface Change { readonly Path: string; readonly Kind: 0 | 1 | 2 }

/** Changes of a diff directory against the lower diff directories (nearest first). */
export async function changesOf(diffDir: string, lowerDiffDirs: readonly string[]): Promise<Change[]> {
  const out: Change[] = [];
  const inLower = async (rel: string) => {
    for (const l of lowerDiffDirs) {
      const st = await lstatOrNone(path.join(l, rel));
      if (st) return !isWhiteout(st);
    }
    return false;
  };
  for await (const e of walk(diffDir)) {
    if (isWhiteout(e.st)) { out.push({ Path: `/${e.rel}`, Kind: 2 }); continue; }
    out.push({ Path: `/${e.rel}`, Kind: (await inLower(e.rel)) ? 0 : 1 });
  }
  return out;
}

/** Sum of regular-file sizes, as the built-in drivers report. */
export async function diffSize(diffDir: string): Promise<number> {
  let n = 0;
  for await (const e of walk(diffDir)) if (e.st.isFile()) n += e.st.size;
  return n;
}
