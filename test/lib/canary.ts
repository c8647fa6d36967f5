/**
 * A canary tree beside the directory under test, and snapshots of everything around it: each
 * path's lstat type, mode, owner, size, link count, inode, mtime and ctime, file contents, symlink
 * targets and xattrs. Any change outside the target (a chmod through a symlink, a second name for
 * a host file, a file written beside the layer) shows up as a difference.
 *
 *   <run>/d1/d2/d3/parent/           the parent: its listing is part of the snapshot
 *   <run>/d1/d2/d3/parent/<target>/  what the code under test may change (excluded)
 *   <run>/d1/d2/d3/parent/canary/    file, exec (set-UID), sub/inner, link -> file, dirlink -> sub
 *
 * The directories above the parent leave room for relative symlinks that climb out of the target.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface CanaryRun {
  readonly run: string;
  readonly parent: string;
  readonly target: string;
  readonly canary: string;
  /** A snapshot of everything under `run` except `target`'s contents. */
  snapshot(): Snapshot;
  /** Inode numbers (dev:ino) of everything in the canary. */
  canaryInodes(): Set<string>;
}

export type Snapshot = Map<string, string>;

const OLD = new Date('2001-01-01T00:00:00Z');

/** Makes the run layout with an empty `target` directory (mode 0711, owner 0:0). */
export function makeCanaryRun(run: string, targetName = 'layer', withXattrs = true): CanaryRun {
  const parent = path.join(run, 'd1', 'd2', 'd3', 'parent');
  const target = path.join(parent, targetName);
  const canary = path.join(parent, 'canary');
  fs.mkdirSync(target, { recursive: true, mode: 0o711 });
  fs.chmodSync(target, 0o711);
  fs.mkdirSync(path.join(canary, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(parent, 'layer.json'), '{"canary":true}\n');
  fs.writeFileSync(path.join(canary, 'file'), 'canary file\n', { mode: 0o644 });
  fs.writeFileSync(path.join(canary, 'exec'), '#!/bin/sh\n', { mode: 0o755 });
  fs.writeFileSync(path.join(canary, 'sub', 'inner'), 'inner\n', { mode: 0o600 });
  fs.symlinkSync('file', path.join(canary, 'link'));
  fs.symlinkSync('sub', path.join(canary, 'dirlink'));
  if (process.getuid?.() === 0) {
    fs.chownSync(path.join(canary, 'file'), 1000, 1000);
    fs.chownSync(path.join(canary, 'sub'), 123, 456);
    fs.lchownSync(path.join(canary, 'link'), 7, 8);
  }
  fs.chmodSync(path.join(canary, 'exec'), 0o4755);
  fs.chmodSync(path.join(canary, 'sub'), 0o750);
  if (withXattrs) execFileSync('setfattr', ['-n', 'user.canary', '-v', 'yes', path.join(canary, 'file')]);
  for (const p of ['file', 'exec', 'sub/inner', 'link', 'dirlink', 'sub', '']) fs.lutimesSync(path.join(canary, p), OLD, OLD);
  for (const p of [parent, path.dirname(parent)]) fs.utimesSync(p, OLD, OLD);

  const walk = (dir: string, out: string[]) => {
    for (const n of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, n);
      out.push(p);
      if (p === target) continue;
      if (fs.lstatSync(p).isDirectory()) walk(p, out);
    }
    return out;
  };
  const snapshot = (): Snapshot => {
    const s: Snapshot = new Map();
    const paths = walk(run, [run]);
    for (const p of paths) {
      const st = fs.lstatSync(p, { bigint: true });
      let extra = '';
      if (p === target) {
        // The target itself may change on success; only its identity is fixed.
        s.set(path.relative(run, p) || '.', `target dev=${st.dev} ino=${st.ino}`);
        continue;
      }
      if (st.isFile()) extra = ` sha1=${createHash('sha1').update(fs.readFileSync(p)).digest('hex')}`;
      else if (st.isSymbolicLink()) extra = ` -> ${fs.readlinkSync(p)}`;
      s.set(path.relative(run, p) || '.', `mode=${st.mode.toString(8)} uid=${st.uid} gid=${st.gid} size=${st.size} nlink=${st.nlink} ino=${st.ino} `
        + `mtime=${st.mtimeNs} ctime=${st.ctimeNs}${extra}`);
    }
    if (withXattrs) {
      // One getfattr for the whole run; what lies in the target is dropped.
      let out: string;
      try {
        out = execFileSync('getfattr', ['-R', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', run], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      } catch (err) {
        out = String((err as { stdout?: string }).stdout ?? '');
      }
      const blocks = out.split('\n\n').map((b) => b.trim()).filter((b) => {
        const head = b.split('\n')[0]!;
        return b !== '' && head !== `# file: ${target}` && !head.startsWith(`# file: ${target}/`);
      });
      s.set('(xattrs)', blocks.join('\n'));
    }
    return s;
  };
  const canaryInodes = () => {
    const set = new Set<string>();
    for (const p of walk(canary, [canary])) { const st = fs.lstatSync(p); set.add(`${st.dev}:${st.ino}`); }
    return set;
  };
  return { run, parent, target, canary, snapshot, canaryInodes };
}

/** The differences between two snapshots, or []. */
export function snapshotDiff(before: Snapshot, after: Snapshot): string[] {
  const out: string[] = [];
  for (const k of new Set([...before.keys(), ...after.keys()])) {
    const a = before.get(k), b = after.get(k);
    if (a !== b) out.push(`${k}: ${a ?? '(absent)'}  =>  ${b ?? '(absent)'}`);
  }
  return out;
}
