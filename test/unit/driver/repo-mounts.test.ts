/**
 * RepoMounts.snapshot: settled mounts only, never waits for a mount in progress, never throws,
 * keeps the last counters of an unmounted repository. Mounts are stood in for by entries put into
 * the live map (a real one needs FUSE and root: test/integration/driver).
 */
import t from 'tap';
import { GraphDriver } from '../../../driver/index.js';
import { RepoMounts } from '../../../driver/repo-mounts.js';
import type { RepositoryCounters } from '../../../cvmfs/reader/index.js';

type FakeEntry = { repo: { counters(): Partial<RepositoryCounters> } };

function mounts(): { rm: RepoMounts; live: Map<string, Promise<FakeEntry>> } {
  const rm = new RepoMounts({ servers: [], keysDir: '/nonexistent', cacheDir: '/nonexistent' }, '/nonexistent', () => {});
  return { rm, live: (rm as unknown as { live: Map<string, Promise<FakeEntry>> }).live };
}

t.test('settled mounts are read; a mount in progress or failed is left out, and not waited for', async (t) => {
  const { rm, live } = mounts();
  let fetched = 5;
  live.set('b.example.org', Promise.resolve({ repo: { counters: () => ({ bytesFetched: fetched }) } }));
  live.set('a.example.org', Promise.resolve({ repo: { counters: () => ({ bytesFetched: 1 }) } }));
  live.set('pending.example.org', new Promise<FakeEntry>(() => {}));
  const failed = Promise.reject(new Error('cannot mount'));
  failed.catch(() => {});
  live.set('failed.example.org', failed);
  live.set('broken.example.org', Promise.resolve({ repo: { counters: () => { throw new Error('closed'); } } }));
  const snap = await rm.snapshot();
  t.same(snap, [
    { fqrn: 'a.example.org', counters: { bytesFetched: 1 }, mounted: true },
    { fqrn: 'b.example.org', counters: { bytesFetched: 5 }, mounted: true },
  ], 'sorted by fqrn; pending, failed and throwing entries left out');
  fetched = 9;
  t.same((await rm.snapshot()).find((s) => s.fqrn === 'b.example.org')?.counters, { bytesFetched: 9 }, 'read afresh each time');
});

t.test('an unmounted repository keeps its last counters, marked unmounted, until it is mounted again', async (t) => {
  const { rm, live } = mounts();
  live.set('a.example.org', Promise.resolve({ repo: { counters: () => ({ cacheHits: 7 }) } }));
  await rm.snapshot();
  live.delete('a.example.org');
  t.same(await rm.snapshot(), [{ fqrn: 'a.example.org', counters: { cacheHits: 7 }, mounted: false }]);
  live.set('a.example.org', Promise.resolve({ repo: { counters: () => ({ cacheHits: 0 }) } }));
  t.same(await rm.snapshot(), [{ fqrn: 'a.example.org', counters: { cacheHits: 0 }, mounted: true }], 'a remount starts from zero');
});

t.test('GraphDriver.repositoryCounters before Init: none, no throw', async (t) => {
  t.same(await new GraphDriver().repositoryCounters(), []);
});
