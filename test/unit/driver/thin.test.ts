import t from 'tap';
import { appendedThinJson, MAX_PREFETCH_ENTRIES, parseThin } from '../../../driver/thin.js';

const d1 = 'a'.repeat(64), d2 = 'b'.repeat(64);

t.test('thin.json 1.0: layers base first, sha256: prefix optional, unknown keys ignored, null layers', async (t) => {
  const doc = { version: '1.0', origin: 'x', extra: 1, layers: [{ digest: `sha256:${d1}`, url: `cvmfs://u.example.org/.layers/aa/${d1}/layerfs/` }, { digest: d2, url: `cvmfs://u.example.org/layers/${d2}`, more: true }] };
  const p = parseThin('thin.json', Buffer.from(JSON.stringify(doc)));
  t.same(p.layers, [{ digest: d1, fqrn: 'u.example.org', path: `/.layers/aa/${d1}/layerfs` }, { digest: d2, fqrn: 'u.example.org', path: `/layers/${d2}` }]);
  t.same(parseThin('thin.json', Buffer.from('{"version":"0.1","layers":null}')).layers, []);
});

t.test('bad descriptors name the problem', async (t) => {
  const bad = (json: string, re: RegExp) => t.throws(() => parseThin('thin.json', Buffer.from(json)), { code: 'DRIVER_THIN_INVALID', message: re });
  bad('{oops', /is not JSON/);
  bad('[]', /not a JSON object/);
  bad('{"version":"2.0","layers":[]}', /version "2\.0" is not supported/);
  bad(`{"version":"1.0","layers":[{"digest":"xyz"}]}`, /layer 1 has no valid "digest"/);
  bad(`{"version":"1.0","layers":[{"digest":"${d1}","url":"http://h/x"}]}`, /scheme "http", not cvmfs/);
  bad(`{"version":"1.0","layers":[{"digest":"${d1}","url":"cvmfs://u.example.org/a/../../etc"}]}`, /leaves its repository/);
  bad(`{"version":"1.0","layers":[{"digest":"${d1}","url":"cvmfs://u.example.org/"}]}`, /leaves its repository or is empty/);
  bad(`{"version":"1.0","layers":[{"digest":"${d1}"}]}`, /no "url" and no default repository/);
});

t.test('older variants: .thin.json with repo, .thin digest list, url-less layers with a default repository', async (t) => {
  t.same(parseThin('.thin.json', Buffer.from(JSON.stringify({ layers: [{ digest: d1, repo: 'old.example.org', location: 'ignored' }] }))).layers,
    [{ digest: d1, fqrn: 'old.example.org', path: `/layers/${d1}` }]);
  t.same(parseThin('.thin', Buffer.from(`${d1}\n${d2}\n`), 'def.example.org').layers.map((l) => l.path), [`/layers/${d1}`, `/layers/${d2}`]);
  t.throws(() => parseThin('.thin', Buffer.from(d1)), { code: 'DRIVER_THIN_INVALID' });
  t.same(parseThin('thin.json', Buffer.from(`{"version":"1.0","layers":[{"digest":"${d1}"}]}`), 'def.example.org').layers[0], { digest: d1, fqrn: 'def.example.org', path: `/layers/${d1}` });
});

t.test('the recorded access list: kept in order when well-formed, bad entries dropped and counted, never fatal', async (t) => {
  const d = 'a'.repeat(64), e = 'b'.repeat(64);
  const layers = [{ digest: d, url: `cvmfs://x.example.org/.layers/aa/${d}/layerfs` }, { digest: e, url: `cvmfs://x.example.org/.layers/bb/${e}/layerfs` }];
  const doc = (prefetch: unknown) => Buffer.from(JSON.stringify({ version: '1.0', layers, prefetch }));
  const p = parseThin('thin.json', doc({ version: 1, files: [[1, 'usr/bin/python3'], [0, 'etc//ld.so.cache'], [2, 'x'], [-1, 'x'], [0.5, 'x'], [0, '../etc/passwd'],
    [0, 'a/./b'], [0, ''], [0, 'a\0b'], ['0', 'x'], [0], 'usr/bin/sh', [0, 'a'.repeat(5000)], [1, 'lib/libc.so.6']] }));
  t.same(p.prefetch, [{ layer: 1, path: '/usr/bin/python3' }, { layer: 0, path: '/etc/ld.so.cache' }, { layer: 1, path: '/lib/libc.so.6' }], 'well-formed entries, normalised, in order');
  t.equal(p.prefetchDropped, 11, 'out of range, fractional, .., ., empty, NUL, wrong types, wrong arity, too long');
  t.equal(p.layers.length, 2, 'the layers are unaffected');
  t.same(parseThin('thin.json', doc(undefined)).prefetch, [], 'no list: none');
  t.equal(parseThin('thin.json', doc(undefined)).prefetchDropped, 0);
  const wrongVersion = parseThin('thin.json', doc({ version: 2, files: [[0, 'a']] }));
  t.same(wrongVersion.prefetch, [], 'an unknown list version is ignored');
  t.equal(wrongVersion.prefetchDropped, 1);
  const many = parseThin('thin.json', doc({ version: 1, files: Array.from({ length: MAX_PREFETCH_ENTRIES + 10 }, (_, i) => [0, `f${i}`]) }));
  t.equal(many.prefetch.length, MAX_PREFETCH_ENTRIES, 'bounded');
  t.equal(many.prefetchDropped, 10);
});

t.test('a thin commit keeps the parent descriptor\'s access list', async (t) => {
  const d = 'a'.repeat(64);
  const parent = parseThin('thin.json', Buffer.from(JSON.stringify({ version: '1.0', layers: [{ digest: d, url: `cvmfs://x.example.org/.layers/aa/${d}/layerfs` }],
    prefetch: { version: 1, files: [[0, 'bin/sh']] } })));
  const child = parseThin('thin.json', appendedThinJson(parent, { digest: 'c'.repeat(64), url: 'cvmfs://x.example.org/layers/new' }));
  t.equal(child.layers.length, 2);
  t.same(child.prefetch, [{ layer: 0, path: '/bin/sh' }]);
});
