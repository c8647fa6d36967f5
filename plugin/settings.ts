/** Settings from the environment (`docker plugin set`, or a legacy plugin's environment), parsed once. */
import path from 'node:path';
import type { PublishSettings } from '../driver/index.js';
import type { MetricsAddress } from './metrics.js';

export function nonNegative(name: string, value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new Error(`${name}=${JSON.stringify(value)}: expected a number >= 0`);
  return n;
}

export function positive(name: string, value: string): number {
  const n = nonNegative(name, value);
  if (n === 0) throw new Error(`${name}=${JSON.stringify(value)}: expected a number > 0`);
  return n;
}

/** The publish settings: all unset (or empty, as `docker plugin set` leaves them) means local commits. */
export function publishSettings(env: NodeJS.ProcessEnv): PublishSettings | undefined {
  const v = (name: string) => { const x = env[name]?.trim(); return x ? x : undefined; };
  const names = ['CVMFSGD_PUBLISHER_URL', 'CVMFSGD_PUBLISHER_TOKEN', 'CVMFSGD_PUBLISHER_TOKEN_FILE', 'CVMFSGD_PUBLISH_S3_ENDPOINT',
    'CVMFSGD_PUBLISH_S3_BUCKET', 'CVMFSGD_PUBLISH_S3_PREFIX'];
  const set = names.filter((n) => v(n) !== undefined);
  if (set.length === 0) return undefined;
  const url = v('CVMFSGD_PUBLISHER_URL');
  const bucket = v('CVMFSGD_PUBLISH_S3_BUCKET');
  const token = v('CVMFSGD_PUBLISHER_TOKEN');
  const tokenFile = v('CVMFSGD_PUBLISHER_TOKEN_FILE');
  const missing = [...(url ? [] : ['CVMFSGD_PUBLISHER_URL']), ...(bucket ? [] : ['CVMFSGD_PUBLISH_S3_BUCKET']),
    ...(token || tokenFile ? [] : ['CVMFSGD_PUBLISHER_TOKEN (or CVMFSGD_PUBLISHER_TOKEN_FILE)'])];
  if (missing.length) throw new Error(`publishing commits is half configured (${set.join(', ')} set): also set ${missing.join(', ')}, or unset them all for local commits`);
  const [keyId, secret] = [v('AWS_ACCESS_KEY_ID'), v('AWS_SECRET_ACCESS_KEY')];
  if (Boolean(keyId) !== Boolean(secret)) throw new Error('set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (the SDK\'s default chain)');
  const deadline = v('CVMFSGD_PUBLISH_DEADLINE_SECONDS');
  const session = v('AWS_SESSION_TOKEN');
  const endpoint = v('CVMFSGD_PUBLISH_S3_ENDPOINT');
  const prefix = v('CVMFSGD_PUBLISH_S3_PREFIX');
  return {
    publisherUrl: url!,
    ...(token ? { token } : { tokenFile: tokenFile! }),
    s3: {
      bucket: bucket!, ...(endpoint ? { endpoint } : {}), ...(prefix ? { prefix } : {}),
      region: v('AWS_REGION') ?? v('AWS_DEFAULT_REGION') ?? 'us-east-1',
      ...(keyId && secret ? { credentials: { accessKeyId: keyId, secretAccessKey: secret, ...(session ? { sessionToken: session } : {}) } } : {}),
    },
    ...(deadline ? { deadlineMs: positive('CVMFSGD_PUBLISH_DEADLINE_SECONDS', deadline) * 1000 } : {}),
  };
}


/** The default metrics socket, in the state directory (the plugin's rootfs for a managed plugin). */
export const METRICS_SOCKET_NAME = 'metrics.sock';

/**
 * `CVMFSGD_METRICS` / `--metrics`: unset or empty, a unix socket `metrics.sock` in the state
 * directory; `off`, no metrics server; `unix:/abs/path.sock`; or `HOST:PORT` (`[::1]:9101` for
 * IPv6) for TCP, which anyone who reaches that address can read.
 */
export function metricsAddress(value: string | undefined, stateDir: string): MetricsAddress | undefined {
  const v = value?.trim() ?? '';
  if (v === '') return { kind: 'unix', path: path.join(stateDir, METRICS_SOCKET_NAME) };
  if (v === 'off') return undefined;
  const bad = (why: string) => new Error(`CVMFSGD_METRICS=${JSON.stringify(value)}: ${why}; expected off, unix:/absolute/path.sock or HOST:PORT`);
  if (v.startsWith('unix:')) {
    const p = v.slice('unix:'.length);
    if (!path.isAbsolute(p)) throw bad('the socket path is not absolute');
    return { kind: 'unix', path: p };
  }
  const m = /^\[([0-9A-Fa-f:.]+)\]:(\d+)$/.exec(v) ?? /^([A-Za-z0-9.-]+):(\d+)$/.exec(v);
  if (!m) throw bad('not an address');
  const port = Number(m[2]);
  if (port > 65535) throw bad(`port ${port} is out of range`);
  return { kind: 'tcp', host: m[1]!, port };
}
