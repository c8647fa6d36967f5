/** Builds tar streams from entry specs, including hostile ones, with tar-stream's packer. */
import tar from 'tar-stream';

interface Common { readonly name: string; readonly mode?: number; readonly uid?: number; readonly gid?: number; readonly mtime?: Date;
  /** Sent as raw PAX records before the entry (binary values allowed). */
  readonly pax?: Readonly<Record<string, Buffer | string>> }
export type TarSpec =
  | (Common & { readonly type: 'file'; readonly content?: Buffer | string })
  | (Common & { readonly type: 'directory' })
  | (Common & { readonly type: 'symlink' | 'link'; readonly target: string })
  | (Common & { readonly type: 'character-device' | 'block-device'; readonly major: number; readonly minor: number })
  | (Common & { readonly type: 'fifo' });

export function paxRecords(records: Readonly<Record<string, Buffer | string>>): Buffer {
  const out: Buffer[] = [];
  for (const [k, v] of Object.entries(records)) {
    const body = Buffer.concat([Buffer.from(` ${k}=`), Buffer.isBuffer(v) ? v : Buffer.from(v), Buffer.from('\n')]);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    out.push(Buffer.from(String(len)), body);
  }
  return Buffer.concat(out);
}

/** A raw ustar header block (tar-stream's packer will not emit a PAX header with a body). */
export function rawHeader(name: string, typeflag: string, size: number): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, 'utf8');
  b.write('0000644\0', 100); b.write('0000000\0', 108); b.write('0000000\0', 116);
  b.write(size.toString(8).padStart(11, '0') + '\0', 124);
  b.write('00000000000\0', 136);
  b.write('        ', 148);
  b.write(typeflag, 156);
  b.write('ustar\0' + '00', 257);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  return b;
}

function padded(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

async function packOne(h: Partial<tar.Header> & { name: string }, body?: Buffer): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => { chunks.push(c as Buffer); });
  const ended = new Promise<void>((resolve, reject) => { pack.on('end', resolve); pack.on('error', reject); });
  await new Promise<void>((resolve, reject) => {
    const cb = (err?: Error | null) => (err ? reject(err) : resolve());
    if (body === undefined) pack.entry(h as tar.Header, cb); else pack.entry(h as tar.Header, body, cb);
  });
  pack.finalize();
  await ended;
  const all = Buffer.concat(chunks);
  return all.subarray(0, all.length - 1024); // tar-stream ends an archive with exactly two zero blocks
}

export async function tarOf(specs: readonly TarSpec[], opts: { omitEndMarker?: boolean } = {}): Promise<Buffer> {
  const out: Buffer[] = [];
  for (const s of specs) {
    if (s.pax) {
      const recs = paxRecords(s.pax);
      out.push(rawHeader('PaxHeader', 'x', recs.length), padded(recs));
    }
    const h: Partial<tar.Header> & { name: string } = { name: s.name, type: s.type, mode: s.mode ?? (s.type === 'directory' ? 0o755 : 0o644),
      uid: s.uid ?? 0, gid: s.gid ?? 0, mtime: s.mtime ?? new Date(1_700_000_000_000) };
    if (s.type === 'file') {
      const body = typeof s.content === 'string' ? Buffer.from(s.content) : s.content ?? Buffer.alloc(0);
      out.push(await packOne({ ...h, size: body.length }, body));
    } else if (s.type === 'symlink' || s.type === 'link') out.push(await packOne({ ...h, linkname: s.target }));
    else if (s.type === 'character-device' || s.type === 'block-device') out.push(await packOne({ ...h, devmajor: s.major, devminor: s.minor }));
    else out.push(await packOne(h));
  }
  if (!opts.omitEndMarker) out.push(Buffer.alloc(1024));
  return Buffer.concat(out);
}
