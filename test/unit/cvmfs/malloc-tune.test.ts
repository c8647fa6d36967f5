import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { WRITER_ENV, WRITER_NODE_FLAGS } from '../../../cvmfs/malloc-tune.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

t.test("the writer's CLIs start node with the writer's flags", async (t) => {
  for (const cli of ['cvmfs/cli.ts', 'docker2cvmfs/cli.ts', 'publisher/cli.ts']) {
    const first = fs.readFileSync(path.join(root, cli), 'utf8').split('\n')[0]!;
    t.match(first, /^#!\/usr\/bin\/env -S /, `${cli}: env -S, so that the flags reach node`);
    const words = first.split(' ').slice(2);
    const node = words.indexOf('node');
    t.ok(node > 0, `${cli} runs node`);
    for (const [k, v] of Object.entries(WRITER_ENV)) t.ok(words.slice(0, node).includes(`${k}=${v}`), `${cli} sets ${k}=${v} before node starts`);
    for (const f of WRITER_NODE_FLAGS) t.ok(words.slice(node + 1).includes(f), `${cli} passes ${f}`);
  }
});

t.test('the malloc settings take effect in a process of their own', async (t) => {
  const addon = path.join(root, 'native/malloc-tune/build/Release/malloc_tune.node');
  if (!fs.existsSync(addon)) { t.fail(`${addon} is not built (npm ci builds it)`); return; }
  // In a child: mallopt is process-wide and must come before other threads make arenas.
  const out = execFileSync(process.execPath, ['-e', `const m = require(${JSON.stringify(addon)}); console.log(JSON.stringify([m.setMmapThreshold(262144), m.setArenaMax(2), m.setArenaMax(0), m.setMmapThreshold(64 * 1024 * 1024)]))`], { encoding: 'utf8' });
  t.same(JSON.parse(out), [true, true, false, false], 'valid settings accepted; 0 arenas and a threshold above 32 MiB refused');
});
