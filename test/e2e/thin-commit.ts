/**
 * Thin commits that publish, end to end (R1, R5, R9; thin-images-and-layout.md §3.6): a daemon
 * whose plugin is configured with the publisher (`docker plugin set` CVMFSGD_PUBLISHER_URL,
 * CVMFSGD_PUBLISHER_TOKEN, CVMFSGD_PUBLISH_S3_*, AWS_*; see `publishPluginEnv`) commits a
 * container of a thin image; the committed image has one more layer, itself thin (its layer tar
 * holds only thin.json, whose descriptor appends the new layer top-most), and runs with the
 * committed changes on a second daemon whose cache is empty, pulled through a registry.
 *
 * Wired up by publish.test.ts, which brings up the real publisher, s3rver, the registry and the
 * daemons, then calls `thinCommitTests(t, daemon, setup)`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { Test } from 'tap';
import tar from 'tar-stream';
import type { Daemon } from '../lib/dockerd.js';
import { goodDescriptor, importThin } from './thin-images.js';


export interface PublisherEndpoints {
  /** Base URL of the publisher's status API (GET /status/<key>?format=json). */
  readonly publisherUrl: string;
  readonly token: string;
  readonly s3Endpoint: string;
  readonly bucket: string;
  readonly prefix?: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly region?: string;
  /** Seconds a commit waits for "done"; default the plugin's (600). */
  readonly deadlineSeconds?: number;
}

/** The plugin settings (`docker plugin set` / startManagedDaemon's pluginEnv) that turn publishing on. */
export function publishPluginEnv(p: PublisherEndpoints): Record<string, string> {
  return {
    CVMFSGD_PUBLISHER_URL: p.publisherUrl, CVMFSGD_PUBLISHER_TOKEN: p.token,
    CVMFSGD_PUBLISH_S3_ENDPOINT: p.s3Endpoint, CVMFSGD_PUBLISH_S3_BUCKET: p.bucket, CVMFSGD_PUBLISH_S3_PREFIX: p.prefix ?? '',
    AWS_ACCESS_KEY_ID: p.accessKeyId, AWS_SECRET_ACCESS_KEY: p.secretAccessKey, AWS_REGION: p.region ?? 'us-east-1',
    ...(p.deadlineSeconds !== undefined ? { CVMFSGD_PUBLISH_DEADLINE_SECONDS: String(p.deadlineSeconds) } : {}),
  };
}

/** What thinCommitTests needs besides the publishing daemon. */
export interface ThinCommitSetup {
  /** A second daemon on the plugin (publishing not needed), configured for the same repository, with an empty cache. */
  readonly fresh: () => Daemon;
  /** A registry both daemons reach, e.g. 127.0.0.1:5000 (loopback registries need no TLS). */
  readonly registry: () => string;
  /** The repository the publisher writes, as the new layer's url must name it. */
  readonly fqrn: string;
  /**
   * Optional: a daemon whose plugin is configured to publish to a publisher URL nobody answers
   * (S3 reachable), with a short CVMFSGD_PUBLISH_DEADLINE_SECONDS (e.g. 5).
   */
  readonly unreachable?: () => Daemon;
}

const dockerRun = ['run', '--rm', '--network', 'none'];

interface Descriptor { version: string; origin?: string; layers: { digest: string; url?: string }[] }

/** The files of each layer of an image, from `docker save` (a tar of layer tars, manifest.json). */
async function savedLayers(d: Daemon, image: string): Promise<{ name: string; body: Buffer }[][]> {
  const file = path.join(d.dir, `save-${image.replace(/[^a-z0-9]/gi, '_')}.tar`);
  await d.docker(['save', '-o', file, image]);
  try {
    const outer = await readTar(fs.readFileSync(file));
    const manifest = JSON.parse(outer.find((e) => e.name === 'manifest.json')!.body.toString()) as { Layers: string[] }[];
    const layers: { name: string; body: Buffer }[][] = [];
    for (const l of manifest[0]!.Layers) layers.push(await readTar(outer.find((e) => e.name === l)!.body));
    return layers;
  } finally {
    fs.rmSync(file, { force: true });
  }
}

async function readTar(bytes: Buffer): Promise<{ name: string; body: Buffer }[]> {
  const out: { name: string; body: Buffer }[] = [];
  const ex = tar.extract();
  Readable.from([bytes]).pipe(ex as unknown as NodeJS.WritableStream);
  for await (const e of ex) {
    const parts: Buffer[] = [];
    for await (const c of e) parts.push(c as Buffer);
    out.push({ name: e.header.name, body: Buffer.concat(parts) });
  }
  return out;
}

/**
 * `daemon`: a daemon on the plugin configured with `publishPluginEnv`, whose repositories hold
 * goodDescriptor()'s layers (prepareThinRepositories) and the publisher's repository `s.fqrn`.
 */
