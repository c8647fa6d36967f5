/** Tar entry names → safe relative components; anything that could leave the layer is refused. */
import { DriverError } from './errors.js';

export function safeComponents(name: string, what = 'entry'): string[] {
  if (name.includes('\0')) throw new DriverError('DRIVER_TAR_PATH_ESCAPE', `${what} "${name.replace(/\0/g, '\\0')}" contains a NUL byte`);
  if (name.startsWith('/')) throw new DriverError('DRIVER_TAR_PATH_ESCAPE', `${what} "${name}" is an absolute path`);
  const parts: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') throw new DriverError('DRIVER_TAR_PATH_ESCAPE', `${what} "${name}" contains ".."`);
    parts.push(c);
  }
  return parts;
}

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';
export const OVERLAY_OPAQUE_XATTR = 'trusted.overlay.opaque';
