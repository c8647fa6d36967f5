/**
 * Platforms (OCI image-index `platform`): parsing `os/arch[/variant]`, the host platform, and
 * choosing an index entry. Normalisation follows containerd's `platforms` package: `arm64` means
 * variant `v8` unless another is given, `arm` means `v7`, aliases (`x86_64`, `aarch64`, `armhf`)
 * become OCI names. A v7 request falls back to v6 then v5 entries, as an ARMv7 CPU runs those.
 * The one selection rule for every image source (registry, OCI layout, docker-archive).
 */
import { endianness } from 'node:os';
import { ConvertError } from './errors.js';
import type { Descriptor, Platform } from './image.js';

const ARCH_ALIASES: Readonly<Record<string, { architecture: string; variant?: string }>> = {
  x86_64: { architecture: 'amd64' }, 'x86-64': { architecture: 'amd64' }, x64: { architecture: 'amd64' },
  aarch64: { architecture: 'arm64' }, armhf: { architecture: 'arm', variant: 'v7' }, armel: { architecture: 'arm', variant: 'v6' },
  i386: { architecture: '386' }, i686: { architecture: '386' }, ia32: { architecture: '386' },
};

/** A platform in canonical form: arm64 variant `v8`, arm `v7` when absent, variants as `vN`. */
export function normalizePlatform(p: Platform): Platform {
  const os = p.os.toLowerCase();
  const alias = ARCH_ALIASES[p.architecture.toLowerCase()];
  const architecture = alias?.architecture ?? p.architecture.toLowerCase();
  let variant = (p.variant ?? alias?.variant ?? '').toLowerCase();
  if (/^\d+$/.test(variant)) variant = `v${variant}`;
  if (architecture === 'arm64' && (variant === '' || variant === 'v8')) variant = 'v8';
  if (architecture === 'arm' && variant === '') variant = 'v7';
  return variant === '' ? { os, architecture } : { os, architecture, variant };
}

/** `os/arch[/variant]`, e.g. `linux/arm64`, `linux/arm/v7`; D2C_USAGE otherwise. */
export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((x) => !/^[A-Za-z0-9_.-]+$/.test(x))) {
    throw new ConvertError('D2C_USAGE', `invalid platform ${JSON.stringify(s)}: expected os/architecture[/variant], e.g. linux/amd64`);
  }
  return parts[2] !== undefined ? { os: parts[0]!, architecture: parts[1]!, variant: parts[2] } : { os: parts[0]!, architecture: parts[1]! };
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** The platform of this process, in OCI names (`x64` → `amd64`, `arm64` → `arm64/v8`, …). */
export function hostPlatform(): Platform {
  const os = process.platform === 'win32' ? 'windows' : process.platform;
  switch (process.arch) {
    case 'x64': return { os, architecture: 'amd64' };
    case 'ia32': return { os, architecture: '386' };
    case 'arm64': return { os, architecture: 'arm64', variant: 'v8' };
    case 'arm': {
      const v = (process.config.variables as unknown as Record<string, unknown>)['arm_version'];
      return { os, architecture: 'arm', variant: `v${typeof v === 'string' || typeof v === 'number' ? v : 7}` };
    }
    case 'ppc64': return { os, architecture: endianness() === 'LE' ? 'ppc64le' : 'ppc64' };
    case 'mipsel': return { os, architecture: 'mipsle' };
    default: return { os, architecture: process.arch };
  }
}

/** Attestation and other non-image entries of buildx indexes carry `unknown/unknown`. */
export function isAttestationEntry(d: Descriptor): boolean {
  return (d.platform?.os === 'unknown' && d.platform.architecture === 'unknown')
    || d.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest';
}

/**
 * How well `have` serves `want`: 0 for an exact match, a positive rank for a compatible fallback
 * (lower is better), undefined for no match.
 */
export function platformRank(want: Platform, have: Platform): number | undefined {
  const w = normalizePlatform(want);
  const h = normalizePlatform(have);
  if (w.os !== h.os || w.architecture !== h.architecture) return undefined;
  if (w.variant === h.variant) return 0;
  if (w.architecture === 'arm') {
    const wv = Number(w.variant?.slice(1));
    const hv = Number(h.variant?.slice(1));
    if (Number.isFinite(wv) && Number.isFinite(hv) && hv < wv) return wv - hv;
  }
  return undefined;
}

/**
 * The index entry for `want`; attestation entries are skipped. An index whose only image entry has
 * no platform at all yields that entry (DUCC picks "the only entry"). D2C_PLATFORM_NOT_FOUND lists
 * the platforms the index has.
 */
export function selectManifest(entries: readonly Descriptor[], want: Platform, what: string): Descriptor {
  const images = entries.filter((d) => !isAttestationEntry(d));
  let best: { d: Descriptor; rank: number } | undefined;
  for (const d of images) {
    if (!d.platform) continue;
    const rank = platformRank(want, d.platform);
    if (rank !== undefined && (best === undefined || rank < best.rank)) best = { d, rank };
  }
  if (best) return best.d;
  if (images.length === 1 && !images[0]!.platform) return images[0]!;
  const have = images.map((d) => (d.platform ? formatPlatform(d.platform) : '(no platform)'));
  throw new ConvertError('D2C_PLATFORM_NOT_FOUND',
    `${what} has no image for platform ${formatPlatform(want)}; it has ${have.length ? have.join(', ') : 'no image entries'} (choose one with --platform)`);
}
