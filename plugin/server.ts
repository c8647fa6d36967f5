/**
 * The Docker graphdriver plugin protocol over HTTP on a unix socket (docker-graphdriver-protocol.md
 * §2–§6), mapped onto the driver. Protocol only: bodies are parsed whatever the Content-Type,
 * success is 200 with at least `{}`, every error is `500 {"Err": "<CODE>: …"}`. ApplyDiff reads the
 * chunked tar body itself (no body parser, no request timeout); Diff streams a tar, and a failure
 * after the first byte destroys the connection so the daemon never takes a truncated tar.
 */
import http from 'node:http';
import fs from 'node:fs/promises';
import express, { type Request, type Response } from 'express';
import { CodedError, DriverError, type GraphDriver, type IdMap, type Logger } from '../driver/index.js';

const JSON_LIMIT = '1mb';

/** The daemon's per-layer request; absent keys mean "" (docker-graphdriver-protocol.md §2.2). */
interface LayerRequest { readonly id: string; readonly parent: string }

function field(body: unknown, key: string): string {
  if (body === null || typeof body !== 'object') return '';
  const v = (body as Record<string, unknown>)[key];
  return typeof v === 'string' ? v : '';
}
function layerRequest(body: unknown): LayerRequest { return { id: field(body, 'ID'), parent: field(body, 'Parent') }; }
function stringList(body: unknown, key: string): string[] {
  const v = body !== null && typeof body === 'object' ? (body as Record<string, unknown>)[key] : undefined;
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** `UIDMaps`/`GIDMaps`: null, or entries with the keys container_id, host_id, size. */
function idMaps(body: unknown, key: string): IdMap[] {
  const v = body !== null && typeof body === 'object' ? (body as Record<string, unknown>)[key] : undefined;
  if (v === null || v === undefined) return [];
  const bad = () => new DriverError('DRIVER_BAD_REQUEST', `${key} must be null or a list of {"container_id","host_id","size"} numbers`);
  if (!Array.isArray(v)) throw bad();
  return v.map((e: unknown) => {
    const r = (e ?? {}) as Record<string, unknown>;
    const [c, h, n] = [r.container_id, r.host_id, r.size];
    if (typeof c !== 'number' || typeof h !== 'number' || typeof n !== 'number') throw bad();
    return { containerId: c, hostId: h, size: n };
  });
}

/** Every answer names a code: a driver or client error carries its own, anything else is a bug. */
function errorText(err: unknown): string {
  if (err instanceof CodedError) return err.message;
  return `DRIVER_INTERNAL: ${err instanceof Error ? err.message : String(err)}`;
}

export interface PluginOptions {
  readonly driver: GraphDriver;
  readonly stateDir: string;
  readonly log: Logger;
  /** How long the rest of a failed upload may trickle in before the answer goes out anyway. */
  readonly uploadIdleTimeoutMs?: number;
}

const DEFAULT_UPLOAD_IDLE_MS = 120_000;

/**
 * Answers a failed ApplyDiff. The daemon must see the error, not a dropped request, so the rest of
 * the upload is drained first; but an upload that was cut off or stalls is not waited for: the
 * answer goes out at once (or after `idleMs` without a byte) and the connection is closed.
 */
function answerAfterUpload(req: Request, res: Response, err: unknown, idleMs: number): void {
  let answered = false;
  let timer: NodeJS.Timeout | undefined;
  const answer = (close: boolean) => {
    if (answered) return;
    answered = true;
    clearTimeout(timer);
    req.off('data', onData);
    if (res.headersSent || res.writableEnded || req.socket.destroyed) { req.socket.destroy(); return; }
    if (close) { res.setHeader('Connection', 'close'); res.once('finish', () => req.socket.destroy()); }
    res.status(500).json({ Err: errorText(err) });
  };
  const arm = () => { clearTimeout(timer); timer = setTimeout(() => answer(true), idleMs); };
  const onData = () => arm();
  const code = err instanceof DriverError ? err.code : undefined;
  if (req.readableEnded) { answer(false); return; }
  if (code === 'DRIVER_UPLOAD_STALLED' || code === 'DRIVER_UPLOAD_ABORTED') { answer(true); return; }
  req.on('data', onData);
  req.once('end', () => answer(false)).once('close', () => answer(true)).once('error', () => answer(true));
  arm();
  req.resume();
}

export function createPluginApp(o: PluginOptions): express.Express {
  const { driver, log } = o;
  const app = express();
  app.disable('x-powered-by');
  const json = express.json({ type: () => true, strict: false, limit: JSON_LIMIT });

  const handle = (method: string, fn: (body: unknown) => Promise<unknown> | unknown) => {
    app.post(`/${method}`, json, (req: Request, res: Response) => {
      const body: unknown = req.body ?? {};
      log('debug', `${method} ${JSON.stringify(body)}`);
      Promise.resolve().then(() => fn(body)).then((out) => res.status(200).json(out ?? {}), (err: unknown) => {
        log('error', `${method}: ${errorText(err)}`);
        res.status(500).json({ Err: errorText(err) });
      });
    });
  };

  handle('Plugin.Activate', () => ({ Implements: ['GraphDriver'] }));
  handle('GraphDriver.Init', (b) => driver.init({ home: field(b, 'Home'), opts: stringList(b, 'Opts'), uidMaps: idMaps(b, 'UIDMaps'), gidMaps: idMaps(b, 'GIDMaps') }, o.stateDir).then(() => ({})));
  handle('GraphDriver.Capabilities', () => ({ Capabilities: { ReproducesExactDiffs: false } }));
  handle('GraphDriver.Create', (b) => { const r = layerRequest(b); return driver.create(r.id, r.parent, false).then(() => ({})); });
  handle('GraphDriver.CreateReadWrite', (b) => { const r = layerRequest(b); return driver.create(r.id, r.parent, true).then(() => ({})); });
  handle('GraphDriver.Remove', (b) => driver.remove(field(b, 'ID')).then(() => ({})));
  handle('GraphDriver.Get', (b) => driver.get(field(b, 'ID')).then((dir) => ({ Dir: dir })));
  handle('GraphDriver.Put', (b) => driver.put(field(b, 'ID')).then(() => ({})));
  handle('GraphDriver.Exists', (b) => ({ Exists: driver.exists(field(b, 'ID')) }));
  handle('GraphDriver.Status', () => ({ Status: driver.status() }));
  handle('GraphDriver.GetMetadata', (b) => ({ Metadata: driver.metadata(field(b, 'ID')) }));
  handle('GraphDriver.Cleanup', () => driver.cleanup().then(() => ({})));
  handle('GraphDriver.Changes', (b) => { const r = layerRequest(b); return driver.changes(r.id, r.parent).then((c) => ({ Changes: c })); });
  handle('GraphDriver.DiffSize', (b) => { const r = layerRequest(b); return driver.diffSize(r.id, r.parent).then((s) => ({ Size: s })); });

  app.post('/GraphDriver.ApplyDiff', (req: Request, res: Response) => {
    const id = typeof req.query.id === 'string' ? req.query.id : '';
    const parent = typeof req.query.parent === 'string' ? req.query.parent : '';
    driver.applyDiff(id, parent, req).then((size) => res.status(200).json({ Size: size }), (err: unknown) => {
      log('error', `GraphDriver.ApplyDiff ${id}: ${errorText(err)}`);
      answerAfterUpload(req, res, err, o.uploadIdleTimeoutMs ?? DEFAULT_UPLOAD_IDLE_MS);
    });
  });

  // A thin commit publishes before answering (minutes, possibly): everything that can fail
  // happens before the first byte, so a failure is a 500 the daemon reports, never a cut tar.
  app.post('/GraphDriver.Diff', json, (req: Request, res: Response) => {
    const r = layerRequest(req.body ?? {});
    const gone = new AbortController();
    const onClose = () => { if (!res.headersSent) gone.abort(); };
    res.once('close', onClose);
    Promise.resolve().then(() => driver.exportDiff(r.id, r.parent, { signal: gone.signal })).then((tar) => {
      res.off('close', onClose);
      if (res.destroyed) { tar.destroy(); return; }
      res.status(200).type('application/x-tar');
      tar.on('error', (err: Error) => { log('error', `GraphDriver.Diff ${r.id} failed mid-stream: ${err.message}`); res.destroy(err); });
      tar.pipe(res);
    }, (err: unknown) => {
      res.off('close', onClose);
      log('error', `GraphDriver.Diff ${r.id}: ${errorText(err)}`);
      if (!res.destroyed) res.status(500).json({ Err: errorText(err) });
    });
  });

  app.use((req: Request, res: Response) => { res.status(404).json({ Err: `unknown method ${req.path}` }); });
  return app;
}

/** Listens on a unix socket with the timeouts the daemon needs (§4.1, §4.2). */
export async function listenPlugin(app: express.Express, socketPath: string): Promise<http.Server> {
  if (Buffer.byteLength(socketPath) > 107) throw new Error(`socket path ${socketPath} is longer than the 107 bytes a unix socket path may have`);
  await fs.rm(socketPath, { force: true });
  const server = http.createServer(app);
  server.keepAliveTimeout = 10 * 60_000;
  server.requestTimeout = 0;
  server.headersTimeout = 60_000;
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(socketPath, () => resolve()); });
  return server;
}
