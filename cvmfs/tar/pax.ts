/**
 * tar-stream decodes every PAX record value as UTF-8, which corrupts binary xattr values such as
 * `security.capability` (SCHILY.xattr.*). Its extractor looks `decodePax` up on its headers module
 * at call time, so we install a decoder that keeps each value's bytes as a latin1 string
 * (one char per byte). `paxString` and `paxBytes` turn such values back into text or bytes.
 * test/unit/cvmfs/tar-input.test.ts fails if a tar-stream upgrade bypasses this.
 */
import { createRequire } from 'node:module';
import path from 'node:path';

interface TarStreamHeaders { decodePax(buf: Buffer): Record<string, string> }

const require = createRequire(import.meta.url);
const headersModule = require(path.join(path.dirname(require.resolve('tar-stream')), 'headers.js')) as TarStreamHeaders;

function decodePaxBytes(buf: Buffer): Record<string, string> {
  const result: Record<string, string> = {};
  let b = buf;
  while (b.length) {
    const space = b.indexOf(0x20);
    if (space <= 0) break;
    const len = parseInt(b.toString('ascii', 0, space), 10);
    if (!len || len > b.length) break;
    const record = b.subarray(space + 1, len - 1);
    const eq = record.indexOf(0x3d);
    if (eq < 0) break;
    result[record.toString('utf8', 0, eq)] = record.toString('latin1', eq + 1);
    b = b.subarray(len);
  }
  // tar-stream applies these three itself and expects text.
  for (const k of ['path', 'linkpath']) if (result[k] !== undefined) result[k] = paxString(result[k]);
  return result;
}

let installed = false;
export function installPaxDecoder(): void {
  if (installed) return;
  headersModule.decodePax = decodePaxBytes;
  installed = true;
}

export function paxBytes(value: string): Buffer { return Buffer.from(value, 'latin1'); }
export function paxString(value: string): string { return Buffer.from(value, 'latin1').toString('utf8'); }
