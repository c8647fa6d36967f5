/**
 * Every path under the driver's Home, derived from a layer ID (like containerd's upperPath(id)).
 *   <home>/layers/<id>/diff      the layer's own files (overlay upper dir)
 *   <home>/layers/<id>/work      overlay work dir
 *   <home>/layers/<id>/merged    mount point returned by Get (stable per ID)
 *   <home>/layers/<id>/layer.json  metadata, written temp + rename
 *   <home>/layers/<id>/applying    present while ApplyDiff runs; found at start, the layer is half applied
 *   <home>/l/<short>             short symlink to a diff dir, keeping mount data within one page
 *   <home>/state.json            the persisted Init request (Init comes once per daemon start)
 *   <home>/spool/                gzipped layers of thin commits being published (emptied at start)
 */
import fs from 'node:fs/promises';
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
  applyingMarker(id: string): string { return path.join(this.layerDir(id), 'applying'); }
  async markApplying(id: string): Promise<void> { await fs.writeFile(this.applyingMarker(id), ''); }
  async clearApplying(id: string): Promise<void> { await fs.rm(this.applyingMarker(id), { force: true }); }
  async isApplying(id: string): Promise<boolean> { return fs.lstat(this.applyingMarker(id)).then(() => true, () => false); }
  linksDir(): string { return path.join(this.home, 'l'); }
  link(short: string): string { return path.join(this.home, 'l', short); }
  stateFile(): string { return path.join(this.home, 'state.json'); }
  spoolDir(): string { return path.join(this.home, 'spool'); }
}
