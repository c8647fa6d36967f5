import t from 'tap';
import { isConvertError } from '../../../docker2cvmfs/errors.js';
import { formatReference, isDockerHub, isLoopbackHost, parseReference, plainHttpAllowed, registryEndpoint,
  type ImageReference } from '../../../docker2cvmfs/reference.js';

const D = `sha256:${'ab'.repeat(32)}`;

t.test('parses the reference grammar', async (t) => {
  const cases: [string, ImageReference][] = [
    ['ubuntu', { registry: 'docker.io', repository: 'library/ubuntu', tag: 'latest' }],
    ['ubuntu:22.04', { registry: 'docker.io', repository: 'library/ubuntu', tag: '22.04' }],
    ['team/app', { registry: 'docker.io', repository: 'team/app', tag: 'latest' }],
    ['docker.io/ubuntu', { registry: 'docker.io', repository: 'library/ubuntu', tag: 'latest' }],
    ['index.docker.io/library/ubuntu:20.04', { registry: 'docker.io', repository: 'library/ubuntu', tag: '20.04' }],
    ['registry-1.docker.io/team/app:1', { registry: 'docker.io', repository: 'team/app', tag: '1' }],
    ['https://registry.hub.docker.com/library/fedora:latest', { registry: 'docker.io', repository: 'library/fedora', tag: 'latest', scheme: 'https' }],
    ['localhost/app', { registry: 'localhost', repository: 'app', tag: 'latest' }],
    ['localhost:5000/a/b:t@' + D, { registry: 'localhost:5000', repository: 'a/b', tag: 't', digest: D }],
    ['localhost:5000/a/b', { registry: 'localhost:5000', repository: 'a/b', tag: 'latest' }],
    ['registry.example.org:443/x/y/z', { registry: 'registry.example.org:443', repository: 'x/y/z', tag: 'latest' }],
    ['ghcr.io/owner/image@' + D, { registry: 'ghcr.io', repository: 'owner/image', digest: D }],
    ['Registry.Example.ORG/app:v1', { registry: 'registry.example.org', repository: 'app', tag: 'v1' }],
    ['MyHost/app', { registry: 'myhost', repository: 'app', tag: 'latest' }],
    ['127.0.0.1:5000/my_app/web-ui__x:1.0-rc.1', { registry: '127.0.0.1:5000', repository: 'my_app/web-ui__x', tag: '1.0-rc.1' }],
    ['[::1]:5000/app:v', { registry: '[::1]:5000', repository: 'app', tag: 'v' }],
    ['http://myhost/app:dev', { registry: 'myhost', repository: 'app', tag: 'dev', scheme: 'http' }],
    ['a---b/c.d', { registry: 'docker.io', repository: 'a---b/c.d', tag: 'latest' }],
    ['ubuntu:' + 'T'.repeat(128), { registry: 'docker.io', repository: 'library/ubuntu', tag: 'T'.repeat(128) }],
    ['host:5000', { registry: 'docker.io', repository: 'library/host', tag: '5000' }],
  ];
  for (const [input, want] of cases) t.same(parseReference(input), want, input);
});

t.test('rejects malformed references with D2C_USAGE naming the input', async (t) => {
  const bad: [string, RegExp][] = [
    ['', /empty/],
    ['Ubuntu', /lower case/],
    ['team/App', /lower case/],
    ['a//b', /empty path component/],
    ['/a', /empty path component/],
    ['a/', /empty path component/],
    ['a@' + D + '@' + D, /more than one "@"/],
    ['a@sha512:' + 'ab'.repeat(64), /only sha256/],
    ['a@sha256:abc', /64/],
    ['a@sha256:' + 'AB'.repeat(32), /64 lower-case/],
    ['a@latest', /sha256/],
    ['a:', /tag ""/],
    ['a:-x', /tag "-x"/],
    ['a:' + 'x'.repeat(129), /tag/],
    ['a b', /white space/],
    ['ftp://host/a', /unknown scheme/],
    ['https://host', /needs a repository/],
    ['-host.com/a', /registry host/],
    ['host.com:99999/a', /out of range/],
    ['a_/b', /component "a_"/],
    ['a..b', /component/],
    ['ab'.repeat(32), /image id/],
    [`example.com/${'a'.repeat(250)}`, /longer than 255/],
    [':tag', /no repository/],
  ];
  for (const [input, re] of bad) {
    let caught: unknown;
    try { parseReference(input); } catch (err) { caught = err; }
    t.ok(isConvertError(caught, 'D2C_USAGE') && re.test(caught.message) && caught.message.includes(JSON.stringify(input)),
      `${input}: ${(caught as Error | undefined)?.message ?? 'accepted'}`);
  }
});

