/**
 * Image references: `[scheme://][host[:port]/]repository[:tag][@sha256:…]`, the grammar of
 * docker/distribution's `reference` package (docs/thin-images-and-layout.md §10.2, R21), plus an
 * optional `http://` / `https://` prefix as DUCC's recipes write it
 * (`https://registry.hub.docker.com/library/fedora:latest`).
 *
 * Domain rule (distribution's `splitDockerDomain`): without a scheme, the first `/`-separated
 * component is a host only if it contains `.` or `:`, is `localhost`, or has an upper-case letter
 * (which a repository component never has); otherwise the name is on Docker Hub. With a scheme, the
 * first component is always the host. Docker Hub's aliases all become `docker.io`, one-component
 * names there get the `library/` namespace, and a reference with neither tag nor digest gets
 * `latest`.
 */
import { ConvertError } from './errors.js';

export interface ImageReference {
  /** Canonical registry name: `docker.io` for Docker Hub, else `host[:port]` in lower case. */
  readonly registry: string;
  /** `library/ubuntu`, `team/app/web`: lower-case components separated by `/`. */
  readonly repository: string;
  /** Absent only when a digest is given without a tag. */
  readonly tag?: string;
  /** `sha256:<64 hex>` */
  readonly digest?: string;
  /** Only when the reference spelt it out. */
  readonly scheme?: 'http' | 'https';
}

export const DOCKER_HUB = 'docker.io';
/** The host Docker Hub's Registry API answers on. */
export const DOCKER_HUB_API_HOST = 'registry-1.docker.io';
/** Every name Docker Hub goes by (DUCC's recipes write `registry.hub.docker.com`); the one list of them. */
const DOCKER_HUB_ALIASES: ReadonlySet<string> = new Set([DOCKER_HUB, 'index.docker.io', DOCKER_HUB_API_HOST, 'registry.hub.docker.com']);

/** Whether a registry host (any case, with or without the default port `:443`) is Docker Hub. */
export function isDockerHub(host: string): boolean {
  return DOCKER_HUB_ALIASES.has(host.toLowerCase().replace(/:443$/, ''));
}
export const DEFAULT_TAG = 'latest';
/** distribution's NameTotalLengthMax: registry and repository together. */
export const NAME_TOTAL_LENGTH_MAX = 255;

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:.]+\\])(?::([0-9]+))?$`);
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
const HEX64 = /^[a-f0-9]{64}$/;

/** A parse that failed says why, so that callers with their own framing (recipe.ts) can wrap it. */
export type ReferenceCheck =
  | { readonly ok: true; readonly reference: ImageReference }
  | { readonly ok: false; readonly reason: string };

/** Parses a reference; throws D2C_USAGE naming the input and what is wrong with it. */
export function parseReference(input: string): ImageReference {
  const r = checkReference(input);
  if (!r.ok) throw new ConvertError('D2C_USAGE', `invalid image reference ${JSON.stringify(input)}: ${r.reason}`);
  return r.reference;
}

/** Thrown inside parse() only; never escapes this module. */
class Invalid { constructor(readonly reason: string) {} }

/** parseReference without the throw: the reference, or the reason it is not one. */
export function checkReference(input: string): ReferenceCheck {
  try {
    return { ok: true, reference: parse(input) };
  } catch (err) {
    if (err instanceof Invalid) return { ok: false, reason: err.reason };
    throw err;
  }
}

function parse(input: string): ImageReference {
  if (input.length === 0) throw new Invalid('it is empty');
  if (/\s/.test(input)) throw new Invalid('it contains white space');
  let rest = input;
  let scheme: 'http' | 'https' | undefined;
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(rest);
  if (m) {
    const s = m[1]!.toLowerCase();
    if (s !== 'http' && s !== 'https') throw new Invalid(`unknown scheme "${m[1]}" (only http:// and https://)`);
    scheme = s;
    rest = rest.slice(m[0].length);
  }

  const at = rest.split('@');
  if (at.length > 2) throw new Invalid('more than one "@"');
  let digest: string | undefined;
  if (at.length === 2) {
    digest = at[1]!;
    rest = at[0]!;
    if (!digest.includes(':')) throw new Invalid(`digest "${digest}" is not of the form sha256:<64 hex digits>`);
    if (!digest.startsWith('sha256:')) throw new Invalid(`digest algorithm "${digest.split(':')[0]}" is not supported (only sha256)`);
    if (!DIGEST.test(digest)) throw new Invalid(`digest "${digest}" is not of the form sha256:<64 lower-case hex digits>`);
  }

  // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw new Invalid(`tag "${tag}" is invalid (word characters, "." and "-", at most 128, not starting with "." or "-")`);
  }
  if (rest.length === 0) throw new Invalid('no repository name');
  if (rest.slice(rest.indexOf('/') + 1).includes(':')) throw new Invalid('too many ":" after the registry');

  let domain: string | undefined;
  let path = rest;
  const slash = rest.indexOf('/');
  if (scheme !== undefined) {
    if (slash < 0) throw new Invalid(`a reference with ${scheme}:// needs a repository after the host`);
    domain = rest.slice(0, slash);
    path = rest.slice(slash + 1);
  } else if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (/[.:]/.test(first) || first === 'localhost' || first.toLowerCase() !== first) {
      domain = first;
      path = rest.slice(slash + 1);
    }
  }

  let registry = DOCKER_HUB;
  if (domain !== undefined) {
    const dm = DOMAIN.exec(domain);
    if (!dm) throw new Invalid(`registry host "${domain}" is invalid`);
    if (dm[1] !== undefined) {
      const port = Number(dm[1]);
      if (port < 1 || port > 65535) throw new Invalid(`port ${dm[1]} is out of range`);
    }
    registry = isDockerHub(domain) ? DOCKER_HUB : domain.toLowerCase();
  } else if (HEX64.test(path)) {
    throw new Invalid('a 64-digit hexadecimal string is an image id, not a repository name');
  }

  const components = path.split('/');
  for (const c of components) {
    if (c.length === 0) throw new Invalid(`repository "${path}" has an empty path component`);
    if (!PATH_COMPONENT.test(c)) {
      if (PATH_COMPONENT.test(c.toLowerCase())) throw new Invalid(`repository "${path}" must be lower case`);
      throw new Invalid(`repository component "${c}" is invalid (lower-case letters and digits, separated by ".", "_", "__" or "-")`);
    }
  }
  if (registry === DOCKER_HUB && components.length === 1) path = `library/${path}`;
  if (registry.length + 1 + path.length > NAME_TOTAL_LENGTH_MAX) {
    throw new Invalid(`the name is longer than ${NAME_TOTAL_LENGTH_MAX} characters`);
  }
  if (tag === undefined && digest === undefined) tag = DEFAULT_TAG;
  return {
    registry, repository: path,
    ...(tag !== undefined ? { tag } : {}),
    ...(digest !== undefined ? { digest } : {}),
    ...(scheme !== undefined ? { scheme } : {}),
  };
}

