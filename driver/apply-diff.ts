/**
 * ApplyDiff: extracts a Docker/OCI layer tar into a layer's diff directory in overlay form
 * (docker-graphdriver-protocol.md §6.1): `.wh.<name>` becomes a 0/0 character device `<name>`,
 * `<dir>/.wh..wh..opq` becomes `trusted.overlay.opaque=y` on `<dir>`, other `.wh..wh.*` (AUFS
 * bookkeeping) are skipped as Docker skips them. Owners, modes, times, xattrs, hardlinks,
 * symlinks, devices and FIFOs are kept. Owners are shifted into the host range of the daemon's
 * user namespace map, if it has one.
 *
 * Safety model: the entry rules are cvmfs/tar's, shared with the writer. Every parent is checked
 * with lstat (or known, because this tar made it), so nothing is written through a symlink; at
 * the final component no call follows a symlink either: files are created O_EXCL|O_NOFOLLOW and
 * changed through their descriptor, other modes go through safe-fs, owners and times through the
 * l* calls, xattrs through `setfattr -h`. A directory removed by a later entry takes its pending
 * time update with it, so that the final pass never reaches through a replacement symlink.
 *
 * Settling: the call ends when the tar does, when the upload fails or is cut off, or when no byte
 * arrives for `idleTimeoutMs`; on any failure what this call wrote is removed (Docker applies
 * into a new, empty directory, which is left empty again).
 *
 * Node has no mknod or setxattr: those go through the `mknod` and `setfattr` binaries (few per
 * layer). Directory times are set last, deepest first, since adding children changes them.
 */
