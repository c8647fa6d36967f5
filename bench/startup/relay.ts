/**
 * A TCP delay relay: every chunk is forwarded `delayMs` after it arrived, in each direction, on the
 * same connection (keep-alive and pipelining kept, byte order kept). Timers are scheduled from the
 * arrival time, so the relay is a pipeline, not stop-and-wait: throughput is bounded by the window
 * (`windowBytes` queued per direction before the source is paused), not by the delay.
 */
import net from 'node:net';

export interface RelayStats { connections: number; bytesDown: number; bytesUp: number }

interface Pending { readonly due: number; readonly buf: Buffer | null }

/** One direction: src → (delay) → dst. */
function pipeDelayed(src: net.Socket, dst: net.Socket, delay: () => number, windowBytes: number, count: (n: number) => void): void {
  const queue: Pending[] = [];
  let queued = 0;
  let timer: NodeJS.Timeout | undefined;
  let paused = false;
  const maybeResume = () => {
    if (paused && queued + dst.writableLength < windowBytes / 2) { paused = false; src.resume(); }
  };
  const flush = () => {
    timer = undefined;
    const now = performance.now();
    while (queue.length && queue[0]!.due <= now + 0.5) {
      const p = queue.shift()!;
      if (p.buf === null) { dst.end(); return; }
      queued -= p.buf.length;
      count(p.buf.length);
      if (!dst.destroyed) dst.write(p.buf);
    }
    if (queue.length) timer = setTimeout(flush, Math.max(0, queue[0]!.due - performance.now()));
    maybeResume();
  };
  const enqueue = (buf: Buffer | null) => {
    const d = delay();
    if (d <= 0 && queue.length === 0) {
      if (buf === null) dst.end();
      else { count(buf.length); dst.write(buf); }
      return;
    }
    queue.push({ due: performance.now() + d, buf });
    if (buf) queued += buf.length;
    if (!timer) timer = setTimeout(flush, Math.max(0, queue[0]!.due - performance.now()));
  };
  src.on('data', (b: Buffer) => {
    enqueue(b);
    if (!paused && queued + dst.writableLength >= windowBytes) { paused = true; src.pause(); }
  });
  dst.on('drain', maybeResume);
  src.on('end', () => enqueue(null));
  src.on('close', () => { if (timer === undefined && queue.length === 0 && !dst.writableEnded) dst.end(); });
}

export interface Relay { readonly stats: RelayStats; close(): Promise<void> }

export async function startRelay(o: { listenHost: string; listenPort: number; toHost: string; toPort: number; delayMs: () => number; windowBytes: number }): Promise<Relay> {
  const stats: RelayStats = { connections: 0, bytesDown: 0, bytesUp: 0 };
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (client) => {
    stats.connections++;
    const upstream = net.connect({ host: o.toHost, port: o.toPort, noDelay: true });
    sockets.add(client); sockets.add(upstream);
    const kill = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
    client.on('error', kill); upstream.on('error', kill);
    client.on('close', () => { if (upstream.writableEnded || upstream.destroyed) kill(); });
    upstream.on('close', () => { if (client.writableEnded || client.destroyed) kill(); });
    // Half the connect round trip too: the upstream is local, the client waits for our answers.
    pipeDelayed(client, upstream, o.delayMs, o.windowBytes, (n) => { stats.bytesUp += n; });
    pipeDelayed(upstream, client, o.delayMs, o.windowBytes, (n) => { stats.bytesDown += n; });
  });
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(o.listenPort, o.listenHost, () => resolve()); });
  return {
    stats,
    close: () => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }),
  };
}

/** The probe service behind a relay: `p` is echoed (ping); `b` + u32 N answers N bytes (bulk). */
export async function startProbeServer(host: string, port: number): Promise<net.Server> {
  const block = Buffer.alloc(1 << 20, 0x5a);
  const server = net.createServer({ noDelay: true }, (s) => {
    let pending = Buffer.alloc(0);
    s.on('error', () => s.destroy());
    s.on('data', (b: Buffer) => {
      pending = Buffer.concat([pending, b]);
      while (pending.length) {
        if (pending[0] === 0x70) { s.write('p'); pending = pending.subarray(1); continue; }
        if (pending[0] === 0x62 && pending.length >= 5) {
          let left = pending.readUInt32BE(1);
          pending = pending.subarray(5);
          const send = () => {
            while (left > 0) {
              const n = Math.min(left, block.length);
              left -= n;
              if (!s.write(block.subarray(0, n))) { s.once('drain', send); return; }
            }
          };
          send();
          continue;
        }
        break;
      }
    });
  });
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, host, () => resolve()); });
  return server;
}
