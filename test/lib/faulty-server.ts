/** An HTTP server in front of a repository directory that misbehaves on demand: corrupt chosen
 *  objects, answer 503, or count requests. Listens on 127.0.0.1:0. */
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

export interface FaultyServer {
  readonly url: string;
  /** Request paths (below the base) served so far. */
  readonly log: string[];
  corrupt: Set<string>;
  mode: 'ok' | '503';
  /** Replaces a top-level file's bytes (e.g. a tampered manifest). */
  override: Map<string, Buffer>;
  close(): Promise<void>;
}

export async function faultyServer(dir: string, fqrn: string): Promise<FaultyServer> {
  const prefix = `/cvmfs/${fqrn}/`;
  const state = { corrupt: new Set<string>(), mode: 'ok' as 'ok' | '503', override: new Map<string, Buffer>(), log: [] as string[] };
  const server = http.createServer(async (req, res) => {
    const url = req.url ?? '';
    if (!url.startsWith(prefix)) { res.writeHead(404).end(); return; }
    const rel = url.slice(prefix.length);
    state.log.push(rel);
    if (state.mode === '503') { res.writeHead(503).end('unavailable'); return; }
    let body = state.override.get(rel) ?? await fs.readFile(path.join(dir, rel)).catch(() => undefined);
    if (!body) { res.writeHead(404).end(); return; }
    if ([...state.corrupt].some((c) => rel.includes(c))) { body = Buffer.from(body); body.writeUInt8(body[body.length >> 1]! ^ 0xff, body.length >> 1); }
    res.writeHead(200, { 'Content-Length': body.length }).end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return Object.assign(state, {
    url: `http://127.0.0.1:${port}/cvmfs/${fqrn}`,
    close: () => new Promise<void>((r) => { server.close(() => r()); server.closeAllConnections(); }),
  });
}

/** A URL where nothing listens. */
export async function deadUrl(fqrn: string): Promise<string> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return `http://127.0.0.1:${port}/cvmfs/${fqrn}`;
}
