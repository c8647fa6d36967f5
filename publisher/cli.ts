#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=2
/**
 * `cvmfs-publisher`: publish layers uploaded to an S3 bucket into a CernVM-FS repository, driven by
 * the bucket's webhook notifications (thin-images-and-layout.md §7, R40–R47). The composition
 * root: argv and the environment are read here once. Exit codes: 0 stopped by SIGINT/SIGTERM,
 * 1 failure, 2 bad usage.
 */
import fs from 'node:fs/promises';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { CodedError, CvmfsError, messageOf } from '../cvmfs/errors.js';
import { openStorage } from '../cvmfs/writer/index.js';
import { PublisherError } from './errors.js';
import { S3ObjectStore } from './object-store.js';
import { defaultStateDir, startPublisher } from './publisher.js';
import type { Logger } from './worker.js';
import { tuneMallocForWriter } from '../cvmfs/malloc-tune.js';

interface Flags {
  repo?: string; store?: string; storeEndpoint?: string; keys: string; name: string; s3Endpoint: string; bucket: string[]; tokenFile?: string; port: number; bind: string;
  serve?: boolean; state?: string; maxBatch: number; allowUnnamed?: boolean; region?: string; verbose?: boolean;
}

const port = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('a port number (0 … 65535)');
  return n;
};
const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

async function readToken(file: string): Promise<string> {
  const text = await fs.readFile(file, 'utf8').catch((err: Error) => {
    throw new PublisherError('PUB_USAGE', `cannot read the token file ${file}: ${err.message}`);
  });
  const token = text.trim();
  if (token === '') throw new PublisherError('PUB_USAGE', `the token file ${file} is empty`);
  return token;
}

async function run(f: Flags): Promise<number> {
  const log: Logger = (level, line) => {
    if (level === 'debug' && !f.verbose) return;
    process.stderr.write(`cvmfs-publisher: ${level}: ${line}\n`);
  };
  const token = f.tokenFile ? await readToken(f.tokenFile) : undefined;
  if (!token) log('warn', 'no --token-file: the webhook and the status API accept requests from anyone who can reach them');
  const stateDir = f.state ?? defaultStateDir(f.repo, f.name, process.env);
  if ((f.repo === undefined) === (f.store === undefined)) throw new PublisherError('PUB_USAGE', 'give one of --repo DIR and --store s3://BUCKET[/PREFIX]');
  const opened = f.store !== undefined
    ? await openStorage({ store: f.store, s3Endpoint: f.storeEndpoint ?? f.s3Endpoint }).catch((err: unknown) => {
      throw err instanceof CvmfsError && err.code === 'CVMFS_BAD_ARGUMENT' ? new PublisherError('PUB_USAGE', err.message) : err;
    })
    : undefined;
  const objects = new S3ObjectStore({ endpoint: f.s3Endpoint, region: f.region ?? process.env['AWS_REGION'] ?? process.env['AWS_DEFAULT_REGION'] });
  const p = await startPublisher({
    repoDir: f.repo, ...(opened ? { storage: opened.storage } : {}), keysDir: f.keys, fqrn: f.name, objects, stateDir, buckets: f.bucket, token, port: f.port, bind: f.bind,
    serve: f.serve, allowUnnamed: f.allowUnnamed, maxBatch: f.maxBatch, log,
  });
  process.stdout.write(`cvmfs-publisher: listening on ${p.url} for ${f.name}${f.serve ? `; serving it at ${p.url}/cvmfs/${f.name}/` : ''}\n`);
  await new Promise<void>((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
  });
  log('info', 'stopping');
  await p.close();
  opened?.close();
  return 0;
}

export function program(): Command & { result(): Promise<number> } {
  let result: Promise<number> = Promise.resolve(0);
  const p = new Command('cvmfs-publisher')
    .description('Publish layers uploaded to an S3 bucket into a CernVM-FS repository (MinIO webhook notifications)')
    .exitOverride()
    .showHelpAfterError()
    .option('--repo <dir>', 'the repository tree, written with our writer')
    .option('--store <s3://bucket/prefix>', 'or: the repository kept in an S3 bucket (objects first, manifest last)')
    .option('--store-endpoint <url>', 'S3 endpoint of --store (default: --s3-endpoint)')
    .requiredOption('--keys <dir>', 'the key directory of the repository (kept outside the tree)')
    .requiredOption('--name <fqrn>', 'the repository name (checked against the repository)')
    .requiredOption('--s3-endpoint <url>', 'the S3 endpoint objects are fetched from (path-style), e.g. http://127.0.0.1:9000')
    .requiredOption('--bucket <name>', 'the bucket layers are uploaded to (repeatable); events for others are ignored', collect)
    .option('--token-file <file>', 'the webhook token (MinIO auth_token); required as "Authorization: Bearer <token>" by the webhook and the status API')
    .addOption(new Option('--port <port>', 'port to listen on').argParser(port).default(3000))
    .option('--bind <addr>', 'address to listen on', '127.0.0.1')
    .option('--serve', 'also serve the repository read-only at /cvmfs/<fqrn>/')
    .option('--state <dir>', 'private state directory of the job queue (default: <repo>/../.cvmfs-publisher, or $XDG_STATE_HOME/cvmfs-publisher/<fqrn>)')
    .option('--allow-unnamed', 'accept objects whose key names no sha256: the digest is computed in a first pass (nothing to verify it against)')
    .addOption(new Option('--max-batch <n>', 'jobs published per revision at most (bounds the event→done latency)').argParser((v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('a whole number, 1 or more');
      return n;
    }).default(8))
    .option('--region <region>', 'S3 region (default: $AWS_REGION, else us-east-1)')
    .option('-v, --verbose', 'debug logging')
    .action((f: Flags) => { result = run(f); });
  return Object.assign(p, { result: () => result });
}

async function main(argv: string[]): Promise<number> {
  const p = program();
  try {
    await p.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    throw err;
  }
  return p.result();
}

tuneMallocForWriter();
main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err: unknown) => {
  const coded = err instanceof CodedError;
  process.stderr.write(`cvmfs-publisher: ${coded ? messageOf(err) : `PUB_INTERNAL: ${messageOf(err)}`}\n`);
  process.exitCode = err instanceof PublisherError && err.code === 'PUB_USAGE' ? 2 : 1;
});
