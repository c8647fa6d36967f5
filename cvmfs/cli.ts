#!/usr/bin/env node
/** `cvmfs-repo`: create, fill, re-sign, inspect and serve a CernVM-FS repository. */
import { createReadStream } from 'node:fs';
import { parseArgs } from 'node:util';
import { isCvmfsError, messageOf } from './errors.js';
import { parseHashAlgo } from './format/hash.js';
import { serveRepository } from './server/http-server.js';
import { DirStorage } from './writer/storage-dir.js';
import { ingest, initRepository, repositoryInfo, resign } from './writer/repository.js';
import { loadState } from './writer/repository-state.js';

const USAGE = `usage:
  cvmfs-repo init    --dir R --keys K --name FQRN [--hash sha1|shake128]
  cvmfs-repo ingest  --dir R --keys K --path /some/path [FILE|-]
  cvmfs-repo resign  --dir R --keys K [--days N]
  cvmfs-repo info    --dir R [--json]
  cvmfs-repo serve   --dir R [--port P] [--bind ADDR]

R is the served repository tree, K the key directory (kept outside R).
ingest reads a tar stream (plain, gzip or zstd) from FILE or standard input.`;

class UsageError extends Error {}

function need(v: string | undefined, flag: string): string {
  if (v === undefined || v === '') throw new UsageError(`missing --${flag}`);
  return v;
}

function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '-h' || cmd === '--help' || cmd === 'help') { console.log(USAGE); return cmd ? 0 : 2; }
  const { values: v, positionals } = parseArgs({
    args: rest, allowPositionals: true, strict: true,
    options: {
      dir: { type: 'string' }, keys: { type: 'string' }, name: { type: 'string' }, hash: { type: 'string' },
      path: { type: 'string' }, days: { type: 'string' }, port: { type: 'string' }, bind: { type: 'string' },
      json: { type: 'boolean' }, threads: { type: 'string' },
    },
  });
  const storage = () => new DirStorage(need(v.dir, 'dir'));
  switch (cmd) {
    case 'init': {
      const st = await initRepository({ storage: storage(), keysDir: need(v.keys, 'keys'), fqrn: need(v.name, 'name'),
        algo: parseHashAlgo(v.hash ?? 'sha1') });
      console.log(`created ${st.manifest.fqrn} at ${v.dir} (revision ${st.manifest.revision}, ${st.algo}); keys in ${v.keys}`);
      console.log(`whitelist expires ${st.whitelist.expires.slice(0, 8)}: run "cvmfs-repo resign" before then`);
      return 0;
    }
    case 'ingest': {
      const file = positionals[0] ?? '-';
      const input = file === '-' ? process.stdin : createReadStream(file);
      const t0 = process.hrtime.bigint();
      const r = await ingest({ storage: storage(), keysDir: need(v.keys, 'keys'), path: need(v.path, 'path'), input,
        ...(v.threads ? { threads: Number(v.threads) } : {}) });
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      console.log(`${r.fqrn} revision ${r.revision}: ${v.path} ← ${r.layer.entries} entries (${r.layer.compression}), ` +
        `${fmtBytes(r.layer.contentBytes)} content, ${r.objects.written} new objects (${fmtBytes(r.objects.bytesWritten)}), ` +
        `${r.objects.present} already present, ${s.toFixed(2)} s`);
      return 0;
    }
    case 'resign': {
      const days = v.days === undefined ? undefined : Number(v.days);
      const exp = await resign({ storage: storage(), keysDir: need(v.keys, 'keys'), ...(days !== undefined ? { days } : {}) });
      console.log(`whitelist re-signed; expires ${exp.toISOString()}`);
      return 0;
    }
    case 'info': {
      const i = await repositoryInfo(storage());
      if (v.json) {
        console.log(JSON.stringify(i, (_k, x: unknown) => (typeof x === 'bigint' ? Number(x) : x), 2));
        return 0;
      }
      const t = i.totals;
      console.log([
        `repository   ${i.fqrn}`,
        `revision     ${i.revision} (published ${new Date(i.publishTime * 1000).toISOString()})`,
        `root hash    ${i.rootHash} (${i.hashAlgorithm})`,
        `whitelist    expires ${i.whitelistExpires.toISOString()}${i.whitelistExpired ? '  EXPIRED: run cvmfs-repo resign' : ''}`,
        `catalogs     ${i.catalogs}`,
        `objects      ${i.objects} (${fmtBytes(i.objectBytes)})`,
        `entries      ${t.regular} files, ${t.dir} dirs, ${t.symlink} symlinks, ${t.special} special; ${fmtBytes(Number(t.file_size))} of file content`,
      ].join('\n'));
      return 0;
    }
    case 'serve': {
      const dir = need(v.dir, 'dir');
      const { manifest } = await loadState(new DirStorage(dir));
      const srv = await serveRepository({ dir, fqrn: manifest.fqrn, port: Number(v.port ?? 8000), bind: v.bind ?? '127.0.0.1',
        log: (l) => console.error(l) });
      console.log(`serving ${manifest.fqrn} at ${srv.url}`);
      await new Promise<void>((resolve) => {
        for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
      });
      await srv.close();
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${cmd}"`);
  }
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err: unknown) => {
  if (err instanceof UsageError || (err instanceof TypeError && (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS'))) {
    console.error(`cvmfs-repo: ${err.message}\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  console.error(`cvmfs-repo: ${messageOf(err)}`);
  if (!isCvmfsError(err) && err instanceof Error && err.stack) console.error(err.stack);
  process.exitCode = 1;
});
