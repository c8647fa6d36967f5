/** Prometheus text exposition → samples: labels and their escapes, special floats, comments, bad lines coded. */
import t from 'tap';
import { isCvmfsError } from '../../../cvmfs/errors.js';
import { clientCountersOf, parsePrometheusText, parsePromValue } from '../../../cvmfs/prometheus-text.js';

t.test('samples with and without labels, HELP and TYPE, comments and blank lines', async (t) => {
  const e = parsePrometheusText([
    '# HELP cvmfs_client_bytes_fetched_total Compressed object bytes\\ndownloaded \\\\ here',
    '# TYPE cvmfs_client_bytes_fetched_total counter',
    '# a plain comment, with {braces} and "quotes"',
    '',
    'cvmfs_client_bytes_fetched_total{repository="a.example.org"} 123',
    '  cvmfs_client_bytes_fetched_total{repository="b.example.org",} 4.5e3 1700000000000',
    'up 1',
    'spaced { a = "1" , b="2" }\t7\r',
    'tight{a="1"}8',
  ].join('\n'));
  t.same(e.samples, [
    { name: 'cvmfs_client_bytes_fetched_total', labels: { repository: 'a.example.org' }, value: 123 },
    { name: 'cvmfs_client_bytes_fetched_total', labels: { repository: 'b.example.org' }, value: 4500, timestampMs: 1700000000000 },
    { name: 'up', labels: {}, value: 1 },
    { name: 'spaced', labels: { a: '1', b: '2' }, value: 7 },
    { name: 'tight', labels: { a: '1' }, value: 8 },
  ]);
  t.same(e.types, { cvmfs_client_bytes_fetched_total: 'counter' });
  t.equal(e.help.cvmfs_client_bytes_fetched_total, 'Compressed object bytes\ndownloaded \\ here', 'HELP unescapes \\n and \\\\');
});

t.test('label values unescape \\\\, \\" and \\n, and may hold , } = and spaces', async (t) => {
  const e = parsePrometheusText('m{path="C:\\\\dir\\\\",q="say \\"hi\\"",nl="a\\nb",odd="x,}= y"} 2\n');
  t.same(e.samples[0]!.labels, { path: 'C:\\dir\\', q: 'say "hi"', nl: 'a\nb', odd: 'x,}= y' });
});

t.test('NaN, +Inf, -Inf and Go float forms', async (t) => {
  const e = parsePrometheusText('a NaN\nb +Inf\nc -Inf\nd -0.5\ne .25\nf 1E-3\n');
  const v = e.samples.map((s) => s.value);
  t.ok(Number.isNaN(v[0]), 'NaN');
  t.same(v.slice(1), [Infinity, -Infinity, -0.5, 0.25, 0.001]);
  t.equal(parsePromValue('Inf'), Infinity);
  t.equal(parsePromValue('12abc'), undefined);
  t.equal(parsePromValue(''), undefined);
});

t.test('malformed lines fail with CVMFS_BAD_ARGUMENT naming the line', async (t) => {
  const cases: [string, RegExp][] = [
    ['ok 1\nm{a="unterminated} 1', /line 2: unterminated value of label a of m/],
    ['m{a="x"', /line 1: unterminated|expected/],
    ['m{a=x} 1', /expected " to open the value of label a/],
    ['m{a="\\t"} 1', /bad escape \\t/],
    ['m{a="1",a="2"} 1', /label a twice/],
    ['m{1a="1"} 1', /bad label name/],
    ['m', /expected a value after m/],
    ['m one', /value "one" of m is not a number/],
    ['m 1 2 3', /trailing text/],
    ['m 1 12.5', /timestamp "12.5"/],
    ['{a="1"} 1', /no metric name/],
    ['m-x 1', /bad character "-" in metric name m/],
  ];
  for (const [text, why] of cases) {
    try {
      parsePrometheusText(text);
      t.fail(`should fail: ${JSON.stringify(text)}`);
    } catch (err) {
      t.ok(isCvmfsError(err, 'CVMFS_BAD_ARGUMENT'), `coded: ${JSON.stringify(text)}`);
      t.match((err as Error).message, why);
    }
  }
});

t.test('clientCountersOf groups cvmfs_client_* by repository, drops _total, ignores the rest', async (t) => {
  const { samples } = parsePrometheusText([
    'cvmfs_client_objects_fetched_total{repository="b.example.org"} 2',
    'cvmfs_client_objects_fetched_total{repository="a.example.org"} 5',
    'cvmfs_client_cache_used_bytes{repository="a.example.org"} 1024',
    'cvmfs_client_offline{repository="a.example.org"} 0',
    'cvmfs_client_without_repository 9',
    'process_cpu_seconds_total{repository="a.example.org"} 3',
  ].join('\n'));
  t.same(clientCountersOf(samples), [
    { repository: 'a.example.org', values: { objects_fetched: 5, cache_used_bytes: 1024, offline: 0 } },
    { repository: 'b.example.org', values: { objects_fetched: 2 } },
  ]);
});