export function thinCommitTests(t: Test, daemon: () => Daemon, s: ThinCommitSetup): void {
  t.test('thin commit: docker commit publishes the layer; the new image is thin with the layer appended on top', async (t) => {
    const d = daemon();
    await importThin(d, 'pubthin:1', goodDescriptor());
    await d.docker(['run', '--name', 'tc1', '--network', 'none', 'pubthin:1', 'sh', '-c',
      'echo committed > /etc/data/new; echo changed > /etc/data/b; rm /opt/dir/z; mkdir -p /srv && echo srv > /srv/file']);
    const committed = await d.docker(['commit', 'tc1', 'pubthin:2'], { allowFail: true });
    await d.docker(['rm', 'tc1']);
    t.equal(committed.code, 0, `docker commit succeeds: ${committed.stderr}`);
    if (committed.code !== 0) return;
    t.match(d.pluginLog(), /thin commit of [0-9a-f]{64}: layer sha256:[0-9a-f]{64} is at cvmfs:\/\//, 'the plugin published the layer');

    const before = await savedLayers(d, 'pubthin:1');
    const after = await savedLayers(d, 'pubthin:2');
    t.equal(after.length, before.length + 1, 'one more layer');
    const top = after.at(-1)!;
    t.same(top.map((e) => e.name), ['thin.json'], 'the new layer tar holds only thin.json');
    const parent = JSON.parse(before.at(-1)!.find((e) => e.name === 'thin.json')!.body.toString()) as Descriptor;
    const desc = JSON.parse(top[0]!.body.toString()) as Descriptor;
    t.equal(desc.version, '1.0');
    t.equal(desc.origin, parent.origin, 'origin kept');
    t.equal(desc.layers.length, parent.layers.length + 1);
    t.same(desc.layers.slice(0, -1).map((l) => l.digest.replace(/^sha256:/, '')), parent.layers.map((l) => l.digest.replace(/^sha256:/, '')),
      'the parent layers first, in order');
    t.match(desc.layers.at(-1), { digest: /^[0-9a-f]{64}$/, url: new RegExp(`^cvmfs://${s.fqrn.replace(/\./g, '\\.')}/.+`) }, 'the new layer last (top-most, R1)');
    t.match((await d.docker(['info'])).stdout, /Commits on thin images: published to /, 'docker info shows the mode');

    const out = (await d.docker([...dockerRun, 'pubthin:2', 'sh', '-c', 'cat /etc/data/new /etc/data/b /srv/file; ls /opt/dir; ls -a / | grep -c thin.json; true'])).stdout;
    t.equal(out, 'committed\nchanged\nsrv\n0\n', 'on this daemon: additions, edits and deletions of the commit show (the deletion over the base layers)');
  });

  t.test('thin commit: the committed image runs on a second daemon with an empty cache, pulled from a registry', async (t) => {
    const d = daemon();
    const f = s.fresh();
    const ref = `${s.registry()}/e2e/pubthin:2`;
    await d.docker(['tag', 'pubthin:2', ref]);
    await d.docker(['push', ref]);
    t.match((await f.docker(['info'])).stdout, /Repositories mounted: none/, 'the second daemon has nothing mounted');
    await f.docker(['pull', ref]);
    const out = (await f.docker([...dockerRun, ref, 'sh', '-c', 'cat /etc/data/new /etc/data/b /srv/file; ls /opt/dir; ls -a / | grep -c thin.json; true'])).stdout;
    t.equal(out, 'committed\nchanged\nsrv\n0\n', 'the same tree, read from the repository');
    await f.docker(['rmi', ref]);
    await d.docker(['rmi', ref]);
  });

  t.test('thin commit: a second commit on the committed image appends again', async (t) => {
    const d = daemon();
    await d.docker(['run', '--name', 'tc2', '--network', 'none', 'pubthin:2', 'sh', '-c', 'echo again > /again; rm /srv/file']);
    await d.docker(['commit', 'tc2', 'pubthin:3']);
    await d.docker(['rm', 'tc2']);
    const layers = await savedLayers(d, 'pubthin:3');
    const desc = JSON.parse(layers.at(-1)![0]!.body.toString()) as Descriptor;
    const prev = JSON.parse((await savedLayers(d, 'pubthin:2')).at(-1)![0]!.body.toString()) as Descriptor;
    t.same(desc.layers.slice(0, -1), prev.layers, 'the previous descriptor, with one more layer on top');
    t.equal((await d.docker([...dockerRun, 'pubthin:3', 'sh', '-c', 'cat /again /etc/data/new; ls /srv'])).stdout, 'again\ncommitted\n');
    await d.docker(['rmi', 'pubthin:3', 'pubthin:2', 'pubthin:1']);
  });

  // The unreachable-publisher case needs a daemon of its own; test/integration/driver/thin-commit.test.ts covers it without one.
  if (s.unreachable) t.test('thin commit: when the publisher does not answer, docker commit fails with the reason and leaves no image or layer', async (t) => {
    const d = s.unreachable!();
    await importThin(d, 'pubthin:f', goodDescriptor());
    const layers = () => fs.readdirSync(path.join(d.home, 'layers')).sort();
    await d.docker(['run', '--name', 'tcf', '--network', 'none', 'pubthin:f', 'sh', '-c', 'echo x > /x']);
    const before = layers();
    const r = await d.docker(['commit', 'tcf', 'pubthin:fail'], { allowFail: true });
    t.not(r.code, 0, 'docker commit fails');
    t.match(r.stderr, /DRIVER_PUBLISH_TIMEOUT: publisher .* did not report [0-9a-f]{64} done within .*no answer: request failed/, `with the coded reason: ${r.stderr.trim()}`);
    t.equal((await d.docker(['images', '-q', 'pubthin:fail'])).stdout.trim(), '', 'no image');
    t.same(layers(), before, 'no layer left behind in the layer store');
    await d.docker(['rm', 'tcf']);
    await d.docker(['rmi', 'pubthin:f']);
  });
}
