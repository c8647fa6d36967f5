/**
 * Layer records, persisted per layer as JSON (temp + rename), loaded at start: a restarted plugin
 * finds every layer. A record is written before its directories are used and removed after them,
 * so a crash leaves at worst directories that `sweep` removes.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { DriverError } from './errors.js';
import { Layout } from './layout.js';
import type { ThinFile } from './thin.js';

export interface LayerRecord {
  readonly id: string;
  readonly parent: string;
  readonly readWrite: boolean;
  /** Short name of the `l/` link to this layer's diff dir. */
  readonly link: string;
  readonly created: string;
  /** Set when the applied layer holds a thin image descriptor at its root. */
  readonly thin?: ThinFile;
}

export class LayerStore {
  private readonly records = new Map<string, LayerRecord>();
  /** `root`: owner of new layer roots, the container's root on the host (user namespaces). */
  constructor(readonly layout: Layout, private readonly root: { uid: number; gid: number } = { uid: 0, gid: 0 }) {}

  async load(): Promise<void> {
    this.records.clear();
    const dir = path.join(this.layout.home, 'layers');
    await fs.mkdir(dir, { recursive: true });
    await fs.mkdir(this.layout.linksDir(), { recursive: true });
    for (const id of await fs.readdir(dir)) {
      try {
        const rec = JSON.parse(await fs.readFile(this.layout.metaFile(id), 'utf8')) as LayerRecord;
        if (rec.id === id) this.records.set(id, rec);
      } catch { /* no record: an interrupted create or remove; swept below */ }
    }
  }

  /** Removes layer directories without a record (interrupted creates or removes). */
  async sweep(isMounted: (dir: string) => boolean): Promise<string[]> {
    const dir = path.join(this.layout.home, 'layers');
    const swept: string[] = [];
    for (const id of await fs.readdir(dir)) {
      if (this.records.has(id) || isMounted(this.layout.mergedDir(id))) continue;
      await fs.rm(path.join(dir, id), { recursive: true, force: true });
      swept.push(id);
    }
    return swept;
  }

  get(id: string): LayerRecord | undefined { return this.records.get(id); }
  must(id: string): LayerRecord {
    const r = this.records.get(id);
    if (!r) throw new DriverError('DRIVER_LAYER_NOT_FOUND', `layer ${id} does not exist`);
    return r;
  }
  has(id: string): boolean { return this.records.has(id); }
  all(): LayerRecord[] { return [...this.records.values()]; }

  /** The layer and its ancestors, the layer first. */
  chain(id: string): LayerRecord[] {
    const out: LayerRecord[] = [];
    for (let cur: string = id; cur; ) {
      const r = this.records.get(cur);
      if (!r) throw new DriverError('DRIVER_PARENT_NOT_FOUND', `layer ${cur} (in the chain of ${id}) does not exist`);
      out.push(r);
      cur = r.parent;
      if (out.length > 1000) throw new DriverError('DRIVER_IO_FAILED', `layer chain of ${id} loops`);
    }
    return out;
  }

  async create(id: string, parent: string, readWrite: boolean): Promise<LayerRecord> {
    if (this.records.has(id)) throw new DriverError('DRIVER_LAYER_EXISTS', `layer ${id} already exists`);
    if (parent && !this.records.has(parent)) throw new DriverError('DRIVER_PARENT_NOT_FOUND', `parent layer ${parent} of ${id} does not exist`);
    const l = this.layout;
    const rec: LayerRecord = { id, parent, readWrite, link: randomBytes(13).toString('base64url').slice(0, 16), created: new Date().toISOString() };
    await fs.mkdir(l.diffDir(id), { recursive: true, mode: 0o755 });
    await fs.mkdir(l.workDir(id), { recursive: true, mode: 0o700 });
    await fs.mkdir(l.mergedDir(id), { recursive: true, mode: 0o700 });
    if (this.root.uid !== 0 || this.root.gid !== 0) {
      await fs.chown(l.diffDir(id), this.root.uid, this.root.gid);
      await fs.chown(l.mergedDir(id), this.root.uid, this.root.gid);
    }
    await fs.symlink(path.join('..', 'layers', id, 'diff'), l.link(rec.link));
    await this.write(rec);
    return rec;
  }

  async update(rec: LayerRecord): Promise<void> {
    this.must(rec.id);
    await this.write(rec);
  }

  private async write(rec: LayerRecord): Promise<void> {
    const tmp = `${this.layout.metaFile(rec.id)}.tmp`;
    await fs.writeFile(tmp, JSON.stringify(rec));
    await fs.rename(tmp, this.layout.metaFile(rec.id));
    this.records.set(rec.id, rec);
  }

  async remove(id: string): Promise<void> {
    const rec = this.records.get(id);
    if (!rec) return;
    await fs.rm(this.layout.metaFile(id), { force: true });
    this.records.delete(id);
    await fs.rm(this.layout.link(rec.link), { force: true });
    await fs.rm(this.layout.layerDir(id), { recursive: true, force: true });
  }
}
