#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=2
/**
 * `docker2cvmfs`: convert container images into a CernVM-FS repository (the DUCC layout) and make
 * thin images that the graphdriver runs lazily from it. Exit codes: 0 done, 1 other failure,
 * 2 bad usage or recipe, 3 registry, 4 verification (digest, diffID, media type, bad image),
 * 5 repository.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { CodedError, CvmfsError, messageOf } from '../cvmfs/errors.js';
import { DirStorage, loadState } from '../cvmfs/writer/index.js';
import { serveRepository } from '../cvmfs/server/http-server.js';
import { convertImages, type ConvertSummary } from './convert.js';
import { ConvertError, EXIT_CODES, isConvertError } from './errors.js';
import { collectGarbage, type GcPlan } from './gc.js';
import { openImage, parseImageArg, type OpenedImage } from './images.js';
import { inspectImage, type Inspection, type RepositoryAccess } from './inspect.js';
import { barReporter, formatBytes, lineReporter, silentReporter, type Reporter } from './progress.js';
import { DEFAULT_OUTPUT_FORMAT, outputName, parseRecipe } from './recipe.js';
import { formatReference, parseReference, type ImageReference } from './reference.js';
import {
  chainCredentials, dockerConfigCredentials, dockerConfigPath, explicitCredentials, hostPlatform, parsePlatform, RegistryClient,
  type CredentialStore,
} from './registry/index.js';
import { sync, type SyncSummary } from './sync.js';
import { buildThinImage, makeThinJson } from './thin-image.js';
import { loadThinImage, pushThinImage, writeThinArchive } from './thin-output.js';
import { tuneMallocForWriter } from '../cvmfs/malloc-tune.js';
import { layerFs } from './layout.js';
import { recordStartup } from './record.js';

/** Thin-image names for --load and -o: DUCC's default without the scheme. */
const DEFAULT_THIN_NAME = DEFAULT_OUTPUT_FORMAT.replace('$(scheme)://', '');

interface RegistryFlags { platform?: string; insecure?: string[]; username?: string; passwordStdin?: boolean }
interface OutputFlags { json?: boolean; quiet?: boolean }

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];
const positiveInt = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new InvalidArgumentError('a whole number from 1 to 64');
  return n;
};
const days = (v: string): number => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError('a number of days (0 or more)');
  return n;
};

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

async function credentialsOf(f: RegistryFlags, log: (s: string) => void, extra?: CredentialStore): Promise<CredentialStore> {
  const stores: CredentialStore[] = [];
  if (f.passwordStdin && !f.username) throw new ConvertError('D2C_USAGE', '--password-stdin needs --username');
  if (f.username) {
    if (!f.passwordStdin) throw new ConvertError('D2C_USAGE', '--username needs --password-stdin (passwords are never taken from the command line)');
    stores.push(explicitCredentials({ username: f.username, password: await readStdin() }));
  }
  if (extra) stores.push(extra);
  stores.push(dockerConfigCredentials({ configPath: dockerConfigPath(process.env, os.homedir()), searchPath: process.env['PATH'], onWarning: log }));
  return chainCredentials(...stores);
}

function reporterOf(f: OutputFlags): Reporter {
  if (f.json || f.quiet) return silentReporter();
  return process.stderr.isTTY ? barReporter(process.stderr) : lineReporter(process.stderr);
}

function printJson(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
}

function summaryLine(s: ConvertSummary): string {
  const rate = s.bytesRead / Math.max(s.seconds, 1e-3);
  const images = s.images.filter((i) => i.status === 'converted').length;
  const head = s.published ? `published revision ${s.revision} of ${s.fqrn}` : `${s.fqrn} unchanged at revision ${s.revision}`;
  return `${head}: ${images} of ${s.images.length} images converted, ${s.newLayers} layers new, ${s.reusedLayers} reused; `
    + `${formatBytes(s.bytesRead)} read, ${formatBytes(s.bytesIngested)} ingested in ${s.seconds.toFixed(1)} s (${formatBytes(rate)}/s)`;
}