import { execFile } from 'node:child_process';
import { lchownSync, lutimesSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { checkEntry, EndMarkerTap, installPaxDecoder, refuseEntriesAfterEndMarker, type CheckedEntry, type TarFail, type TarViolation } from '../cvmfs/tar/index.js';
import { DriverError, type DriverErrorCode } from './errors.js';
import { IdMapping } from './id-map.js';
import { chmodNoFollow, createExclusive } from './safe-fs.js';
import { OVERLAY_OPAQUE_XATTR } from './tar-paths.js';

const run = promisify(execFile);
const SMALL_FILE = 4 * 1024 * 1024;
export const DEFAULT_APPLY_IDLE_TIMEOUT_MS = 120_000;

const TAR_CODES: Readonly<Record<TarViolation, DriverErrorCode>> = {
  'path-escape': 'DRIVER_TAR_PATH_ESCAPE', 'bad-whiteout': 'DRIVER_TAR_BAD_WHITEOUT', 'bad-name': 'DRIVER_TAR_BAD_ENTRY',
  'name-too-long': 'DRIVER_TAR_BAD_ENTRY', 'path-too-long': 'DRIVER_TAR_BAD_ENTRY', 'bad-owner': 'DRIVER_TAR_BAD_ENTRY',
  'bad-xattr': 'DRIVER_TAR_BAD_ENTRY', 'bad-time': 'DRIVER_TAR_BAD_ENTRY', 'unsupported-type': 'DRIVER_TAR_CORRUPT',
};
const tarFail: TarFail = (v, message) => new DriverError(TAR_CODES[v], message);

export interface ApplyOptions {
  readonly ids?: IdMapping;
  /** The upload fails when no byte arrives for this long. */
  readonly idleTimeoutMs?: number;
}

async function setXattr(p: string, name: string, value: Buffer): Promise<void> {
  await run('setfattr', ['-h', '-n', name, '-v', `0x${value.toString('hex')}`, '--', p]);
}

async function mknod(p: string, type: 'c' | 'b' | 'p', major = 0, minor = 0): Promise<void> {
  const args = type === 'p' ? ['--', p, 'p'] : ['--', p, type, String(major), String(minor)];
  await run('mknod', args);
}

/** Errors of a metadata or link call that the entry itself caused. */
const ENTRY_ERRNOS: ReadonlySet<string> = new Set(['EPERM', 'EINVAL', 'ENOTDIR', 'EISDIR', 'EEXIST', 'ENAMETOOLONG', 'EMLINK', 'ENOTSUP', 'EOPNOTSUPP', 'ERANGE', 'E2BIG', 'ENOTEMPTY']);

async function emptyDir(dir: string): Promise<void> {
  for (const n of await fs.readdir(dir)) await fs.rm(path.join(dir, n), { recursive: true, force: true });
}

export async function applyDiff(diffDir: string, input: Readable, o: ApplyOptions = {}): Promise<number> {
  installPaxDecoder();
  const ids = o.ids ?? new IdMapping();
  const idleMs = o.idleTimeoutMs ?? DEFAULT_APPLY_IDLE_TIMEOUT_MS;
  const root = path.resolve(diffDir);
  const rootBefore = await fs.lstat(root);
  // Docker applies a layer into a new, empty directory: there, only what this tar made can exist,
  // which saves an lstat per entry.
  const fresh = (await fs.readdir(root)).length === 0;

  const extract = tar.extract();
  refuseEntriesAfterEndMarker(extract);
  let failure: DriverError | undefined;
  const abort = (err: DriverError) => {
    if (failure) return;
    failure = err;
    extract.destroy(err);
  };
  let lastByteMs = Date.now();
  const onData = () => { lastByteMs = Date.now(); };
  const onError = (err: Error) => abort(err instanceof DriverError ? err
    : new DriverError('DRIVER_UPLOAD_ABORTED', `the layer upload failed: ${err.message}`, { cause: err }));
  let ended = false;
  const onEnd = () => { ended = true; };
  const onClose = () => {
    if (!ended && (input as { complete?: boolean }).complete !== true) {
      abort(new DriverError('DRIVER_UPLOAD_ABORTED', 'the layer upload was cut off before the end of the tar'));
    }
  };
  input.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose);
  const watchdog = setInterval(() => {
    if (ended || (typeof input.isPaused === 'function' && input.isPaused())) { lastByteMs = Date.now(); return; } // idle is the uploader's, not ours: body ended, or paused by our backpressure
    if (Date.now() - lastByteMs < idleMs) return;
    abort(new DriverError('DRIVER_UPLOAD_STALLED', `no byte of the layer upload arrived for ${idleMs < 1000 ? `${idleMs} ms` : `${Math.round(idleMs / 1000)} s`}`));
  }, Math.max(10, Math.min(1000, idleMs / 4)));

  // pipe, not pipeline: on a bad entry the request must survive, so the plugin can drain it and
  // answer with the error instead of dropping the daemon's connection.
  const tap = new EndMarkerTap();
  input.pipe(tap).pipe(extract as unknown as NodeJS.WritableStream);
  const done = new Promise<void>((resolve, reject) => {
    extract.on('finish', () => resolve());
    extract.on('error', (err: Error) => reject(err));
  });
  done.catch(() => {});
  try {
    const size = await extractInto(root, extract, fresh, ids);
    await done;
    // A body cut at an entry boundary (a closed upload) parses as a shorter, valid-looking tar.
    if (!tap.endsWithZeroBlock()) throw new DriverError('DRIVER_TAR_CORRUPT', 'the layer tar ends without its end-of-archive marker: the upload was cut short');
    return size;
  } catch (err) {
    if (typeof input.unpipe === 'function') input.unpipe(tap);
    tap.unpipe();
    extract.destroy();
    const coded = failure ?? (err instanceof DriverError ? err : tarCorrupt(err));
    if (fresh) {
      // Leave the layer as it was: empty, with its own mode and owner.
      await emptyDir(root).catch(() => {});
      await fs.chmod(root, rootBefore.mode & 0o7777).catch(() => {});
      await fs.lchown(root, rootBefore.uid, rootBefore.gid).catch(() => {});
    }
    throw coded;
  } finally {
    clearInterval(watchdog);
    input.off('data', onData).off('end', onEnd).off('close', onClose);
    // An 'error' listener stays, so that a late error of a drained request is never unhandled.
    input.off('error', onError).on('error', () => {});
  }
}

