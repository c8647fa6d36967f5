/**
 * FUSE mount of a Repository (docs/cvmfs-format.md §13.8), translation only: each operation maps
 * to a Repository call, and failures map to an errno here, once, by error kind. The process that
 * serves the mount must never read it synchronously (it would deadlock): every handler is async.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import nodePath from 'node:path';
import Fuse, { type FuseStat } from 'fuse-native';
import { CvmfsError, isCvmfsError } from '../errors.js';
import type { Dirent, Repository } from '../reader/repository.js';
import { nameRole, OPAQUE_MARKER, OVERLAY_XATTR_PREFIX, WHITEOUT_PREFIX } from '../tar/entry-rules.js';

const ENODATA = -61;

export interface MountOptions {
  readonly mountpoint: string;
  readonly allowOther?: boolean;
  readonly debug?: boolean;
  /** Kernel attribute and entry cache lifetime. */
  readonly kernelCacheSeconds?: number;
  /**
   * Present AUFS-style whiteouts, as image layers store them, in overlayfs form
   * (thin-images-and-layout.md §5.3a): `.wh.<name>` appears as a 0/0 character device `<name>`,
   * `.wh..wh..opq` as `trusted.overlay.opaque=y` on its directory, and the marker files vanish,
   * as do the `.cvmfscatalog` markers that nested catalogs put in a layer directory.
   */
  readonly overlayWhiteouts?: boolean;
  /** Owners as presented, e.g. shifted into a user namespace's host range; stored owners by default. */
  readonly owner?: (uid: number, gid: number) => { uid: number; gid: number };
  readonly log?: (line: string) => void;
}

const WH = WHITEOUT_PREFIX;
const OPAQUE = OPAQUE_MARKER;
const OPAQUE_XATTR = 'trusted.overlay.opaque';
const S_IFCHR = 0o020000;
const CATALOG_MARKERS = new Set(['.cvmfscatalog', '.cvmfsautocatalog']);

export interface Mount {
  readonly mountpoint: string;
  /** Unmounts (a no-op when someone else already did); the repository's open files are its own. */
  unmount(): Promise<void>;
  /** Resolves when the mount went away by other means (`fusermount -u`, `umount -l`). */
  readonly gone: Promise<void>;
}

const GONE_POLL_MS = 1000;

/** fuse-native's addon, the one its module loaded (node-gyp-build caches it). */
const require = createRequire(import.meta.url);
const fuseBinding = (require('node-gyp-build') as (dir: string) => { fuse_native_unmount(mnt: string, thread: Buffer): void })(
  nodePath.dirname(require.resolve('fuse-native')));

/** Whether `dir` is a mount point now (/proc/self/mountinfo, octal escapes decoded). */
export function isMountPoint(dir: string): boolean {
  const want = nodePath.resolve(dir);
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))) === want);
}

const ERANGE = -34;
type Signal = (result: number, buf: ArrayBufferLike) => void;
type XattrCallback<T> = (err: number, value?: T) => void;

/**
 * Two fixes to fuse-native 2.2, at its protocol edge:
 * - it has no `use_ino` option, without which libfuse invents inode numbers; read-only too;
 * - its xattr replies ignore the caller's buffer size (the kernel then rejects the reply and the
 *   caller sees EIO): answer the size for a size-0 probe, ERANGE when the buffer is too small.
 */
class CvmfsFuse extends Fuse {
  /**
   * fuse-native's close runs `fusermount -uz` and gives up when it fails, which it does after an
   * external unmount ("Invalid argument"): its thread handle then keeps the process alive. A
   * mount that is already gone only needs that handle released.
   */
  _close(cb: (err: Error | null) => void): void {
    const self = this as unknown as { mnt: string; _thread: Buffer };
    execFile('fusermount', ['-uz', self.mnt], (err) => {
      if (err && isMountPoint(self.mnt)) { cb(Object.assign(err, { unmountFailure: true })); return; }
      try { fuseBinding.fuse_native_unmount(self.mnt, self._thread); } catch (e) { cb(e as Error); return; }
      cb(null);
    });
  }

  protected override _fuseOptions(): string {
    const base = super._fuseOptions();
    return (base ? `${base},` : '-o') + 'use_ino,ro,default_permissions';
  }

  private get handlers(): { getxattr: (p: string, n: string, pos: number, cb: XattrCallback<Buffer>) => void; listxattr: (p: string, cb: XattrCallback<string[]>) => void } {
    return (this as unknown as { ops: CvmfsFuse['handlers'] }).ops;
  }

