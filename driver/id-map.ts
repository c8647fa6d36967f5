/**
 * User-namespace ID maps (dockerd --userns-remap): the daemon's UIDMaps/GIDMaps, as ranges
 * container_id..+size → host_id..+size. Layers are stored with host IDs; layer tars carry
 * container IDs (docker-graphdriver-protocol.md §5.2).
 */
import { DriverError } from './errors.js';

export interface IdMap { readonly containerId: number; readonly hostId: number; readonly size: number }

/** The kernel's overflow ID: what an unmapped owner shows as inside a user namespace. */
export const OVERFLOW_ID = 65534;

function check(maps: readonly IdMap[], what: string): void {
  for (const m of maps) {
    if (![m.containerId, m.hostId, m.size].every((n) => Number.isSafeInteger(n) && n >= 0) || m.size === 0) {
      throw new DriverError('DRIVER_BAD_REQUEST', `${what} entry ${JSON.stringify(m)} is not a range of non-negative IDs`);
    }
  }
}

function lookup(maps: readonly IdMap[], id: number, from: 'containerId' | 'hostId'): number | undefined {
  const to = from === 'containerId' ? 'hostId' : 'containerId';
  for (const m of maps) if (id >= m[from] && id < m[from] + m.size) return m[to] + (id - m[from]);
  return undefined;
}

export class IdMapping {
  readonly identity: boolean;

  constructor(readonly uids: readonly IdMap[] = [], readonly gids: readonly IdMap[] = []) {
    check(uids, 'UIDMaps');
    check(gids, 'GIDMaps');
    this.identity = [...uids, ...gids].every((m) => m.containerId === m.hostId);
  }

  /** Host owner of a file that a layer tar gives to `uid:gid` in the container. */
  toHost(uid: number, gid: number, what: string): { uid: number; gid: number } {
    if (this.identity) return { uid, gid };
    const u = lookup(this.uids, uid, 'containerId');
    const g = lookup(this.gids, gid, 'containerId');
    if (u === undefined || g === undefined) {
      throw new DriverError('DRIVER_TAR_CORRUPT', `${what} is owned by ${uid}:${gid}, which the daemon's user namespace map (--userns-remap) does not cover`);
    }
    return { uid: u, gid: g };
  }

  /** Container owner of a stored file; IDs outside the map show as the overflow ID, as in the namespace. */
  toContainer(uid: number, gid: number): { uid: number; gid: number } {
    if (this.identity) return { uid, gid };
    return { uid: lookup(this.uids, uid, 'hostId') ?? OVERFLOW_ID, gid: lookup(this.gids, gid, 'hostId') ?? OVERFLOW_ID };
  }

  /** Host owner that a stored-in-CernVM-FS owner (a container ID) is presented as. */
  presentOnHost(uid: number, gid: number): { uid: number; gid: number } {
    if (this.identity) return { uid, gid };
    return { uid: lookup(this.uids, uid, 'containerId') ?? OVERFLOW_ID, gid: lookup(this.gids, gid, 'containerId') ?? OVERFLOW_ID };
  }

  /** The container's root, on the host. */
  root(): { uid: number; gid: number } {
    return { uid: lookup(this.uids, 0, 'containerId') ?? 0, gid: lookup(this.gids, 0, 'containerId') ?? 0 };
  }
}