/**
 * `registry/repository[:tag][@digest]`, with `http://` in front when the reference asked for it.
 * `familiar`: Docker Hub names short, as `docker` prints them (`ubuntu:22.04`, `team/app`).
 * parseReference(formatReference(r)) equals r (https:// is dropped: it is the default).
 */
export function formatReference(ref: ImageReference, opts: { readonly familiar?: boolean } = {}): string {
  let name = `${ref.registry}/${ref.repository}`;
  if (opts.familiar && ref.registry === DOCKER_HUB) {
    name = ref.repository.startsWith('library/') && ref.repository.split('/').length === 2 ? ref.repository.slice(8) : ref.repository;
  }
  return `${ref.scheme === 'http' ? 'http://' : ''}${name}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}

/** Host part without port, brackets removed for IPv6. */
function hostnameOf(hostPort: string): string {
  if (hostPort.startsWith('[')) return hostPort.slice(1, hostPort.indexOf(']'));
  const c = hostPort.lastIndexOf(':');
  return c >= 0 && hostPort.indexOf(':') === c ? hostPort.slice(0, c) : hostPort;
}

/** localhost, 127.0.0.0/8 or ::1 (a `host[:port]` or `[v6]:port`). */
export function isLoopbackHost(hostPort: string): boolean {
  const h = hostnameOf(hostPort.toLowerCase());
  return h === 'localhost' || h.endsWith('.localhost') || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === '::1' || h === '0:0:0:0:0:0:0:1';
}

/**
 * Whether plain HTTP may be used with `hostPort`: loopback hosts, and hosts listed in `insecure`
 * (entries `host`, `host:port` or `http://host:port`; `host` alone allows every port).
 */
export function plainHttpAllowed(hostPort: string, insecure: readonly string[] = []): boolean {
  if (isLoopbackHost(hostPort)) return true;
  const hp = hostPort.toLowerCase();
  return insecure.some((entry) => {
    const e = entry.toLowerCase().replace(/^[a-z]+:\/\//, '').replace(/\/.*$/, '');
    return e === hp || (hostnameOf(e) === e && e === hostnameOf(hp));
  });
}

export interface RegistryEndpoint {
  /** The `host[:port]` the API talks to (`registry-1.docker.io` for Docker Hub). */
  readonly host: string;
  readonly scheme: 'http' | 'https';
  /** `<scheme>://<host>/v2` */
  readonly baseUrl: string;
}

/**
 * Where the Registry API of `ref` lives. HTTPS unless the reference says `http://`, or the host is
 * loopback or listed in `insecure` (then plain HTTP, as a local test registry speaks).
 */
export function registryEndpoint(ref: ImageReference, opts: { readonly insecure?: readonly string[] } = {}): RegistryEndpoint {
  const host = ref.registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : ref.registry;
  const scheme = ref.scheme ?? (plainHttpAllowed(host, opts.insecure) ? 'http' : 'https');
  return { host, scheme, baseUrl: `${scheme}://${host}/v2` };
}