function gcLines(plan: GcPlan, dryRun: boolean): string[] {
  const verb = dryRun ? 'would remove' : 'removed';
  return [
    ...plan.removeImages.map((m) => `${verb} image marker ${m}`),
    ...plan.removeLayers.map((l) => `${verb} layer ${l.digest} (${l.ageDays} days old)`),
    ...(plan.keptYoung.length ? [`kept ${plan.keptYoung.length} unused layers younger than the grace period`] : []),
    `${plan.removeLayers.length} layers ${verb}, ${plan.usedLayers} in use`,
  ];
}

function thinRef(format: string, img: OpenedImage, many: boolean): ImageReference {
  if (many && !format.includes('$(')) {
    throw new ConvertError('D2C_USAGE', `one thin-image name "${format}" for several images: use a format with $(repository), $(tag)…`);
  }
  return parseReference(outputName(format, img.vars));
}

function registryClient(f: RegistryFlags, credentials: CredentialStore): RegistryClient {
  return new RegistryClient({ credentials, insecure: f.insecure ?? [] });
}

const platformOf = (f: RegistryFlags) => (f.platform ? parsePlatform(f.platform) : hostPlatform());

function addRegistryOptions(c: Command): Command {
  return c
    .option('--platform <os/arch[/variant]>', 'platform to take from a multi-platform image (default: this host)')
    .option('--insecure <host>', 'a registry host that may be spoken to over plain HTTP (repeatable; loopback always may)', collect)
    .option('--username <user>', 'registry user (with --password-stdin); else ~/.docker/config.json')
    .option('--password-stdin', 'read the registry password from standard input');
}

function addOutputOptions(c: Command): Command {
  return c.option('--json', 'print one JSON document for scripts, no progress').option('-q, --quiet', 'no progress, only the summary');
}

async function runConvert(images: string[], f: RegistryFlags & OutputFlags & {
  repo: string; keys: string; thin: boolean; thinName?: string; push?: string | boolean; load?: boolean; output?: string;
  allowForeign?: boolean; parallel?: number; force?: boolean; record?: boolean; recordCmd?: string; recordTimeout?: number;
}): Promise<number> {
  const rep = reporterOf(f);
  const client = registryClient(f, await credentialsOf(f, (s) => rep.log(`warning: ${s}`)));
  const platform = platformOf(f);
  const args = images.map(parseImageArg);
  if (!f.thin && (f.push || f.load || f.output)) throw new ConvertError('D2C_USAGE', '--no-thin with --push, --load or -o makes no sense');
  if (f.output && images.length > 1) throw new ConvertError('D2C_USAGE', '-o writes one image: give one IMAGE');
  const record = f.record || f.recordCmd !== undefined;
  if (record && (images.length > 1 || !f.thin)) throw new ConvertError('D2C_USAGE', '--record records one image for its thin image: give one IMAGE, without --no-thin');
  const opened: OpenedImage[] = [];
  for (const a of args) opened.push(await openImage(a, { registry: client, platform, allowForeign: f.allowForeign ?? false }));
  let summary: ConvertSummary;
  try {
    summary = await convertImages(opened.map((o) => ({ image: o.image, metadataFile: o.metadataFile })), {
      storage: new DirStorage(f.repo), keysDir: f.keys, allowForeign: f.allowForeign, parallel: f.parallel, force: f.force, onEvent: rep.onEvent,
    });
  } finally { rep.stop(); }
  const thins: { image: string; name: string; output: string; digest?: string }[] = [];
  if (f.thin) {
    const format = typeof f.push === 'string' ? f.push : f.thinName ?? DEFAULT_THIN_NAME;
    for (const [k, o] of opened.entries()) {
      const outcome = summary.images[k]!;
      let prefetch: readonly (readonly [number, string])[] | undefined;
      if (record) {
        const r = await recordStartup({
          repoDir: f.repo, keysDir: f.keys, fqrn: summary.fqrn, layers: outcome.thinLayers.map((l) => layerFs(l.digest)),
          config: o.image.config, ...(f.recordCmd !== undefined ? { command: ['/bin/sh', '-c', f.recordCmd] } : {}),
          timeoutMs: (f.recordTimeout ?? 60) * 1000, log: (l) => { if (!f.json && !f.quiet) console.error(l); },
        });
        prefetch = r.files;
        const how = r.timedOut ? `stopped after ${f.recordTimeout ?? 60} s` : `exit ${r.exitCode}`;
        if (!f.json) console.log(`recorded ${r.files.length} files (${formatBytes(r.bytes)}) read by the start (${how}, ${r.seconds.toFixed(1)} s)`);
      }
      const thin = buildThinImage(o.image, makeThinJson(outcome.thinLayers, o.image.name, prefetch));
      const ref = thinRef(format, o, opened.length > 1);
      const name = formatReference(ref, { familiar: true });
      if (f.push) thins.push({ image: o.image.name, name, output: 'registry', digest: await pushThinImage(client, ref, thin) });
      if (f.load) { await loadThinImage(ref, thin, process.env['DOCKER_HOST']); thins.push({ image: o.image.name, name, output: 'docker' }); }
      if (f.output) { await writeThinArchive(f.output, ref, thin); thins.push({ image: o.image.name, name, output: f.output }); }
      if (!f.push && !f.load && !f.output) thins.push({ image: o.image.name, name, output: 'none', digest: thin.manifest.digest });
    }
  }
  if (f.json) printJson({ ...summary, thinImages: thins });
  else {
    console.log(summaryLine(summary));
    for (const t of thins) {
      console.log(t.output === 'registry' ? `thin image ${t.name} pushed (${t.digest})`
        : t.output === 'docker' ? `thin image ${t.name} loaded into the local Docker`
          : t.output === 'none' ? `thin image ${t.name} made (${t.digest}); give --push, --load or -o FILE to keep it`
            : `thin image ${t.name} written to ${t.output}`);
    }
  }
  return 0;
}

