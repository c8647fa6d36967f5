import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { GraphDriver } from '../../../driver/index.js';
import { createPluginApp, listenPlugin } from '../../../plugin/server.js';
import { tarOf } from '../../lib/tar-of.js';

/** Requests shaped like dockerd 20.10's: POST, no Content-Type, empty Host, compact JSON + "\n". */
function call(socket: string, method: string, body?: string | Buffer, query = ''): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method: 'POST', path: `/${method}${query}`, headers: { Host: '', Accept: 'application/vnd.docker.plugins.v1.2+json' } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}
const json = (r: { body: Buffer }) => JSON.parse(r.body.toString()) as Record<string, unknown>;

t.test('protocol shapes, errors and streams against a real socket', async (t) => {
  if (process.getuid?.() !== 0) { console.error('\n*** PLUGIN PROTOCOL TEST SKIPPED: needs root for mounts ***\n'); t.comment('PLUGIN PROTOCOL TEST SKIPPED: needs root for mounts'); t.pass('skipped: not root'); return; }
  const dir = t.testdir();
  // Unix socket paths are limited to 107 bytes: t.testdir() paths under a deep checkout exceed it.
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gd-'));
  t.teardown(() => fs.rmSync(sockDir, { recursive: true, force: true }));
  const socket = path.join(sockDir, 'p.sock');
  const server = await listenPlugin(createPluginApp({ driver: new GraphDriver(), stateDir: path.join(dir, 'state'), log: () => {} }), socket);
  t.teardown(() => new Promise<void>((r) => { server.close(() => r()); server.closeAllConnections(); }));
  t.same(json(await call(socket, 'Plugin.Activate', '')), { Implements: ['GraphDriver'] });
  let r = await call(socket, 'GraphDriver.Create', '{"ID":"early"}\n');
  t.equal(r.status, 500);
  t.match(json(r).Err, /^DRIVER_NOT_INITIALIZED: /, 'errors are 500 {"Err": "<CODE>: …"}');
  r = await call(socket, 'GraphDriver.Init', `{"Home":"${path.join(dir, 'home')}","UIDMaps":[{"ContainerID":0}]}\n`);
  t.match(json(r).Err, /^DRIVER_BAD_REQUEST: UIDMaps must be null or a list/, 'malformed ID maps are named');
  t.same(json(await call(socket, 'GraphDriver.Create', '{"ID":"early2"}\n')).Err?.toString().slice(0, 22), 'DRIVER_NOT_INITIALIZED', 'a refused Init leaves the driver uninitialised');
  t.same(json(await call(socket, 'GraphDriver.Init', `{"Home":"${path.join(dir, 'home')}","Opts":null,"UIDMaps":null,"GIDMaps":null}\n`)), {});
  t.same(json(await call(socket, 'GraphDriver.Capabilities', '{}\n')), { Capabilities: { ReproducesExactDiffs: false } });
  t.same(json(await call(socket, 'GraphDriver.Create', '{"ID":"base"}\n')), {});
  r = await call(socket, 'GraphDriver.ApplyDiff', await tarOf([{ type: 'file', name: 'etc/f', content: 'hello' }, { type: 'file', name: 'etc/.wh.gone' }]), '?id=base&parent=');
  t.same(json(r), { Size: 5 }, 'ApplyDiff answers the integer size');
  r = await call(socket, 'GraphDriver.ApplyDiff', await tarOf([{ type: 'file', name: '../escape', content: 'x' }]), '?id=base&parent=');
  t.equal(r.status, 500);
  t.match(json(r).Err, /DRIVER_TAR_PATH_ESCAPE/);
  t.same(json(await call(socket, 'GraphDriver.Exists', '{"ID":"base"}\n')), { Exists: true });
  t.same(json(await call(socket, 'GraphDriver.Exists', '{"ID":"nope"}\n')), { Exists: false });
  const dirOf = json(await call(socket, 'GraphDriver.Get', '{"ID":"base"}\n')).Dir as string;
  t.equal(dirOf, path.join(dir, 'home', 'layers', 'base', 'merged'));
  t.equal(json(await call(socket, 'GraphDriver.Get', '{"ID":"base"}\n')).Dir, dirOf, 'stable path');
  t.same(json(await call(socket, 'GraphDriver.Put', '{"ID":"base"}\n')), {});
  t.same(json(await call(socket, 'GraphDriver.Put', '{"ID":"base"}\n')), {});
  const diff = await call(socket, 'GraphDriver.Diff', '{"ID":"base"}\n');
  t.equal(diff.status, 200);
  t.ok(diff.body.includes(Buffer.from('etc/.wh.gone')), 'Diff turns the overlay whiteout back into .wh.');
  t.same(json(await call(socket, 'GraphDriver.Changes', '{"ID":"base"}\n')).Changes, [{ Path: '/etc', Kind: 1 }, { Path: '/etc/f', Kind: 1 }, { Path: '/etc/gone', Kind: 2 }]);
  t.same(json(await call(socket, 'GraphDriver.DiffSize', '{"ID":"base"}\n')), { Size: 5 });
  r = await call(socket, 'GraphDriver.Diff', '{"ID":"base","Parent":"other"}\n');
  t.equal(r.status, 500, 'Diff errors before streaming are 500 JSON');
  t.ok(Array.isArray(json(await call(socket, 'GraphDriver.Status', '{}\n')).Status));
  t.same(json(await call(socket, 'GraphDriver.Remove', '{"ID":"base"}\n')), {});
  t.same(json(await call(socket, 'GraphDriver.Remove', '{"ID":"base"}\n')), {}, 'Remove is idempotent');
  t.equal((await call(socket, 'GraphDriver.Nonsense', '{}')).status, 404);
});
