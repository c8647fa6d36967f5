/**
 * Registry credentials, per registry name (`docker.io`, `host:port`), from Docker's client
 * configuration (`$DOCKER_CONFIG/config.json`, default `~/.docker/config.json`) and from the command
 * line (`--username` / `--password-stdin`), which wins.
 *
 * Lookup order for one registry, as the docker CLI does it: `credHelpers[host]`, then `credsStore`,
 * then the `auths` entry. A helper (`docker-credential-<name> get`) is run only if its binary is on
 * the PATH; a missing or failing helper is reported through `onWarning` and the next source is
 * tried. Nothing here reads `process.env`: the composition root passes paths in.
 */
import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ConvertError } from '../errors.js';
import { DOCKER_HUB, isDockerHub } from '../reference.js';

export interface Credentials {
  readonly username?: string;
  readonly password?: string;
  /** An OAuth2 refresh token (`identitytoken`, or a helper's `<token>` user): sent to the token realm. */
  readonly identityToken?: string;
}

export interface CredentialStore {
  /** Credentials for a registry name as ImageReference.registry spells it; undefined = anonymous. */
  get(registry: string): Promise<Credentials | undefined>;
}

/** The key Docker Hub credentials are stored under in config.json. */
export const DOCKER_HUB_CONFIG_KEY = 'https://index.docker.io/v1/';
export const DEFAULT_HELPER_TIMEOUT_MS = 10_000;
/** config.json is small; refuse anything absurd. */
const MAX_CONFIG_JSON_BYTES = 4 * 1024 * 1024;

/** `$DOCKER_CONFIG/config.json`, else `<home>/.docker/config.json`. */
export function dockerConfigPath(env: Readonly<Record<string, string | undefined>>, homeDir: string): string {
  return env['DOCKER_CONFIG'] ? path.join(env['DOCKER_CONFIG'], 'config.json') : path.join(homeDir, '.docker', 'config.json');
}