  _op_getxattr(signal: Signal, path: string, name: string, valueBuf: Buffer, position: number): void {
    this.handlers.getxattr(path, name, position, (err, value) => {
      if (err) return signal(err, valueBuf.buffer);
      if (!value) return signal(ENODATA, valueBuf.buffer);
      if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer);
      if (value.length > valueBuf.length) return signal(ERANGE, valueBuf.buffer);
      value.copy(valueBuf);
      return signal(value.length, valueBuf.buffer);
    });
  }

  _op_listxattr(signal: Signal, path: string, listBuf: Buffer): void {
    this.handlers.listxattr(path, (err, list) => {
      if (err || !list) return signal(err || ENODATA, listBuf.buffer);
      const bytes = Buffer.concat(list.map((n) => Buffer.from(n + '\0')));
      if (listBuf.length === 0) return signal(bytes.length, listBuf.buffer);
      if (bytes.length > listBuf.length) return signal(ERANGE, listBuf.buffer);
      bytes.copy(listBuf);
      return signal(bytes.length, listBuf.buffer);
    });
  }
}

function errnoOf(err: unknown): number {
  if (!isCvmfsError(err)) return Fuse.EIO;
  switch (err.code) {
    case 'CVMFS_NOT_A_DIRECTORY': return Fuse.ENOTDIR;
    case 'CVMFS_NOT_A_FILE': return Fuse.EISDIR;
    case 'CVMFS_NO_XATTR': return ENODATA;
    default: break;
  }
  switch (err.kind) {
    case 'not-found': return Fuse.ENOENT;
    case 'invalid-input': return Fuse.EINVAL;
    case 'busy': return Fuse.EBUSY;
    default: return Fuse.EIO;
  }
}

function toStat(d: Dirent): FuseStat {
  const ms = d.mtime * 1000 + Math.floor((d.mtimens ?? 0) / 1e6);
  const size = Number(d.size);
  return {
    mode: d.mode, uid: d.uid, gid: d.gid, size, dev: 1, nlink: d.linkcount, ino: d.inode, rdev: Number(d.rdev),
    blksize: 4096, blocks: 1 + Math.floor(size / 512), atime: ms, mtime: ms, ctime: ms,
  };
}