async function runSync(recipeFile: string, f: RegistryFlags & OutputFlags & {
  repo: string; keys: string; thin: boolean; gc?: boolean; gracePeriod: number; dryRun?: boolean; parallel?: number; allowForeign?: boolean;
}): Promise<number> {
  const text = await fs.readFile(recipeFile, 'utf8').catch((err: Error) => { throw new ConvertError('D2C_USAGE', `cannot read recipe ${recipeFile}: ${err.message}`); });
  const recipe = parseRecipe(text, recipeFile);
  const state = await loadState(new DirStorage(f.repo));
  if (state.manifest.fqrn !== recipe.repository) {
    throw new ConvertError('D2C_USAGE', `${recipeFile} is for ${recipe.repository}, but ${f.repo} holds ${state.manifest.fqrn}`);
  }
  const rep = reporterOf(f);
  // DUCC's convention: the recipe's user pushes thin images with DUCC_OUTPUT_REGISTRY_PASS.
  const pass = process.env['DUCC_OUTPUT_REGISTRY_PASS'];
  const output = recipe.user && pass ? explicitCredentials({ username: recipe.user, password: pass }) : undefined;
  const client = registryClient(f, await credentialsOf(f, (s) => rep.log(`warning: ${s}`), output));
  let s: SyncSummary;
  try {
    s = await sync({
      recipe, storage: new DirStorage(f.repo), keysDir: f.keys, registry: client, platform: platformOf(f), thin: f.thin,
      gc: f.gc ? { graceSeconds: f.gracePeriod * 86400 } : undefined, dryRun: f.dryRun ?? false, parallel: f.parallel,
      allowForeign: f.allowForeign, onEvent: rep.onEvent, log: (l) => rep.log(l),
    });
  } finally { rep.stop(); }
  if (f.json) { printJson(s); return 0; }
  for (const i of s.images) console.log(`${i.status.padEnd(13)} ${i.name}${i.thin ? ` → ${i.thin} (${i.thinStatus})` : ''}`);
  if (s.gc) for (const l of gcLines(s.gc, s.dryRun)) console.log(l);
  if (s.convert) console.log(summaryLine(s.convert));
  console.log(s.dryRun ? 'dry run: nothing was changed' : s.unchanged ? 'nothing to do: the repository and the thin images are up to date' : 'done');
  return 0;
}

