/** Settings from the environment (`docker plugin set`, or a legacy plugin's environment), parsed once. */
import type { PublishSettings } from '../driver/index.js';

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