/** What tar-stream raises while reading headers or bodies: the archive is malformed or cut short. */
function tarCorrupt(err: unknown): DriverError {
  return new DriverError('DRIVER_TAR_CORRUPT', `layer tar is truncated or corrupt: ${(err as Error).message}`, { cause: err });
}

async function extractInto(root: string, extract: tar.Extract, fresh: boolean, ids: IdMapping): Promise<number> {
  const knownDirs = new Set<string>([root]);
  const created = new Set<string>();
  /** Pending directory times, applied deepest first at the end. */
  const dirTimes = new Map<string, Date>();
  /** Removes what an entry replaces; what lay below it is no longer known or pending. */
  const remove = async (p: string) => {
    await fs.rm(p, { recursive: true, force: true });
    const below = `${p}/`;
    for (const d of knownDirs) if (d === p || d.startsWith(below)) knownDirs.delete(d);
    for (const d of dirTimes.keys()) if (d === p || d.startsWith(below)) dirTimes.delete(d);
  };
  const existing = (p: string) => (fresh && !created.has(p) ? Promise.resolve(undefined) : fs.lstat(p).catch(() => undefined));
  let size = 0;
  const owner = (e: CheckedEntry) => ids.toHost(e.uid, e.gid, `entry ${JSON.stringify(e.name)}`);
  const root0 = ids.root();
  const timeOf = (e: CheckedEntry) => new Date(e.mtimeSeconds * 1000 + Math.floor((e.mtimeNanos ?? 0) / 1e6));

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
        if (!ids.identity) lchownSync(cur, root0.uid, root0.gid);
      }
      else if (!st) throw new DriverError('DRIVER_TAR_CORRUPT', missing!);
      else if (st.isSymbolicLink()) throw new DriverError('DRIVER_TAR_PATH_ESCAPE', `${who} ${missing === undefined ? 'would be written' : 'points'} through the symlink ${path.relative(root, cur)}`);
      else if (!st.isDirectory()) throw new DriverError('DRIVER_TAR_CORRUPT', `${who}: ${path.relative(root, cur)} is not a directory`);
      knownDirs.add(cur);
    }
    return cur;
  };

  /** Owner, set-ID bits (chown clears them), xattrs and time of what an entry made at `p`. */
  const finish = async (p: string, e: CheckedEntry) => {
    if (e.type !== 'file') { // a file got its owner and mode through its descriptor
      const o = owner(e);
      lchownSync(p, o.uid, o.gid);
      if (e.type !== 'symlink' && e.type !== 'directory' && (e.mode & 0o6000)) chmodNoFollow(p, e.mode);
    }
    for (const [k, v] of e.xattrs) await setXattr(p, k, v);
    if (e.type === 'directory') dirTimes.set(p, timeOf(e));
    else lutimesSync(p, timeOf(e), timeOf(e));
  };

  for await (const entry of extract) {
    const h = entry.header;
    const what = `entry ${JSON.stringify(h.name)}`;
    try {
      const e = checkEntry(h, tarFail);
      if (e.parts.length === 0) {
        if (e.type === 'directory') {
          chmodNoFollow(root, e.mode);
          const o = owner(e);
          lchownSync(root, o.uid, o.gid);
          for (const [k, v] of e.xattrs) await setXattr(root, k, v);
          dirTimes.set(root, timeOf(e));
        }
        entry.resume();
        continue;
      }
      if (e.role.kind === 'aufs-meta') { entry.resume(); continue; }
      const dir = await parentOf(e.parts, what);
      if (e.role.kind === 'opaque') {
        await setXattr(dir, OVERLAY_OPAQUE_XATTR, Buffer.from('y'));
        entry.resume();
        continue;
      }
      if (e.role.kind === 'whiteout') {
        const target = path.join(dir, e.role.target);
        await remove(target);
        await mknod(target, 'c', 0, 0);
        created.add(target);
        if (!ids.identity) lchownSync(target, root0.uid, root0.gid);
        entry.resume();
        continue;
      }
      const p = path.join(dir, e.parts[e.parts.length - 1]!);
      const st = await existing(p);
      if (st && !(st.isDirectory() && e.type === 'directory')) await remove(p);
      created.add(p);
      switch (e.type) {
        case 'directory':
          if (!st?.isDirectory()) await fs.mkdir(p, { mode: e.mode });
          chmodNoFollow(p, e.mode);
          knownDirs.add(p);
          break;
        case 'file': {
          const fh = await createExclusive(p, e.mode);
          try {
            if (e.size <= SMALL_FILE) {
              // One write instead of one per chunk of the request body.
              const chunks: Buffer[] = [];
              for await (const c of entry) chunks.push(c as Buffer);
              await fh.writeFile(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
            } else {
              for await (const c of entry) await fh.writeFile(c as Buffer); // from the current position, whole
            }
            // Through the descriptor: the file just created, whatever its name points to now.
            const o = owner(e);
            await fh.chown(o.uid, o.gid);
            await fh.chmod(e.mode);
          } finally {
            await fh.close();
          }
          size += e.size;
          break;
        }
        case 'symlink':
          await fs.symlink(e.symlinkTarget, p);
          break;
        case 'link': {
          const targetParts = e.linkParts!;
          const notHere = `hardlink ${JSON.stringify(h.name)} points to ${JSON.stringify(h.linkname)}, which is not in this layer`;
          const target = path.join(await parentOf(targetParts, `hardlink ${JSON.stringify(h.name)}`, notHere), targetParts[targetParts.length - 1]!);
          const tst = await fs.lstat(target).catch(() => undefined);
          if (!tst) throw new DriverError('DRIVER_TAR_CORRUPT', notHere);
          if (tst.isDirectory()) throw new DriverError('DRIVER_TAR_BAD_ENTRY', `entry ${JSON.stringify(h.name)} is a hardlink to the directory ${JSON.stringify(h.linkname)}`);
          await fs.link(target, p);
          entry.resume();
          continue;
        }
        case 'character-device':
        case 'block-device':
          await mknod(p, e.type === 'character-device' ? 'c' : 'b', e.devMajor, e.devMinor);
          chmodNoFollow(p, e.mode);
          break;
        case 'fifo':
          await mknod(p, 'p');
          chmodNoFollow(p, e.mode);
          break;
      }
      // Metadata calls are synchronous, as in tar -x: a thread-pool round trip each would cost more.
      await finish(p, e);
      entry.resume();
    } catch (err) {
      if (err instanceof DriverError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      // What the entry asked for was impossible (EPERM, EINVAL, …), or the disk failed (ENOSPC, EIO, …).
      if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) {
        throw new DriverError(ENTRY_ERRNOS.has(code) ? 'DRIVER_TAR_BAD_ENTRY' : 'DRIVER_IO_FAILED', `${what}: ${(err as Error).message}`, { cause: err });
      }
      const cmd = err as { cmd?: string; stderr?: string };
      if (typeof cmd.cmd === 'string') {
        throw new DriverError('DRIVER_TAR_BAD_ENTRY', `${what}: ${cmd.cmd.split(' ')[0]} failed: ${(cmd.stderr ?? '').trim() || (err as Error).message}`, { cause: err });
      }
      if (err instanceof TypeError || err instanceof RangeError || err instanceof ReferenceError) {
        throw new DriverError('DRIVER_INTERNAL', `${what}: ${err.message}`, { cause: err });
      }
      throw tarCorrupt(err); // the body ended early or the stream broke under it
    }
  }
  const dirs = [...dirTimes].sort((a, b) => b[0].length - a[0].length);
  for (const [p, t] of dirs) lutimesSync(p, t, t);
  return size;
}
