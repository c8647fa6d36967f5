/** Client counters → Prometheus text: every numeric field exported by name, gauges vs totals, labels, scrapes independent. */
import t from 'tap';
import { parsePrometheusText } from '../../../cvmfs/prometheus-text.js';
import { createPluginMetrics, metricOf, snakeCase, type RepositorySample } from '../../../plugin/metrics.js';

/** Counters shaped like Repository.counters(), plus a field the exporter has never heard of. */
function counters(seed: number) {
  return {
    revision: 7, rootHash: 'f00d', offline: seed === 2,
    bytesFetched: 123 * seed, objectsFetched: 4 * seed, bytesInflated: 0, cacheHits: 10 * seed, cacheMisses: seed,
    evictions: 0, evictedBytes: 0, cacheUsedBytes: 2048, requests: 5, failovers: 0, retriesNoCache: 0, hashMismatches: 0,
    catalogsAttached: 3, prefetchObjects: 2, prefetchBytes: 900, prefetchHits: 1, prefetchHitBytes: 400, prefetchWasteBytes: 500,
    brandNewCounter: 42,
  };
}

t.test('snake_case names and the counter/gauge split', async (t) => {
  t.equal(snakeCase('bytesFetched'), 'bytes_fetched');
  t.equal(snakeCase('prefetchHitBytes'), 'prefetch_hit_bytes');
  t.equal(snakeCase('HTTPRequests'), 'http_requests');
  t.equal(snakeCase('bad$name'), undefined, 'a name Prometheus refuses is not exported');
  t.same(metricOf('bytesFetched', 1), { name: 'cvmfs_client_bytes_fetched_total', type: 'counter' });
  t.same(metricOf('cacheUsedBytes', 1), { name: 'cvmfs_client_cache_used_bytes', type: 'gauge' });
  t.same(metricOf('prefetchWasteBytes', 1), { name: 'cvmfs_client_prefetch_waste_bytes', type: 'gauge' }, 'waste goes down when a read needs the bytes');
  t.same(metricOf('offline', true), { name: 'cvmfs_client_offline', type: 'gauge' });
  t.equal(metricOf('rootHash', 'f00d'), undefined, 'strings are not exported');
});

t.test('two repositories: every numeric field, labelled, with TYPE and HELP', async (t) => {
  const m = createPluginMetrics(async () => [
    { fqrn: 'a.example.org', counters: counters(1) },
    { fqrn: 'b.example.org', counters: counters(2), mounted: false },
  ]);
  const { contentType, body } = await m.render();
  t.match(contentType, /^text\/plain; version=0\.0\.4/);
  t.match(body, /^cvmfs_client_bytes_fetched_total\{repository="a\.example\.org"\} 123$/m);
  t.match(body, /^cvmfs_client_bytes_fetched_total\{repository="b\.example\.org"\} 246$/m);
  t.match(body, /^# TYPE cvmfs_client_bytes_fetched_total counter$/m);
  t.match(body, /^# HELP cvmfs_client_bytes_fetched_total Compressed object bytes downloaded$/m);
  t.match(body, /^# TYPE cvmfs_client_cache_used_bytes gauge$/m);
  t.match(body, /^cvmfs_client_offline\{repository="a\.example\.org"\} 0$/m);
  t.match(body, /^cvmfs_client_offline\{repository="b\.example\.org"\} 1$/m);
  t.match(body, /^cvmfs_client_mounted\{repository="b\.example\.org"\} 0$/m);
  t.match(body, /^cvmfs_client_brand_new_counter_total\{repository="a\.example\.org"\} 42$/m, 'a field added later is exported unchanged');
  t.match(body, /^# HELP cvmfs_client_brand_new_counter_total Repository\.counters\(\)\.brandNewCounter$/m);
  t.notMatch(body, /root_hash/);
  const samples = parsePrometheusText(body).samples;
  const numeric = Object.values(counters(1)).filter((v) => typeof v !== 'string').length;
  t.equal(samples.length, 2 * (numeric + 1), 'per repository: each numeric or boolean field, and mounted');
  t.ok(samples.every((s) => s.name.startsWith('cvmfs_client_') && /^[ab]\.example\.org$/.test(s.labels.repository ?? '')));
});

t.test('each scrape reads the source again: values follow it, a repository gone is gone', async (t) => {
  let now: RepositorySample[] = [{ fqrn: 'a.example.org', counters: counters(1) }, { fqrn: 'b.example.org', counters: counters(1) }];
  const m = createPluginMetrics(async () => now);
  await m.render();
  now = [{ fqrn: 'a.example.org', counters: { ...counters(1), bytesFetched: 1000, cacheUsedBytes: 10 } }];
  const { body } = await m.render();
  t.match(body, /^cvmfs_client_bytes_fetched_total\{repository="a\.example\.org"\} 1000$/m, 'a counter is the source value, not a sum of scrapes');
  t.match(body, /^cvmfs_client_cache_used_bytes\{repository="a\.example\.org"\} 10$/m);
  t.notMatch(body, /b\.example\.org/);
});

t.test('label values are escaped; non-finite and negative totals are skipped, gauges keep them', async (t) => {
  const m = createPluginMetrics(async () => [{ fqrn: 'we"ird\\name', counters: { requests: Number.NaN, failovers: -1, revision: Number.POSITIVE_INFINITY, cacheHits: 3 } }]);
  const { body } = await m.render();
  const samples = parsePrometheusText(body).samples;
  t.same(samples.map((s) => [s.name, s.labels.repository, s.value]).sort(), [
    ['cvmfs_client_cache_hits_total', 'we"ird\\name', 3],
    ['cvmfs_client_mounted', 'we"ird\\name', 1],
    ['cvmfs_client_revision', 'we"ird\\name', Infinity],
  ]);
});

t.test('two metrics objects in one process keep their numbers apart (no global registry)', async (t) => {
  const a = createPluginMetrics(async () => [{ fqrn: 'a.example.org', counters: { cacheHits: 1 } }]);
  const b = createPluginMetrics(async () => [{ fqrn: 'a.example.org', counters: { cacheHits: 2 } }]);
  t.match((await a.render()).body, /cvmfs_client_cache_hits_total\{repository="a\.example\.org"\} 1$/m);
  t.match((await b.render()).body, /cvmfs_client_cache_hits_total\{repository="a\.example\.org"\} 2$/m);
});
