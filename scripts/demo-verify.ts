/** Demo helper: reads a served repository over HTTP with the independent verifying reader of
 *  test/lib (signatures, hashes, catalog invariants, counters) and prints a short listing: a
 *  check independent of our client, which the demo then mounts. */
import fs from 'node:fs';
import { readRepository } from '../test/lib/repo-reader.js';

const [url, pubFile, fqrn] = process.argv.slice(2) as [string, string, string];
const repo = await readRepository(async (rel) => {
  const res = await fetch(`${url}/${rel}`);
  if (!res.ok) throw new Error(`GET ${rel}: HTTP ${res.status}`);
  return Buffer.from(await res.arrayBuffer());
}, fqrn, fs.readFileSync(pubFile, 'utf8'));
let files = 0, bytes = 0;
for (const e of repo.entries.values()) if (e.content) { files++; bytes += e.content.length; }
console.log(`read revision ${repo.revision} over HTTP: ${repo.entries.size} entries in ${repo.catalogs.size} catalogs, ${files} files (${(bytes / 1048576).toFixed(1)} MiB) fetched and verified`);
const layers = [...repo.catalogs.keys()].filter((c) => /^\/\.layers\/[0-9a-f]{2}\/[0-9a-f]{64}\/layerfs$/.test(c)).sort();
for (const c of layers) {
  const inside = [...repo.entries.entries()].filter(([p, e]) => p.startsWith(`${c}/`) && e.content);
  const size = inside.reduce((n, [, e]) => n + (e.content?.length ?? 0), 0);
  console.log(`  ${c}: ${inside.length} files, ${(size / 1048576).toFixed(1)} MiB`);
}
if (repo.problems.length) {
  console.error('PROBLEMS:\n  ' + repo.problems.join('\n  '));
  process.exit(1);
}
console.log('all signatures, hashes, sizes, catalog invariants and counters check out');