t.test('formatReference round-trips and has a familiar form', async (t) => {
  for (const s of ['ubuntu', 'team/app:1', 'localhost:5000/a/b:t@' + D, 'ghcr.io/o/i@' + D, 'http://myhost/app:dev',
    'https://registry.hub.docker.com/library/fedora:latest', '[::1]:5000/app']) {
    const r = parseReference(s);
    const { scheme, ...rest } = r;
    t.same(parseReference(formatReference(r)), scheme === 'https' ? rest : r, s);
  }
  t.equal(formatReference(parseReference('ubuntu')), 'docker.io/library/ubuntu:latest');
  t.equal(formatReference(parseReference('ubuntu'), { familiar: true }), 'ubuntu:latest');
  t.equal(formatReference(parseReference('team/app:1'), { familiar: true }), 'team/app:1');
  t.equal(formatReference(parseReference('localhost:5000/a@' + D), { familiar: true }), `localhost:5000/a@${D}`);
  t.equal(formatReference(parseReference('http://myhost/app')), 'http://myhost/app:latest');
});

t.test('registryEndpoint: Docker Hub API host, https by default, http for loopback / insecure / http://', async (t) => {
  t.same(registryEndpoint(parseReference('ubuntu')), { host: 'registry-1.docker.io', scheme: 'https', baseUrl: 'https://registry-1.docker.io/v2' });
  t.same(registryEndpoint(parseReference('https://registry.hub.docker.com/library/fedora')).baseUrl, 'https://registry-1.docker.io/v2');
  t.same(registryEndpoint(parseReference('ghcr.io/o/i')).baseUrl, 'https://ghcr.io/v2');
  t.same(registryEndpoint(parseReference('localhost:5000/a')).baseUrl, 'http://localhost:5000/v2');
  t.same(registryEndpoint(parseReference('127.0.0.1:5000/a')).baseUrl, 'http://127.0.0.1:5000/v2');
  t.same(registryEndpoint(parseReference('127.1.2.3:5000/a')).scheme, 'http');
  t.same(registryEndpoint(parseReference('[::1]:5000/a')).baseUrl, 'http://[::1]:5000/v2');
  t.same(registryEndpoint(parseReference('https://localhost:5000/a')).scheme, 'https', 'an explicit https:// wins');
  // plain-http-refused: a non-loopback host is never spoken to over HTTP unless allowed.
  t.same(registryEndpoint(parseReference('registry.example.org:5000/a')).scheme, 'https');
  t.same(registryEndpoint(parseReference('registry.example.org:5000/a'), { insecure: ['registry.example.org:5000'] }).scheme, 'http');
  t.same(registryEndpoint(parseReference('registry.example.org:5000/a'), { insecure: ['registry.example.org'] }).scheme, 'http');
  t.same(registryEndpoint(parseReference('registry.example.org:5000/a'), { insecure: ['registry.example.org:6000'] }).scheme, 'https');
  t.same(registryEndpoint(parseReference('registry.example.org:5000/a'), { insecure: ['http://registry.example.org:5000/'] }).scheme, 'http');
  t.same(registryEndpoint(parseReference('http://registry.example.org/a')).scheme, 'http', 'explicit http:// in the reference');
  t.ok(isLoopbackHost('localhost:1'));
  t.ok(isLoopbackHost('127.0.0.1'));
  t.ok(isLoopbackHost('[::1]:80'));
  t.notOk(isLoopbackHost('128.0.0.1'));
  t.notOk(isLoopbackHost('localhost.example.com'));
  t.notOk(plainHttpAllowed('10.0.0.1:5000'));
  t.notOk(plainHttpAllowed('example.com', ['example.org']));
});

t.test('Docker Hub is known by all its names, in one place', async (t) => {
  for (const h of ['docker.io', 'Docker.IO', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com', 'docker.io:443']) {
    t.ok(isDockerHub(h), h);
  }
  t.notOk(isDockerHub('ghcr.io'));
  t.notOk(isDockerHub('docker.io:5000'));
  t.same(parseReference('registry-1.docker.io:443/a/b').registry, 'docker.io');
});

t.test('more than one ":" after the registry is named as such', async (t) => {
  t.throws(() => parseReference('h.io/a/b:1:2'), { code: 'D2C_USAGE', message: /too many ":"/ });
  t.throws(() => parseReference('localhost:5000/a:1:2'), { code: 'D2C_USAGE', message: /too many ":"/ });
});
