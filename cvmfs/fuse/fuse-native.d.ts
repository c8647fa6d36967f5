declare module 'fuse-native' {
  type Cb<T extends unknown[] = []> = (err: number, ...rest: T) => void;
  export interface FuseStat {
    mode: number; uid: number; gid: number; size: number; dev?: number; nlink: number; ino?: number; rdev?: number;
    blksize?: number; blocks?: number; atime: number | Date; mtime: number | Date; ctime: number | Date;
  }
  export interface FuseOps {
    init?(cb: Cb): void;
    statfs?(path: string, cb: Cb<[Record<string, number>]>): void;
    getattr?(path: string, cb: Cb<[FuseStat?]>): void;
    readdir?(path: string, cb: Cb<[string[]?, FuseStat[]?]>): void;
    open?(path: string, flags: number, cb: Cb<[number?]>): void;
    release?(path: string, fd: number, cb: Cb): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void;
    readlink?(path: string, cb: Cb<[string?]>): void;
    getxattr?(path: string, name: string, position: number, cb: Cb<[Buffer?]>): void;
    listxattr?(path: string, cb: Cb<[string[]?]>): void;
    opendir?(path: string, flags: number, cb: Cb<[number?]>): void;
    releasedir?(path: string, fd: number, cb: Cb): void;
  }
  export interface FuseOptions {
    force?: boolean; mkdir?: boolean; debug?: boolean; timeout?: number | false; fsname?: string; subtype?: string;
    allowOther?: boolean; autoCache?: boolean; kernelCache?: boolean; entryTimeout?: number; attrTimeout?: number; maxRead?: number;
  }
  class Fuse {
    constructor(mnt: string, ops: FuseOps, opts?: FuseOptions);
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static isConfigured(cb: (err: Error | null, configured: boolean) => void): void;
    protected _fuseOptions(): string;
    static readonly ENOENT: number; static readonly EIO: number; static readonly EINVAL: number; static readonly ENOTDIR: number;
    static readonly EISDIR: number; static readonly EACCES: number; static readonly EROFS: number; static readonly EBUSY: number;
    static readonly EEXIST: number; static readonly ENOTSUP: number; static readonly ERANGE: number; static readonly EBADF: number;
  }
  export default Fuse;
}