async function runGc(f: OutputFlags & { repo: string; keys: string; gracePeriod: number; dryRun?: boolean }): Promise<number> {
  const r = await collectGarbage({ storage: new DirStorage(f.repo), keysDir: f.keys, now: new Date(), graceSeconds: f.gracePeriod * 86400, dryRun: f.dryRun ?? false });
  if (f.json) { printJson({ ...r.plan, revision: r.revision, published: r.published, dryRun: f.dryRun ?? false }); return 0; }
  for (const l of gcLines(r.plan, f.dryRun ?? false)) console.log(l);
  console.log(r.published ? `published revision ${r.revision}` : `nothing changed: revision ${r.revision}`);
  return 0;
}

async function runInspect(image: string, f: RegistryFlags & OutputFlags & { repo?: string; keys?: string; url?: string; pubkey?: string; name?: string }): Promise<number> {
  const client = registryClient(f, await credentialsOf(f, (s) => process.stderr.write(`warning: ${s}\n`)));
  const opened = await openImage(parseImageArg(image), { registry: client, platform: platformOf(f) });
  let result: Inspection;
  if (f.repo) {
    if (!f.keys) throw new ConvertError('D2C_USAGE', '--repo needs --keys (the master public key verifies what is read)');
    const fqrn = (await loadState(new DirStorage(f.repo))).manifest.fqrn;
    const pem = await fs.readFile(path.join(f.keys, `${fqrn}.pub`), 'utf8');
    const server = await serveRepository({ dir: f.repo, fqrn, bind: '127.0.0.1', port: 0 });
    try { result = await inspectImage(opened.image, { url: server.url, fqrn, publicKeyPem: pem }); } finally { await server.close(); }
  } else if (f.url) {
    if (!f.pubkey || !f.name) throw new ConvertError('D2C_USAGE', '--url needs --name FQRN and --pubkey FILE');
    const access: RepositoryAccess = { url: f.url, fqrn: f.name, publicKeyPem: await fs.readFile(f.pubkey, 'utf8') };
    result = await inspectImage(opened.image, access);
  } else result = await inspectImage(opened.image);
  if (f.json) { printJson(result); return 0; }
  console.log(`${result.name}\n  manifest ${result.manifestDigest}\n  config   ${result.configDigest}\n  platform ${result.platform || '?'}`);
  if (result.thin) {
    console.log(`  thin image (${result.thinFile}), origin ${result.origin || '?'}${result.source?.digest ? `, made from ${result.source.name} ${result.source.digest}` : ''}`);
    console.log(result.prefetchFiles ? `  recorded access list: ${result.prefetchFiles} files, prefetched by the plugin at start` : '  no recorded access list (convert --record makes one)');
  } else console.log('  not a thin image: its layers and where convert puts them');
  if (result.repository) console.log(`  checked against ${result.repository.fqrn} revision ${result.repository.revision}`);
  for (const l of result.layers) {
    const where = l.url ?? (l.fqrn ? `cvmfs://${l.fqrn}${l.path}` : l.path ?? '');
    const state = l.present === undefined ? '' : l.present ? '  present' : '  MISSING';
    console.log(`  ${l.digest}  ${where}${state}`);
  }
  return result.layers.some((l) => l.present === false) ? 1 : 0;
}

