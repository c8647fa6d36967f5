/**
 * The writer under the shared tar entry rules (cvmfs/tar): whiteouts of '', '.' and '..'
 * (whiteout-dot-names), overlayfs attributes (overlay-xattr) and impossible owners are refused
 * with coded errors naming the entry, and the repository stays at its revision. Valid whiteouts,
 * opaque markers and AUFS bookkeeping are still stored verbatim, as DUCC stores them.
 */
import t from 'tap';
import { makeRepo } from '../../lib/repo-fixture.js';
import { tarOf, type TarSpec } from '../../lib/tar-of.js';

t.test('whiteout-dot-names, overlay-xattr, bad owners: refused; the revision stays', async (t) => {
  const repo = await makeRepo(t.testdir());
  await repo.ingest('/layers/ok', await tarOf([{ type: 'file', name: 'keep', content: 'kept' }]));
  const cases: [string, TarSpec[], string, RegExp][] = [
    ['.wh.', [{ type: 'file', name: '.wh.' }], 'CVMFS_TAR_BAD_WHITEOUT', /entry "\.wh\."/],
    ['.wh..', [{ type: 'file', name: 'd/.wh..' }], 'CVMFS_TAR_BAD_WHITEOUT', /entry "d\/\.wh\.\."/],
    ['.wh...', [{ type: 'file', name: '.wh...' }], 'CVMFS_TAR_BAD_WHITEOUT', /would delete "\.\."/],
    ['whiteout as a directory', [{ type: 'file', name: '.wh.x/y' }], 'CVMFS_TAR_BAD_WHITEOUT', /cannot be a directory/],
    ['overlay redirect', [{ type: 'directory', name: 'd', pax: { 'SCHILY.xattr.trusted.overlay.redirect': '/x' } }], 'CVMFS_BAD_XATTR', /overlayfs attribute/],
    ['uid -1', [{ type: 'file', name: 'f', pax: { uid: '4294967295' } }], 'CVMFS_TAR_BAD_OWNER', /entry "f" has the invalid uid/],
    ['uid not a number', [{ type: 'file', name: 'f', pax: { gid: '12abc' } }], 'CVMFS_TAR_BAD_OWNER', /invalid gid/],
  ];
  for (const [what, specs, code, message] of cases) {
    const before = repo.manifest();
    await t.rejects(repo.ingest('/layers/bad', await tarOf(specs)), { code, message }, what);
    t.ok(repo.manifest().equals(before), `${what}: manifest unchanged`);
  }
  const r = await repo.ingest('/layers/wh', await tarOf([
    { type: 'directory', name: 'd' }, { type: 'file', name: 'd/.wh.gone' }, { type: 'file', name: 'd/.wh..wh..opq' },
    { type: 'file', name: '.wh..wh.aufs' }, { type: 'file', name: '.wh..x' },
  ]));
  t.equal(r.revision, 3, 'valid whiteouts (".wh..x" deletes ".x"), opaque markers and AUFS names are stored');
  const read = await repo.read();
  t.same(read.problems, []);
  const names = [...read.entries.keys()].filter((p) => p.startsWith('/layers/wh/')).sort();
  t.same(names, ['/layers/wh/.cvmfscatalog', '/layers/wh/.wh..wh.aufs', '/layers/wh/.wh..x', '/layers/wh/d', '/layers/wh/d/.wh..wh..opq', '/layers/wh/d/.wh.gone']);
});
