/**
 * Diff against an older ancestor (docker build --squash): the squashed tar of three layers,
 * applied on the ancestor, must give the same overlay view as the three layers themselves.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import t from 'tap';
import { applyDiff } from '../../../driver/apply-diff.js';
import { diffTar } from '../../../driver/diff.js';
import { tarOf, type TarSpec } from '../../lib/tar-of.js';
import { notRoot, skipLoudly } from '../../lib/skip.js';

const run = promisify(execFile);

/** The tree as overlay shows it: type, mode, size, link target and content hash of every path. */
async function view(lowers: string[], mnt: string): Promise<string> {
  fs.mkdirSync(mnt, { recursive: true });
  await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lowers.join(':')}`, mnt]);
  try {
    const listing = (await run('sh', ['-c', `cd ${mnt} && find . -printf '%p %y %m %U:%G %s %l\\n' | sort && find . -type f -exec md5sum {} + | sort -k2`])).stdout;
    return listing.replace(/^\. d .*\n/m, '');
  } finally {
    await run('umount', [mnt]);
  }
}

async function layer(dir: string, entries: TarSpec[]): Promise<string> {
  fs.mkdirSync(dir, { recursive: true });
  await applyDiff(dir, Readable.from([await tarOf(entries)]));
  return dir;
}

t.test('squashed Diff of three layers equals the layers stacked', async (t) => {
  if (notRoot()) { skipLoudly(t, 'SQUASH DIFF TEST SKIPPED: needs root for overlay mounts and whiteout devices'); return; }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'squash-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const l0 = await layer(path.join(dir, 'l0'), [
    { type: 'file', name: 'a/x', content: 'x0' }, { type: 'file', name: 'a/y', content: 'y0' }, { type: 'file', name: 'b/z', content: 'z0' },
    { type: 'file', name: 'c', content: 'c is a file' }, { type: 'file', name: 'd/old', content: 'old' }, { type: 'file', name: 'e/keep', content: 'k0' },
  ]);
  const l1 = await layer(path.join(dir, 'l1'), [
    { type: 'file', name: 'a/.wh.x' }, { type: 'file', name: 'f/new', content: 'new' },
    { type: 'file', name: 'd/.wh..wh..opq' }, { type: 'file', name: 'd/fresh', content: 'fresh' },
    { type: 'file', name: '.wh.c' }, { type: 'directory', name: 'c' }, { type: 'file', name: 'c/inside', content: 'now a dir' },
  ]);
  const l2 = await layer(path.join(dir, 'l2'), [
    { type: 'file', name: 'a/x', content: 'x2, back again' }, { type: 'file', name: '.wh.f' }, { type: 'file', name: 'g/g1', content: 'g1' },
    { type: 'file', name: 'e/keep', content: 'k2', mode: 0o600 }, { type: 'symlink', name: 'e/link', target: '../a/y' },
  ]);
  const l3 = await layer(path.join(dir, 'l3'), [
    { type: 'file', name: '.wh.g' }, { type: 'file', name: 'b/z2', content: 'z2' },
    { type: 'file', name: 'h/1', content: 'linked' }, { type: 'link', name: 'h/2', target: 'h/1' }, { type: 'file', name: 'd/.wh.fresh' },
  ]);

  const squashed = await layer(path.join(dir, 'sq'), []);
  await applyDiff(squashed, diffTar([l3, l2, l1]));
  const expected = await view([l3, l2, l1, l0], path.join(dir, 'm1'));
  const actual = await view([squashed, l0], path.join(dir, 'm2'));
  t.equal(actual, expected, 'same tree, modes, owners, sizes, links and contents');
  t.match(expected, /\.\/a\/x f .*\n/, 'the fixture exercises re-added files');
  t.notMatch(expected, /\.\/(f|g|c\/?$|d\/old|d\/fresh)\b/m, 'and deletions, opaque directories and replaced files');
  t.ok(fs.statSync(path.join(squashed, 'h/1')).nlink === 2, 'hardlinks stay hardlinks');

  const full = await layer(path.join(dir, 'full'), []);
  await applyDiff(full, diffTar([l3, l2, l1, l0], { base: true }));
  const empty = path.join(dir, 'empty');
  fs.mkdirSync(empty);
  t.equal(await view([full, empty], path.join(dir, 'm3')), expected, 'squashed down to nothing: the same tree');
  const markers = (await run('find', [full, '-type', 'c'])).stdout.trim();
  t.equal(markers, '', 'with no layer below, no whiteouts are kept');
});