export function program(): Command {
  const p = new Command('docker2cvmfs')
    .description('Convert container images into a CernVM-FS repository and make thin images of them')
    .exitOverride()
    .showHelpAfterError()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  const repoOptions = (c: Command) => c
    .requiredOption('--repo <dir>', 'the repository tree (as served over HTTP), written with our writer')
    .requiredOption('--keys <dir>', 'the key directory of the repository (kept outside the tree)');

  let result: Promise<number> = Promise.resolve(0);
  addOutputOptions(addRegistryOptions(repoOptions(p.command('convert')
    .argument('<image...>', 'REF ([scheme://][host[:port]/]repo[:tag][@sha256:…]), docker-archive:FILE[:REF] or oci:DIR[:REF]')
    .description('ingest every layer of each image into /.layers (one revision for all), then make its thin image'))))
    .option('--no-thin', 'do not make thin images')
    .option('--thin-name <name>', `thin image name or format ($(registry), $(repository), $(tag), $(digest)…; default ${DEFAULT_THIN_NAME})`)
    .option('--push [ref]', 'push the thin image to a registry (to REF, else the thin name)')
    .option('--load', 'load the thin image into the local dockerd (DOCKER_HOST honoured)')
    .option('-o, --output <file>', 'write the thin image as a docker load-able archive')
    .option('--allow-foreign', 'fetch and convert foreign (non-distributable) layers from their URLs')
    .addOption(new Option('--parallel <n>', 'layers downloading at once').argParser(positiveInt).default(3))
    .option('--force', 'ingest layers again even when present')
    .option('--record', "run the image's command once (root, FUSE, overlayfs) and put the files its start read into thin.json, for prefetch")
    .option('--record-cmd <command>', 'record this shell command instead of Entrypoint + Cmd (implies --record)')
    .addOption(new Option('--record-timeout <seconds>', 'stop the recorded command after this long').argParser((v) => {
      const n = Number(v);
      if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('a number of seconds');
      return n;
    }).default(60))
    .action((images: string[], f) => { result = runConvert(images, f); });

  addOutputOptions(addRegistryOptions(repoOptions(p.command('sync')
    .argument('<recipe>', "a DUCC wish list (version, user, cvmfs_repo, output_format, input)")
    .description('convert what a recipe lists and is new or moved, push its thin images; with --gc remove what it no longer uses'))))
    .option('--no-thin', 'do not make or push thin images')
    .option('--gc', 'remove images the recipe no longer lists and layers no listed image uses')
    .addOption(new Option('--grace-period <days>', 'keep unused layers younger than this').argParser(days).default(7))
    .option('--dry-run', 'resolve and plan, change nothing')
    .addOption(new Option('--parallel <n>', 'layers downloading at once').argParser(positiveInt).default(3))
    .option('--allow-foreign', 'fetch and convert foreign (non-distributable) layers')
    .action((recipe: string, f) => { result = runSync(recipe, f); });

  addOutputOptions(repoOptions(p.command('gc')
    .description('remove layers that no image marker under /.metadata uses')))
    .addOption(new Option('--grace-period <days>', 'keep unused layers younger than this').argParser(days).default(7))
    .option('--dry-run', 'plan, change nothing')
    .action((f) => { result = runGc(f); });

  addOutputOptions(addRegistryOptions(p.command('inspect')
    .argument('<image>', 'REF, docker-archive:FILE[:REF] or oci:DIR[:REF]')
    .description('whether an image is thin, what its layers point to, and whether each is in a repository')))
    .option('--repo <dir>', 'check presence in this local repository (with --keys)')
    .option('--keys <dir>', 'key directory of --repo (its master public key)')
    .option('--url <url>', 'check presence in this repository server (with --name and --pubkey)')
    .option('--name <fqrn>', 'repository name for --url')
    .option('--pubkey <file>', 'master public key for --url')
    .action((image: string, f) => { result = runInspect(image, f); });

  return Object.assign(p, { result: () => result });
}

function exitCodeOf(err: unknown): number {
  if (isConvertError(err)) return EXIT_CODES[err.exitClass];
  if (err instanceof CvmfsError) return err.code.startsWith('CVMFS_TAR_') ? EXIT_CODES.verification : EXIT_CODES.repository;
  return EXIT_CODES.other;
}

async function main(argv: string[]): Promise<number> {
  const p = program() as Command & { result(): Promise<number> };
  try {
    await p.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : EXIT_CODES.usage;
    throw err;
  }
  return p.result();
}

tuneMallocForWriter();
main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err: unknown) => {
  const coded = err instanceof CodedError;
  process.stderr.write(`docker2cvmfs: ${coded ? messageOf(err) : `D2C_INTERNAL: ${messageOf(err)}`}\n`);
  if (!coded && process.env['DOCKER2CVMFS_DEBUG']) process.stderr.write(`${(err as Error).stack ?? ''}\n`);
  process.exitCode = exitCodeOf(err);
});
