/** Object keys → the digest they name (R41). */
import t from 'tap';
import { digestOfKey } from '../../../publisher/layer-key.js';

const hex = 'ab'.repeat(32);

t.test('keys naming a sha256 in their last component', async (t) => {
  for (const k of [hex, `sha256:${hex}`, `layers/${hex}`, `a/b/sha256:${hex}.tar.gz`, `${hex}.tgz`, `${hex}.tar.zst`, `${hex}.tar`]) {
    t.equal(digestOfKey(k), `sha256:${hex}`, k);
  }
});

t.test('keys naming none', async (t) => {
  for (const k of ['layer.tar.gz', hex.slice(1), `${hex}0`, hex.toUpperCase(), `${hex}/x`, `sha512:${hex}`, `${hex}.zip`, `sha256:${hex}.tar.gz.tar`, '']) {
    t.equal(digestOfKey(k), undefined, k || '(empty)');
  }
});
