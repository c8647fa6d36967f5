/**
 * ApplyDiff: extracts a Docker/OCI layer tar into a layer's diff directory in overlay form
 * (docker-graphdriver-protocol.md §6.1): `.wh.<name>` becomes a 0/0 character device `<name>`,
 * `<dir>/.wh..wh..opq` becomes `trusted.overlay.opaque=y` on `<dir>`. Owners, modes, times,
 * xattrs, hardlinks, symlinks, devices and FIFOs are kept. Nothing is written through a symlink:
 * every parent is checked with lstat. The body is always read to EOF. Owners are shifted into the
 * host range of the daemon's user namespace map, if it has one.
 *
 * Node has no mknod or setxattr: those go through the `mknod` and `setfattr` binaries (few per
 * layer). Directory times are set last, deepest first, since adding children changes them.
 */
import { execFile } from 'node:child_process';
import { chmodSync, createWriteStream, lchownSync, lutimesSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { installPaxDecoder, paxBytes } from '../cvmfs/writer/tar-pax.js';
import { DriverError } from './errors.js';
import { IdMapping } from './id-map.js';
import { OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, safeComponents, WHITEOUT_PREFIX } from './tar-paths.js';

const run = promisify(execFile);
const SMALL_FILE = 4 * 1024 * 1024;

async function setXattr(p: string, name: string, value: Buffer): Promise<void> {
  await run('setfattr', ['-h', '-n', name, '-v', `0x${value.toString('hex')}`, '--', p]);
}

async function mknod(p: string, type: 'c' | 'b' | 'p', major = 0, minor = 0): Promise<void> {
  const args = type === 'p' ? ['--', p, 'p'] : ['--', p, type, String(major), String(minor)];
  await run('mknod', args);
}

async function lexists(p: string): Promise<boolean> {
  return fs.lstat(p).then(() => true, () => false);
}

export async function applyDiff(diffDir: string, input: Readable, ids: IdMapping = new IdMapping()): Promise<number> {
  installPaxDecoder();
  const root = path.resolve(diffDir);
  const knownDirs = new Set<string>([root]);
  // Docker applies a layer into a new, empty directory: there, only what this tar made can exist,
  // which saves an lstat per entry.
  const fresh = (await fs.readdir(root)).length === 0;
  const created = new Set<string>();
  /** Removes what an entry replaces; directories below it are no longer known to be safe. */
  const remove = async (p: string) => {
    await fs.rm(p, { recursive: true, force: true });
    for (const d of knownDirs) if (d === p || d.startsWith(`${p}/`)) knownDirs.delete(d);
  };
  const existing = (p: string) => (fresh && !created.has(p) ? Promise.resolve(undefined) : fs.lstat(p).catch(() => undefined));
  const dirTimes: { p: string; mtime: Date }[] = [];
  let size = 0;
  const owner = (h: tar.Header) => ids.toHost(h.uid ?? 0, h.gid ?? 0, `entry "${h.name}"`);
  const root0 = ids.root();

  /**
   * Makes sure every parent of `parts` is a real directory inside the layer, creating missing ones
   * for an entry; for a hardlink target they must exist (else the error `missing`). Nothing may be
   * a symlink: writes and link(2) would follow it out of the layer.
   */
  const parentOf = async (parts: readonly string[], who: string, missing?: string): Promise<string> => {
    let cur = root;
    for (const c of parts.slice(0, -1)) {
      cur = path.join(cur, c);
      if (knownDirs.has(cur)) continue;
      const st = await existing(cur);
      if (!st && missing === undefined) {
        created.add(cur);
        await fs.mkdir(cur, { mode: 0o755 });
        if (!ids.identity) await fs.lchown(cur, root0.uid, root0.gid);
      }
      else if (!st) throw new DriverError('DRIVER_TAR_CORRUPT', missing!);
      else if (st.isSymbolicLink()) throw new DriverError('DRIVER_TAR_PATH_ESCAPE', `${who} ${missing === undefined ? 'would be written' : 'points'} through the symlink ${path.relative(root, cur)}`);
      else if (!st.isDirectory()) throw new DriverError('DRIVER_TAR_CORRUPT', `${who}: ${path.relative(root, cur)} is not a directory`);
      knownDirs.add(cur);
    }
    return cur;
  };

  const extract = tar.extract();
  // pipe, not pipeline: on a bad entry the request must survive, so the plugin can drain it and
  // answer with the error instead of dropping the daemon's connection.
  input.pipe(extract as unknown as NodeJS.WritableStream);
  const done = new Promise<void>((resolve, reject) => {
    extract.on('finish', () => resolve());
    extract.on('error', (err: Error) => reject(err instanceof DriverError ? err
      : new DriverError('DRIVER_TAR_CORRUPT', `layer tar is truncated or corrupt: ${err.message}`, { cause: err })));
    input.on('error', (err: Error) => reject(new DriverError('DRIVER_TAR_CORRUPT', `layer upload failed: ${err.message}`, { cause: err })));
  });
  done.catch(() => {});
  try {
    for await (const entry of extract) {
      const h = entry.header;
      const parts = safeComponents(h.name);
      if (parts.length === 0) {
        if (h.type === 'directory') {
          await fs.chmod(root, (h.mode ?? 0o755) & 0o7777);
          const o = owner(h);
          await fs.lchown(root, o.uid, o.gid);
          dirTimes.push({ p: root, mtime: h.mtime ?? new Date() });
        }
        entry.resume();
        continue;
      }
      const dir = await parentOf(parts, `entry "${h.name}"`);
      const base = parts[parts.length - 1]!;
      if (base === OPAQUE_MARKER) {
        await setXattr(dir, OVERLAY_OPAQUE_XATTR, Buffer.from('y'));
        entry.resume();
        continue;
      }
      if (base.startsWith(WHITEOUT_PREFIX)) {
        const target = path.join(dir, base.slice(WHITEOUT_PREFIX.length));
        await remove(target);
        await mknod(target, 'c', 0, 0);
        created.add(target);
        if (!ids.identity) await fs.lchown(target, root0.uid, root0.gid);
        entry.resume();
        continue;
      }
      const p = path.join(dir, base);
      const st = await existing(p);
      if (st && !(st.isDirectory() && h.type === 'directory')) await remove(p);
      const mode = (h.mode ?? 0o644) & 0o7777;
      created.add(p);
      switch (h.type) {
        case 'directory':
          if (!st?.isDirectory()) await fs.mkdir(p, { mode });
          await fs.chmod(p, mode);
          knownDirs.add(p);
          dirTimes.push({ p, mtime: h.mtime ?? new Date() });
          break;
        case 'file':
        case 'contiguous-file':
          if ((h.size ?? 0) <= SMALL_FILE) {
            // One write instead of one per chunk of the request body.
            const chunks: Buffer[] = [];
            for await (const c of entry) chunks.push(c as Buffer);
            await fs.writeFile(p, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), { mode });
          } else {
            await pipeline(entry, createWriteStream(p, { mode }));
          }
          chmodSync(p, mode);
          size += h.size ?? 0;
          break;
        case 'symlink':
          await fs.symlink(h.linkname ?? '', p);
          break;
        case 'link': {
          const targetParts = safeComponents(h.linkname ?? '', `hardlink target of "${h.name}"`);
          const notHere = `hardlink "${h.name}" points to "${h.linkname}", which is not in this layer`;
          const target = path.join(await parentOf(targetParts, `hardlink "${h.name}"`, notHere), targetParts[targetParts.length - 1]!);
          if (!(await lexists(target))) throw new DriverError('DRIVER_TAR_CORRUPT', notHere);
          await fs.link(target, p);
          entry.resume();
          continue;
        }
        case 'character-device':
        case 'block-device':
          await mknod(p, h.type === 'character-device' ? 'c' : 'b', h.devmajor ?? 0, h.devminor ?? 0);
          chmodSync(p, mode);
          break;
        case 'fifo':
          await mknod(p, 'p');
          chmodSync(p, mode);
          break;
        default:
          throw new DriverError('DRIVER_TAR_CORRUPT', `entry "${h.name}" has the unsupported tar type "${String(h.type)}"`);
      }
      // Metadata calls are synchronous, as in tar -x: a thread-pool round trip each would cost more.
      const o = owner(h);
      lchownSync(p, o.uid, o.gid);
      if (h.type !== 'directory' && (mode & 0o6000)) chmodSync(p, mode); // chown clears setuid/setgid
      for (const [k, v] of Object.entries((h.pax ?? {}) as Record<string, string>)) {
        if (k.startsWith('SCHILY.xattr.')) await setXattr(p, k.slice('SCHILY.xattr.'.length), paxBytes(v));
      }
      if (h.type !== 'directory') lutimesSync(p, h.mtime ?? new Date(), h.mtime ?? new Date());
      entry.resume();
    }
  } catch (err) {
    input.unpipe(extract as unknown as NodeJS.WritableStream);
    extract.destroy();
    if (err instanceof DriverError) throw err;
    throw new DriverError('DRIVER_IO_FAILED', `applying the layer failed: ${(err as Error).message}`, { cause: err });
  }
  await done;
  dirTimes.sort((a, b) => b.p.length - a.p.length);
  for (const d of dirTimes) await fs.lutimes(d.p, d.mtime, d.mtime);
  return size;
}
