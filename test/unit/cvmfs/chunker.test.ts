import { randomBytes } from 'node:crypto';
import t from 'tap';
import { Chunker } from '../../../cvmfs/writer/chunker.js';

t.test('cuts respect min and max, and do not depend on how the stream is split', async (t) => {
  const min = 4096, avg = 8192, max = 16384;
  const data = randomBytes(400_000);
  const whole = new Chunker(min, avg, max).cuts(data);
  const pieces = new Chunker(min, avg, max);
  const split: number[] = [];
  for (let off = 0; off < data.length; off += 1000) for (const c of pieces.cuts(data.subarray(off, off + 1000))) split.push(off + c);
  t.same(split, whole, 'same cut points whatever the buffer boundaries');
  let prev = 0;
  for (const c of whole) {
    t.ok(c - prev >= min && c - prev <= max, `chunk ${c - prev} within [${min}, ${max}]`);
    prev = c;
  }
  t.ok(whole.length >= 20, 'content-defined cuts happen');
  t.same(new Chunker(min, avg, max).cuts(Buffer.alloc(100_000)).slice(0, 3), [max, 2 * max, 3 * max], 'constant data is cut at max');
});
