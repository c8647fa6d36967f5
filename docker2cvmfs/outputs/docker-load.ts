/**
 * Output: `docker load` through the Docker Engine API (`POST /images/load`, body an image tar)
 * with node:http, over a unix socket (`unix:///var/run/docker.sock` by default) or plain TCP
 * (`tcp://host:port`). The daemon answers with JSON lines (`{"stream": "Loaded image: a:b\n"}`,
 * or `{"errorDetail": {...}, "error": "..."}`); any error line fails the load.
 */
import http from 'node:http';
import type { Readable } from 'node:stream';
import { ConvertError } from '../errors.js';

export const DEFAULT_DOCKER_HOST = 'unix:///var/run/docker.sock';
/** Largest answer we keep (the load progress of a big archive is a few kB of JSON lines). */
const MAX_ANSWER_BYTES = 4 * 1024 * 1024;

type Endpoint = { readonly socketPath: string } | { readonly host: string; readonly port: number };

export function parseDockerHost(dockerHost: string): Endpoint {
  const unix = /^unix:\/\/(\/.+)$/.exec(dockerHost);
  if (unix) return { socketPath: unix[1]! };
  const tcp = /^(?:tcp|http):\/\/(\[[^\]]+\]|[^:/]+):(\d+)\/?$/.exec(dockerHost);
  if (tcp) return { host: tcp[1]!.replace(/^\[|\]$/g, ''), port: Number(tcp[2]) };
  throw new ConvertError('D2C_USAGE', `DOCKER_HOST ${JSON.stringify(dockerHost)} is neither unix:///path nor tcp://host:port`);
}

/** The refs (`name:tag`, or `sha256:…` image IDs for untagged images) an answer reports loaded. */
export function parseLoadAnswer(text: string, dockerHost: string): string[] {
  const refs: string[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let o: { stream?: unknown; error?: unknown; errorDetail?: { message?: unknown } };
    try { o = JSON.parse(line) as typeof o; } catch {
      throw new ConvertError('D2C_DOCKER_ERROR', `docker load at ${dockerHost}: answer line is not JSON: ${line.slice(0, 200)}`);
    }
    if (o.errorDetail !== undefined || o.error !== undefined) {
      const msg = typeof o.errorDetail?.message === 'string' ? o.errorDetail.message : String(o.error);
      throw new ConvertError('D2C_DOCKER_ERROR', `docker load at ${dockerHost} failed: ${msg}`);
    }
    if (typeof o.stream === 'string') {
      for (const m of o.stream.matchAll(/^Loaded image(?: ID)?: (\S+)\s*$/gm)) refs.push(m[1]!);
    }
  }
  return refs;
}

/** Loads the archive; resolves with the refs dockerd reports loaded. */
export async function loadIntoDocker(archive: Readable, opts: { readonly dockerHost?: string; readonly signal?: AbortSignal } = {}): Promise<string[]> {
  const dockerHost = opts.dockerHost ?? DEFAULT_DOCKER_HOST;
  const endpoint = parseDockerHost(dockerHost);
  return new Promise<string[]>((resolve, reject) => {
    let settled = false;
    const fail = (e: ConvertError) => { if (!settled) { settled = true; req.destroy(); archive.destroy(); reject(e); } };
    const req = http.request({
      ...endpoint, method: 'POST', path: '/images/load?quiet=1',
      headers: { 'Content-Type': 'application/x-tar', 'Transfer-Encoding': 'chunked' },
      ...(opts.signal ? { signal: opts.signal } : {}),
    }, (res) => {
      const parts: Buffer[] = [];
      let n = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
        if (n > MAX_ANSWER_BYTES) { fail(new ConvertError('D2C_DOCKER_ERROR', `docker load at ${dockerHost}: answer larger than ${MAX_ANSWER_BYTES} bytes`)); return; }
        parts.push(c);
      });
      res.on('error', (err) => fail(new ConvertError('D2C_DOCKER_ERROR', `docker load at ${dockerHost}: ${err.message}`, { cause: err })));
      res.on('end', () => {
        if (settled) return;
        const text = Buffer.concat(parts).toString('utf8');
        if (res.statusCode !== 200) {
          let msg = text.trim();
          try { const o = JSON.parse(text) as { message?: unknown }; if (typeof o.message === 'string') msg = o.message; } catch { /* plain text */ }
          fail(new ConvertError('D2C_DOCKER_ERROR', `docker load at ${dockerHost}: HTTP ${res.statusCode}: ${msg.slice(0, 500)}`));
          return;
        }
        try {
          const refs = parseLoadAnswer(text, dockerHost);
          settled = true;
          resolve(refs);
        } catch (err) { fail(err as ConvertError); }
      });
    });
    req.on('error', (err) => fail(new ConvertError('D2C_DOCKER_ERROR', `docker load: cannot reach dockerd at ${dockerHost} (${err.message})`, { cause: err })));
    archive.on('error', (err) => fail(err instanceof ConvertError ? err
      : new ConvertError('D2C_IO_FAILED', `docker load: reading the archive failed (${err.message})`, { cause: err })));
    archive.pipe(req);
  });
}
