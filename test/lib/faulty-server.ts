/** An HTTP server in front of a repository directory that misbehaves on demand: corrupt chosen
 *  objects, answer 503, trickle, stall, truncate, or count requests. Listens on 127.0.0.1:0. */
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

/**
 * - `ok`: serves the file (with `corrupt` and `override` applied).
 * - `503`: answers 503.
 * - `trickle`: sends the headers (with the true Content-Length), then `trickleBytes` bytes every
 *   `trickleMs` ms.
 * - `stall`: accepts the request and never answers.
 * - `stall-body`: sends the headers and the first half of the body, then nothing.
 * - `truncate`: sends the headers and the first half of the body, then closes the connection.
 */
export type FaultMode = 'ok' | '503' | 'trickle' | 'stall' | 'stall-body' | 'truncate';

export interface FaultyServer {
  readonly url: string;
  /** Request paths (below the base) served so far. */
  readonly log: string[];
  corrupt: Set<string>;
  mode: FaultMode;
  /** Per request path: a mode that overrides `mode`, or undefined for `mode`. */
  modeOf: ((rel: string) => FaultMode | undefined) | undefined;
  trickleMs: number;
  trickleBytes: number;
  /** Replaces a top-level file's bytes (e.g. a tampered manifest). */
  override: Map<string, Buffer>;
  close(): Promise<void>;
}

export async function faultyServer(dir: string, fqrn: string): Promise<FaultyServer> {
  const prefix = `/cvmfs/${fqrn}/`;
  const state = {
    corrupt: new Set<string>(), mode: 'ok' as FaultMode, modeOf: undefined as ((rel: string) => FaultMode | undefined) | undefined,
    trickleMs: 5000, trickleBytes: 1, override: new Map<string, Buffer>(), log: [] as string[],
  };
  const timers = new Set<NodeJS.Timeout>();
  const server = http.createServer(async (req, res) => {
    const url = req.url ?? '';
    if (!url.startsWith(prefix)) { res.writeHead(404).end(); return; }
    const rel = url.slice(prefix.length);
    state.log.push(rel);
    const mode = state.modeOf?.(rel) ?? state.mode;
    if (mode === '503') { res.writeHead(503).end('unavailable'); return; }
    if (mode === 'stall') return;
    let body = state.override.get(rel) ?? await fs.readFile(path.join(dir, rel)).catch(() => undefined);
    if (!body) { res.writeHead(404).end(); return; }
    if ([...state.corrupt].some((c) => rel.includes(c))) { body = Buffer.from(body); body.writeUInt8(body[body.length >> 1]! ^ 0xff, body.length >> 1); }
    if (mode === 'ok') { res.writeHead(200, { 'Content-Length': body.length }).end(body); return; }
    res.writeHead(200, { 'Content-Length': body.length });
    res.flushHeaders();
    if (mode === 'trickle') {
      let sent = 0;
      const timer = setInterval(() => {
        const part = body.subarray(sent, sent + state.trickleBytes);
        sent += part.length;
        if (sent >= body.length) { clearInterval(timer); timers.delete(timer); res.end(part); } else res.write(part);
      }, state.trickleMs);
      timers.add(timer);
      res.on('close', () => { clearInterval(timer); timers.delete(timer); });
      return;
    }
    if (mode === 'truncate') res.write(body.subarray(0, body.length >> 1), () => res.socket?.destroy());
    else res.write(body.subarray(0, body.length >> 1));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return Object.assign(state, {
    url: `http://127.0.0.1:${port}/cvmfs/${fqrn}`,
    close: () => new Promise<void>((r) => {
      for (const t of timers) clearInterval(t);
      server.close(() => r());
      server.closeAllConnections();
    }),
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
