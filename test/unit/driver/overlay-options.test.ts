import t from 'tap';
import { escapeOverlayPath, overlayMountOf } from '../../../driver/overlay-options.js';

t.test('overlay paths escape \\ : , (G1); lower dirs are short relative links; no lowers is a bind', async (t) => {
  t.equal(escapeOverlayPath('/data/org/cvmfs:latest/a,b\\c'), '/data/org/cvmfs\\:latest/a\\,b\\\\c');
  const m = overlayMountOf({ home: '/data/x:1', lowerLinks: ['l/AAA', 'l/BBB'], upperDir: '/data/x:1/layers/i/diff', workDir: '/data/x:1/layers/i/work' });
  t.same(m, { type: 'overlay', source: 'overlay', cwd: '/data/x:1',
    options: ['lowerdir=l/AAA:l/BBB', 'upperdir=/data/x\\:1/layers/i/diff', 'workdir=/data/x\\:1/layers/i/work'] });
  t.same(overlayMountOf({ home: '/h', lowerLinks: [], upperDir: '/h/u', workDir: '/h/w' }).type, 'bind');
  t.throws(() => overlayMountOf({ home: '/h', lowerLinks: Array.from({ length: 129 }, (_, i) => `l/${i}`), upperDir: '/u', workDir: '/w' }), { code: 'DRIVER_LAYER_LIMIT', message: /129 layers, more than the 128/ }, 'a coded error above the layer limit (it had no code)');
  const many = overlayMountOf({ home: '/h', lowerLinks: Array.from({ length: 128 }, () => 'l/ABCDEFGHIJKLMNOP'), upperDir: '/u', workDir: '/w' });
  t.ok(many.options.join(',').length < 4096, '128 layers fit one page');
});
