/**
 * Every path under the driver's Home, derived from a layer ID (like containerd's upperPath(id)).
 *   <home>/layers/<id>/diff      the layer's own files (overlay upper dir)
 *   <home>/layers/<id>/work      overlay work dir
 *   <home>/layers/<id>/merged    mount point returned by Get (stable per ID)
 *   <home>/layers/<id>/layer.json  metadata, written temp + rename
 *   <home>/l/<short>             short symlink to a diff dir, keeping mount data within one page
 *   <home>/state.json            the persisted Init request (Init comes once per daemon start)
 */
import path from 'node:path';
import { DriverError } from './errors.js';

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export class Layout {
  constructor(readonly home: string) {}

  static checkId(id: string): string {
    if (!ID_PATTERN.test(id)) throw new DriverError('DRIVER_BAD_REQUEST', `layer ID "${id.slice(0, 80)}" is not a valid ID`);
    return id;
  }

  layerDir(id: string): string { return path.join(this.home, 'layers', Layout.checkId(id)); }
  diffDir(id: string): string { return path.join(this.layerDir(id), 'diff'); }
  workDir(id: string): string { return path.join(this.layerDir(id), 'work'); }
  mergedDir(id: string): string { return path.join(this.layerDir(id), 'merged'); }
  metaFile(id: string): string { return path.join(this.layerDir(id), 'layer.json'); }
  linksDir(): string { return path.join(this.home, 'l'); }
  link(short: string): string { return path.join(this.home, 'l', short); }
  stateFile(): string { return path.join(this.home, 'state.json'); }
}
