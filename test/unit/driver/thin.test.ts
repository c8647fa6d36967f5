import t from 'tap';
import { parseThin } from '../../../driver/thin.js';

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
