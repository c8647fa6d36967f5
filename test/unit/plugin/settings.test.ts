/** CVMFSGD_METRICS: default socket in the state directory, off, unix:PATH, HOST:PORT; bad values named. */
import t from 'tap';
import { metricsAddress } from '../../../plugin/settings.js';

t.test('metricsAddress', async (t) => {
  t.same(metricsAddress(undefined, '/state'), { kind: 'unix', path: '/state/metrics.sock' }, 'unset: the state directory');
  t.same(metricsAddress('  ', '/state'), { kind: 'unix', path: '/state/metrics.sock' }, 'empty, as docker plugin set leaves it');
  t.equal(metricsAddress('off', '/state'), undefined);
  t.same(metricsAddress('unix:/run/cvmfs-metrics.sock', '/state'), { kind: 'unix', path: '/run/cvmfs-metrics.sock' });
  t.same(metricsAddress('127.0.0.1:9101', '/state'), { kind: 'tcp', host: '127.0.0.1', port: 9101 });
  t.same(metricsAddress('localhost:0', '/state'), { kind: 'tcp', host: 'localhost', port: 0 });
  t.same(metricsAddress('[::1]:9101', '/state'), { kind: 'tcp', host: '::1', port: 9101 });
  for (const [bad, why] of [['unix:relative.sock', /not absolute/], ['9101', /not an address/], ['host:99999', /port 99999 is out of range/],
    ['http://127.0.0.1:9101', /not an address/], [':9101', /not an address/]] as const) {
    t.throws(() => metricsAddress(bad, '/state'), { message: why }, bad);
    t.throws(() => metricsAddress(bad, '/state'), { message: /^CVMFSGD_METRICS=/ }, `${bad}: names the setting`);
  }
});
