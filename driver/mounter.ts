/** The only module that mounts and unmounts (util-linux or busybox `mount`/`umount`). */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import { promisify } from 'node:util';
import { DriverError } from './errors.js';
import type { OverlayMount } from './overlay-options.js';

const run = promisify(execFile);

export async function mount(m: OverlayMount, target: string): Promise<void> {
  const args = m.type === 'bind' ? ['--bind', m.source, target] : ['-t', 'overlay', m.source, '-o', m.options.join(','), target];
  try {
    await run('mount', args, { cwd: m.cwd });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new DriverError('DRIVER_MOUNT_FAILED', `mount ${m.type} at ${target} failed: ${(e.stderr || e.message).trim()}`, { cause: err });
  }
}

export async function unmount(target: string): Promise<void> {
  try {
    await run('umount', [target]);
  } catch (err) {
    if (!(await isMountpoint(target))) return;
    try { await run('umount', ['-l', target]); } catch (err2) {
      throw new DriverError('DRIVER_MOUNT_FAILED', `umount ${target} failed: ${((err2 as { stderr?: string }).stderr ?? '').trim() || (err as Error).message}`, { cause: err2 });
    }
  }
}

/** Mount points from /proc/self/mountinfo (octal escapes decoded). */
export async function mountpoints(): Promise<Set<string>> {
  const text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f[4]) out.add(f[4].replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

export async function isMountpoint(p: string): Promise<boolean> {
  return (await mountpoints()).has(p);
}
