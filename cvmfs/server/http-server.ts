/**
 * Serves a repository directory read-only at `/cvmfs/<fqrn>/` (docs/cvmfs-format.md §14): letters
 * with a 61 s lifetime, objects with 3 days, no Last-Modified/ETag, bodies sent unmodified,
 * keep-alive and TCP_NODELAY. The staging area `data/txn/` is never served.
 */
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';

export interface ServeOptions {
  readonly dir: string;
  readonly fqrn: string;
  readonly port?: number;
  readonly bind?: string;
  readonly log?: (line: string) => void;
}

export interface RepositoryServer {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

const LETTER_MAX_AGE_S = 61;
const WHOLE_READ_BYTES = 4 * 1024 * 1024;
const OBJECT_MAX_AGE_S = 3 * 24 * 3600;
const SERVABLE = /^(\.cvmfs[A-Za-z0-9_.-]*|data\/[0-9a-f]{2}\/[0-9a-z-]+[A-Z]?)$/;

export interface RepositoryHandlerOptions {
  readonly dir: string;
  readonly fqrn: string;
  readonly log?: (line: string) => void;
}

/** Answers one request for the repository (404 outside `/cvmfs/<fqrn>/`); never rejects. */
export type RepositoryHandler = (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void>;

/**
 * The request handler of `serveRepository`, for embedding in another server (the publisher's
 * `--serve`): same paths, headers and cache lifetimes.
 */
export function repositoryHandler(o: RepositoryHandlerOptions): RepositoryHandler {
  const root = path.resolve(o.dir);
  const prefix = `/cvmfs/${o.fqrn}/`;

  return async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = (req.url ?? '/').split('?')[0]!;
    const send = (status: number, text: string) => { res.writeHead(status, { 'Content-Type': 'text/plain' }); res.end(text + '\n'); };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed');
    if (!url.startsWith(prefix)) return send(404, 'not found');
    let rel: string;
    try { rel = decodeURIComponent(url.slice(prefix.length)); } catch { return send(404, 'not found'); }
    if (!SERVABLE.test(rel)) return send(404, 'not found');
    const file = path.join(root, rel);
    let size: number;
    try {
      const st = await fs.stat(file);
      if (!st.isFile()) return send(404, 'not found');
      size = st.size;
    } catch {
      return send(404, 'not found');
    }
    const letter = rel.startsWith('.cvmfs');
    const headers = {
      'Content-Type': letter ? 'application/x-cvmfs' : 'application/octet-stream',
      'Content-Length': size,
      'Cache-Control': `public, max-age=${letter ? LETTER_MAX_AGE_S : OBJECT_MAX_AGE_S}`,
    };
    if (req.method === 'HEAD') { res.writeHead(200, headers).end(); return; }
    try {
      if (size <= WHOLE_READ_BYTES) {
        // One read and one write: headers and body leave in the same segments.
        const body = await fs.readFile(file);
        res.writeHead(200, { ...headers, 'Content-Length': body.length }).end(body);
        return;
      }
      res.writeHead(200, headers);
      await pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), res);
    } catch (err) {
      o.log?.(`serving ${rel} failed: ${(err as Error).message}`);
      res.destroy();
    }
  };
}

export async function serveRepository(o: ServeOptions): Promise<RepositoryServer> {
  const handle = repositoryHandler(o);
  const server = http.createServer({ noDelay: true, keepAlive: true }, (req, res) => {
    void handle(req, res);
  });
  server.keepAliveTimeout = 60_000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, o.bind ?? '127.0.0.1', () => { server.off('error', reject); resolve(); });
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${host}:${addr.port}/cvmfs/${o.fqrn}`,
    port: addr.port,
    close: () => new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); }),
  };
}