/** FUSE paths are "/", "/a/b"; the repository API takes the same. */
export async function mountRepository(repo: Repository, o: MountOptions): Promise<Mount> {
  const log = o.log ?? (() => {});
  const fail = (op: string, path: string, err: unknown): number => {
    const errno = errnoOf(err);
    if (errno === Fuse.EIO) log(`${op} ${path}: ${(err as Error).message}`);
    return errno;
  };
  const owner = o.owner;
  const statOf = owner ? (d: Dirent): FuseStat => { const st = toStat(d); return { ...st, ...owner(st.uid, st.gid) }; } : toStat;
  const ttl = o.kernelCacheSeconds ?? 60;
  const wh = o.overlayWhiteouts ?? false;
  const baseName = (p: string) => p.slice(p.lastIndexOf('/') + 1);
  const dirName = (p: string) => p.slice(0, Math.max(0, p.lastIndexOf('/')));
  /** stat with whiteout translation: markers are hidden; a missing name with a marker is a 0/0 device. */
  const statView = async (path: string) => {
    if (!wh) return statOf(await repo.stat(path));
    const base = baseName(path);
    if (base.startsWith(WH) || CATALOG_MARKERS.has(base)) throw new CvmfsError('CVMFS_PATH_NOT_FOUND', `${path} is a marker, hidden in overlay form`);
    try {
      return statOf(await repo.stat(path));
    } catch (err) {
      const marker = await repo.stat(`${dirName(path)}/${WH}${base}`).catch(() => undefined);
      if (!marker) throw err;
      return { ...statOf(marker), mode: S_IFCHR, rdev: 0, size: 0, nlink: 1 };
    }
  };
  const fuse = new CvmfsFuse(o.mountpoint, {
    getattr: (path, cb) => { statView(path).then((st) => cb(0, st), (e) => cb(fail('getattr', path, e))); },
    readdir: (path, cb) => {
      repo.readdir(path).then((ds) => {
        if (!wh) { cb(0, ds.map((d) => d.name), ds.map(statOf)); return; }
        const names: string[] = [];
        const stats: FuseStat[] = [];
        const present = new Set(ds.map((d) => d.name));
        for (const d of ds) {
          if (d.name === OPAQUE || CATALOG_MARKERS.has(d.name)) continue;
          if (d.name.startsWith(WH)) {
            const role = nameRole(d.name);
            if (role?.kind !== 'whiteout') {
              // `.wh.`, `.wh..`, `.wh...` would show as '', '.' or '..'; AUFS bookkeeping stays hidden.
              if (role === undefined) log(`readdir ${path}: ${new CvmfsError('CVMFS_BAD_CATALOG', `the whiteout ${JSON.stringify(d.name)} names no valid file; hidden`).message}`);
              continue;
            }
            const shown = role.target;
            if (present.has(shown)) continue;
            names.push(shown);
            stats.push({ ...statOf(d), mode: S_IFCHR, rdev: 0, size: 0, nlink: 1 });
            continue;
          }
          names.push(d.name);
          stats.push(statOf(d));
        }
        cb(0, names, stats);
      }, (e) => cb(fail('readdir', path, e)));
    },
    // No open or release: the mount is read-only (the kernel refuses writes with EROFS) and reads
    // go by path (Repository.readAt), which saves two round trips to this thread per file.
    read: (path, _fd, buf, len, pos, cb) => {
      repo.readAt(path, buf, 0, len, pos).then((n) => cb(n), (e) => cb(fail('read', path, e)));
    },
    readlink: (path, cb) => { repo.readlink(path).then((t) => cb(0, t), (e) => cb(fail('readlink', path, e))); },
    getxattr: (path, name, _pos, cb) => {
      if (wh && name === OPAQUE_XATTR) {
        repo.stat(`${path === '/' ? '' : path}/${OPAQUE}`).then(() => cb(0, Buffer.from('y')), () => cb(ENODATA));
        return;
      }
      // overlayfs reads its own attributes from lower layers: only whiteout markers may set them.
      if (wh && name.startsWith(OVERLAY_XATTR_PREFIX)) { cb(ENODATA); return; }
      repo.getxattr(path, name).then((v) => cb(0, v), (e) => cb(fail('getxattr', path, e)));
    },
    listxattr: (path, cb) => {
      repo.listxattr(path).then((l) => cb(0, wh ? l.filter((n) => !n.startsWith(OVERLAY_XATTR_PREFIX)) : l), (e) => cb(fail('listxattr', path, e)));
    },
    statfs: (_path, cb) => {
      let files = 0;
      try {
        const t = repo.totals();
        files = Number(t.regular + t.dir + t.symlink + t.special);
      } catch (err) { log(`statfs: ${(err as Error).message}`); } // counters are statistics, never a reason to fail
      const c = repo.counters();
      const blocks = Math.max(1, Math.ceil(c.cacheUsedBytes / 4096));
      cb(0, { bsize: 4096, frsize: 4096, blocks, bfree: 0, bavail: 0, files, ffree: 0, favail: 0, fsid: 0x6376, flag: 1, namemax: 255 });
    },
  }, {
    force: true, mkdir: false, timeout: false, autoCache: true, entryTimeout: ttl, attrTimeout: ttl,
    fsname: `cvmfs2-${repo.fqrn}`, subtype: 'cvmfs', ...(o.allowOther ? { allowOther: true } : {}), ...(o.debug ? { debug: true } : {}),
  });
  await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(new CvmfsError('CVMFS_BAD_ARGUMENT', `FUSE mount at ${o.mountpoint} failed: ${err.message}`, { cause: err })) : resolve())));
  let unmounted = false;
  let markGone!: () => void;
  const gone = new Promise<void>((r) => { markGone = r; });
  const poll = setInterval(() => { if (!isMountPoint(o.mountpoint)) { clearInterval(poll); markGone(); } }, GONE_POLL_MS);
  poll.unref();
  return {
    mountpoint: o.mountpoint,
    gone,
    unmount: async () => {
      if (unmounted) return;
      unmounted = true;
      clearInterval(poll);
      await new Promise<void>((resolve, reject) => fuse.unmount((err) => (err ? reject(err) : resolve())));
      // fuse-native never deletes its native references to the instance and its handlers, so the
      // instance outlives the mount: cut what it holds, or every repository ever mounted stays.
      (fuse as unknown as { ops: object }).ops = {};
      markGone();
    },
  };
}
