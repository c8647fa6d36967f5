import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import t from 'tap';
import { compress } from 'zstd-napi';
import { openTar, sniffCompression } from '../../../cvmfs/writer/tar-input.js';
import { paxBytes } from '../../../cvmfs/tar/pax.js';
import { tarOf } from '../../lib/tar-of.js';

t.test('compression is detected from the bytes', async (t) => {
  t.equal(sniffCompression(Buffer.from([0x1f, 0x8b, 8, 0])), 'gzip');
  t.equal(sniffCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd])), 'zstd');
  t.equal(sniffCompression(Buffer.from('./a\0')), 'none');
});

t.test('tar-stream PAX values keep their bytes (regression: UTF-8 decoding mangled security.capability)', async (t) => {
  const cap = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0xff, 0xfe, 0x80, 0x00]);
  const tar = await tarOf([{ type: 'file', name: 'ping', content: 'x', pax: { 'SCHILY.xattr.security.capability': cap, path: 'bin/pïng' } }]);
  for (const [kind, bytes] of [['none', tar], ['gzip', gzipSync(tar)], ['zstd', compress(tar)]] as const) {
    const input = await openTar(Readable.from([bytes]));
    t.equal(input.compression, kind);
    const seen: string[] = [];
    for await (const e of input.entries) {
      seen.push(e.header.name);
      const v = (e.header.pax as Record<string, string>)['SCHILY.xattr.security.capability']!;
      t.same(paxBytes(v), cap, `${kind}: binary value intact`);
      e.resume();
    }
    await input.done;
    t.same(seen, ['bin/pïng'], `${kind}: PAX path decoded as UTF-8`);
  }
});