/** A config.json key (`https://host/v1/`, `host`, `http://host:5000`) as a registry name. */
export function registryOfConfigKey(key: string): string {
  const host = key.toLowerCase().replace(/^[a-z]+:\/\//, '').replace(/\/.*$/, '');
  return isDockerHub(host) ? DOCKER_HUB : host;
}

interface AuthEntry { auth?: unknown; username?: unknown; password?: unknown; identitytoken?: unknown }
interface DockerConfig { auths?: Record<string, AuthEntry>; credsStore?: unknown; credHelpers?: Record<string, unknown> }

export interface DockerConfigOptions {
  /** Path of config.json (see dockerConfigPath); a missing file means no credentials. */
  readonly configPath: string;
  /** PATH to search for `docker-credential-*`; unset or empty: helpers are never run. */
  readonly searchPath?: string;
  readonly onWarning?: (message: string) => void;
  readonly helperTimeoutMs?: number;
}

/** Credentials from Docker's config.json and its credential helpers; the file is read once, lazily. */
export function dockerConfigCredentials(opts: DockerConfigOptions): CredentialStore {
  let loaded: Promise<DockerConfig | undefined> | undefined;
  const warn = opts.onWarning ?? (() => {});
  const load = () => (loaded ??= readConfig(opts.configPath));
  return {
    async get(registry) {
      const config = await load();
      if (!config) return undefined;
      const want = registryOfConfigKey(registry);
      const helpers = config.credHelpers ?? {};
      const helper = Object.entries(helpers).find(([k]) => registryOfConfigKey(k) === want)?.[1];
      for (const h of [helper, config.credsStore]) {
        if (typeof h !== 'string' || h === '') continue;
        const got = await fromHelper(h, want, opts, warn);
        if (got) return got;
      }
      const entry = Object.entries(config.auths ?? {}).find(([k]) => registryOfConfigKey(k) === want)?.[1];
      return entry ? fromAuthEntry(entry, want, opts.configPath) : undefined;
    },
  };
}

async function readConfig(file: string): Promise<DockerConfig | undefined> {
  let text: string;
  try {
    const st = await fs.stat(file);
    if (st.size > MAX_CONFIG_JSON_BYTES) throw new ConvertError('D2C_USAGE', `${file} is larger than ${MAX_CONFIG_JSON_BYTES} bytes`);
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if (err instanceof ConvertError) throw err;
    throw new ConvertError('D2C_IO_FAILED', `cannot read the Docker client configuration ${file}: ${(err as Error).message}`, { cause: err });
  }
  let parsed: unknown;
  try { parsed = JSON.parse(text); } catch (err) {
    throw new ConvertError('D2C_USAGE', `the Docker client configuration ${file} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new ConvertError('D2C_USAGE', `the Docker client configuration ${file} is not a JSON object`);
  }
  const c = parsed as Record<string, unknown>;
  const objectOrUndefined = (k: string) => {
    const v = c[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) throw new ConvertError('D2C_USAGE', `${file}: "${k}" is not an object`);
    return v as Record<string, never>;
  };
  return { auths: objectOrUndefined('auths'), credHelpers: objectOrUndefined('credHelpers'), credsStore: c['credsStore'] };
}

function fromAuthEntry(e: AuthEntry, registry: string, file: string): Credentials | undefined {
  const bad = (what: string) => new ConvertError('D2C_USAGE', `${file}: auths entry for ${registry}: ${what}`);
  let username = typeof e.username === 'string' && e.username !== '' ? e.username : undefined;
  let password = typeof e.password === 'string' && e.password !== '' ? e.password : undefined;
  if (typeof e.auth === 'string' && e.auth !== '') {
    const decoded = Buffer.from(e.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw bad('"auth" is not base64 of user:password');
    username = decoded.slice(0, colon);
    password = decoded.slice(colon + 1);
  }
  const identityToken = typeof e.identitytoken === 'string' && e.identitytoken !== '' ? e.identitytoken : undefined;
  if (username === undefined && password === undefined && identityToken === undefined) return undefined;
  return { ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}),
    ...(identityToken !== undefined ? { identityToken } : {}) };
}

async function findExecutable(name: string, searchPath: string | undefined): Promise<string | undefined> {
  for (const dir of (searchPath ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try { await fs.access(candidate, fsConstants.X_OK); return candidate; } catch { /* next */ }
  }
  return undefined;
}

/** `docker-credential-<helper> get` with the server URL on stdin; its JSON answer on stdout. */
async function fromHelper(helper: string, registry: string, opts: DockerConfigOptions,
  warn: (m: string) => void): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9._-]+$/.test(helper)) { warn(`credential helper name ${JSON.stringify(helper)} is invalid; skipped`); return undefined; }
  const binary = `docker-credential-${helper}`;
  const exe = await findExecutable(binary, opts.searchPath);
  if (!exe) { warn(`credential helper ${binary} is not on the PATH; credentials for ${registry} from it are skipped`); return undefined; }
  const serverUrl = registry === DOCKER_HUB ? DOCKER_HUB_CONFIG_KEY : registry;
  const out = await new Promise<{ stdout: string; err?: Error }>((resolve) => {
    const child = execFile(exe, ['get'], { timeout: opts.helperTimeoutMs ?? DEFAULT_HELPER_TIMEOUT_MS, maxBuffer: 1024 * 1024 },
      (err, stdout) => resolve({ stdout: String(stdout), ...(err ? { err } : {}) }));
    child.stdin?.end(serverUrl);
  });
  if (out.err) {
    // The helpers print "credentials not found in native keychain" for an unknown server.
    if (!/credentials not found/i.test(out.stdout)) warn(`credential helper ${binary} failed for ${registry}: ${out.err.message.trim()}`);
    return undefined;
  }
  let parsed: unknown;
  try { parsed = JSON.parse(out.stdout); } catch {
    warn(`credential helper ${binary} answered for ${registry} with something that is not JSON; skipped`);
    return undefined;
  }
  const r = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  const user = typeof r['Username'] === 'string' ? r['Username'] : '';
  const secret = typeof r['Secret'] === 'string' ? r['Secret'] : '';
  if (secret === '') return undefined;
  // docker's convention: user "<token>" means the secret is an identity (refresh) token.
  return user === '<token>' ? { identityToken: secret } : { username: user, password: secret };
}

/** Explicit credentials (`--username`, `--password-stdin`); `registry` unset: for every registry. */
export function explicitCredentials(creds: { readonly username: string; readonly password: string; readonly registry?: string }): CredentialStore {
  const want = creds.registry === undefined ? undefined : registryOfConfigKey(creds.registry);
  return {
    async get(registry) {
      return want === undefined || want === registryOfConfigKey(registry) ? { username: creds.username, password: creds.password } : undefined;
    },
  };
}

/** The first store that has credentials for a registry wins. */
export function chainCredentials(...stores: readonly CredentialStore[]): CredentialStore {
  return {
    async get(registry) {
      for (const s of stores) {
        const c = await s.get(registry);
        if (c) return c;
      }
      return undefined;
    },
  };
}

/** A store from a fixed table, for tests and embedding. */
export function staticCredentials(table: Readonly<Record<string, Credentials>>): CredentialStore {
  return { async get(registry) { return Object.entries(table).find(([k]) => registryOfConfigKey(k) === registryOfConfigKey(registry))?.[1]; } };
}
