/**
 * Pure: a layer chain → the overlay mount to perform (containerd's mounts() idea); the mounter
 * performs it. Lower dirs are given as short relative links (`l/<short>`, resolved against Home,
 * the mount's working directory) so that 128 layers fit in one page of mount data.
 */
import { DriverError } from './errors.js';

export interface OverlayMount {
  readonly type: 'overlay' | 'bind';
  readonly source: string;
  readonly options: readonly string[];
  /** Working directory for the mount call; relative paths in `options` resolve against it. */
  readonly cwd: string;
}

/** overlayfs splits option values on `,` and lowerdir on `:`; a backslash escapes (G1). */
export function escapeOverlayPath(p: string): string {
  return p.replace(/[\\:,]/g, (c) => `\\${c}`);
}

export const MAX_OVERLAY_LOWERS = 128;
const PAGE_BYTES = 4096;

export function overlayMountOf(o: {
  home: string; lowerLinks: readonly string[]; upperDir: string; workDir: string; readOnly?: boolean;
}): OverlayMount {
  if (o.lowerLinks.length === 0) {
    return { type: 'bind', source: o.upperDir, options: ['bind'], cwd: o.home };
  }
  if (o.lowerLinks.length > MAX_OVERLAY_LOWERS) {
    throw new DriverError('DRIVER_LAYER_LIMIT', `the image stacks ${o.lowerLinks.length} layers, more than the ${MAX_OVERLAY_LOWERS} that overlay allows: squash it (docker build --squash) or flatten its thin descriptor`);
  }
  const lower = `lowerdir=${o.lowerLinks.map(escapeOverlayPath).join(':')}`;
  const options = [lower, `upperdir=${escapeOverlayPath(o.upperDir)}`, `workdir=${escapeOverlayPath(o.workDir)}`];
  if (options.join(',').length >= PAGE_BYTES) throw new DriverError('DRIVER_LAYER_LIMIT', `the overlay mount options of ${o.upperDir} exceed one page (${PAGE_BYTES} bytes): the driver's Home path is too long`);
  return { type: 'overlay', source: 'overlay', options, cwd: o.home };
}
