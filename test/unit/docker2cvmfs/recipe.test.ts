import t, { type Test } from 'tap';
import fc from 'fast-check';
import {
  DEFAULT_OUTPUT_FORMAT, expandWildcard, outputName, parseRecipe, type RecipeInput,
} from '../../../docker2cvmfs/recipe.js';
import { parseReference } from '../../../docker2cvmfs/reference.js';

const hex = 'a'.repeat(64);

/** The one input of a recipe that lists only `image`. */
const inputOf = (image: string): RecipeInput => parseRecipe(`cvmfs_repo: a.b\ninput: ['${image}']\n`).inputs[0]!;

/** Asserts D2C_RECIPE_INVALID whose message carries exactly `recipe.yaml:line:col: ` and matches `re`. */
function bad(t: Test, text: string, line: number, col: number, re: RegExp): void {
  let thrown: unknown;
  try { parseRecipe(text); } catch (err) { thrown = err; }
  t.match(thrown, { code: 'D2C_RECIPE_INVALID' }, `rejects ${JSON.stringify(text)}`);
  const message = thrown instanceof Error ? thrown.message : '';
  t.match(message, new RegExp(`^D2C_RECIPE_INVALID: recipe\\.yaml:${line}:${col}: `), `at ${line}:${col}`);
  t.match(message, re);
}

t.test('the §8.1 example parses', async (t) => {
  const r = parseRecipe(`version: 1
user: smosciat
cvmfs_repo: unpacked.cern.ch
output_format: '$(scheme)://registry.gitlab.cern.ch/thin/$(image)'
input:
  - 'https://registry.hub.docker.com/econtal/numpy-mkl:latest'
  - 'https://registry.hub.docker.com/library/fedora:latest'
  - 'https://registry.hub.docker.com/atlas/analysisbase:21.2.1*'
`);
  t.same(r, {
    version: 1,
    user: 'smosciat',
    repository: 'unpacked.cern.ch',
    outputFormat: '$(scheme)://registry.gitlab.cern.ch/thin/$(image)',
    inputs: [
      { text: 'https://registry.hub.docker.com/econtal/numpy-mkl:latest', line: 6, scheme: 'https', registry: 'registry.hub.docker.com', repository: 'econtal/numpy-mkl', tag: 'latest', wildcard: false },
      { text: 'https://registry.hub.docker.com/library/fedora:latest', line: 7, scheme: 'https', registry: 'registry.hub.docker.com', repository: 'library/fedora', tag: 'latest', wildcard: false },
      { text: 'https://registry.hub.docker.com/atlas/analysisbase:21.2.1*', line: 8, scheme: 'https', registry: 'registry.hub.docker.com', repository: 'atlas/analysisbase', tag: '21.2.1*', wildcard: true },
    ],
  });
  t.notOk('subdirectory' in r);
});

t.test('defaults and variants: no version, default format, subdirectory, scheme-less, digests, ports, flow list', async (t) => {
  const r = parseRecipe(`cvmfs_repo: unpacked.cern.ch/sub/dir
output_format: 'r.io/$(repository)$(reference)'
input: [docker.io/library/fedora, 'http://localhost:5000/a/b:1.0', 'gitlab-registry.cern.ch/x/y@sha256:${hex}', 'ghcr.io/o/p:v1@sha256:${hex}']
`);
  t.equal(r.version, 1);
  t.equal(r.repository, 'unpacked.cern.ch');
  t.equal(r.subdirectory, 'sub/dir');
  t.equal(r.outputFormat, 'r.io/$(repository)$(reference)');
  t.equal(parseRecipe('cvmfs_repo: a.b\ninput: [h.io/a/b]\n').outputFormat, DEFAULT_OUTPUT_FORMAT);
  t.notOk('user' in r);
  t.same(r.inputs.map((i) => [i.line, i.scheme, i.registry, i.repository, i.tag, i.digest]), [
    [3, undefined, 'docker.io', 'library/fedora', 'latest', undefined], // DUCC: no tag and no digest means latest
    [3, 'http', 'localhost:5000', 'a/b', '1.0', undefined],
    [3, undefined, 'gitlab-registry.cern.ch', 'x/y', undefined, `sha256:${hex}`], // fine: this format does not use $(tag)
    [3, undefined, 'ghcr.io', 'o/p', 'v1', `sha256:${hex}`],
  ]);
});

t.test('schema errors name line and column', async (t) => {
  bad(t, 'version: 2\ncvmfs_repo: a.b\ninput: [h.io/a/b]\n', 1, 10, /version must be 1.*not 2/);
  bad(t, "version: '1'\ncvmfs_repo: a.b\ninput: [h.io/a/b]\n", 1, 10, /version must be 1.*not "1"/);
  bad(t, 'cvmfs_repo: a.b\ninput: [h.io/a/b]\nversion:\n', 3, 1, /version must be 1.*not null/);
  bad(t, 'input:\n  - h.io/a/b\n', 1, 1, /cvmfs_repo is required/);
  bad(t, 'cvmfs_repo:\ninput:\n  - h.io/a/b\n', 1, 1, /cvmfs_repo is required/);
  bad(t, 'cvmfs_repo: Bad_Repo\ninput:\n  - h.io/a/b\n', 1, 13, /"Bad_Repo" is not a valid fqrn/);
  bad(t, 'cvmfs_repo: nodots\ninput:\n  - h.io/a/b\n', 1, 13, /not a valid fqrn/);
  bad(t, 'cvmfs_repo: a.b/../etc\ninput:\n  - h.io/a/b\n', 1, 13, /subdirectory "\.\.\/etc" must be a relative path/);
  bad(t, 'cvmfs_repo: [a.b]\ninput:\n  - h.io/a/b\n', 1, 13, /cvmfs_repo must be a string/);
  bad(t, 'cvmfs_repo: a.b\nuser: 5\ninput:\n  - h.io/a/b\n', 2, 7, /user must be a string/);
  bad(t, 'cvmfs_repo: a.b\n', 1, 1, /input is required/);
  bad(t, 'cvmfs_repo: a.b\ninput:\n', 2, 1, /input must be a non-empty list/);
  bad(t, 'cvmfs_repo: a.b\ninput: []\n', 2, 8, /input must be a non-empty list/);
  bad(t, 'cvmfs_repo: a.b\ninput: h.io/a/b\n', 2, 8, /input must be a non-empty list/);
  bad(t, 'cvmfs_repo: a.b\ninput:\n  - h.io/a/b\n  - 7\n', 4, 5, /each input must be a string/);
  bad(t, 'cvmfs_repo: a.b\ninput:\n  - {a: 1}\n', 3, 5, /each input must be a string/);
  bad(t, 'cvmfs_repo: a.b\ninputs:\n  - h.io/a/b\n', 2, 1, /unknown key "inputs"/);
  bad(t, 'cvmfs_repo: a.b\ninput: [h.io/a/b]\n  \noutput_fromat: x\n', 4, 1, /unknown key "output_fromat"/);
  bad(t, "cvmfs_repo: a.b\noutput_format: 'r.io/$(foo)'\ninput: [h.io/a/b]\n", 2, 16, /unknown variable \$\(foo\)/);
  bad(t, "cvmfs_repo: a.b\noutput_format: 'r.io/$(tag'\ninput: [h.io/a/b]\n", 2, 16, /unclosed "\$\("/);
  bad(t, `cvmfs_repo: a.b\ninput:\n  - h.io/a/b\n  - h.io/a/c@sha256:${hex}\n`, 4, 5, /has no tag, but output_format .* uses \$\(tag\)/);
  bad(t, '', 1, 1, /recipe is empty/);
  bad(t, '- a\n- b\n', 1, 1, /recipe is not a mapping/);
});

t.test('bad input images name the line and the bad part', async (t) => {
  const at3 = (image: string, re: RegExp) => bad(t, `cvmfs_repo: a.b\ninput:\n  - '${image}'\n`, 3, 5, re);
  at3(`h.io/a/b@sha256:${hex}@x`, /more than one "@"/);
  at3('h.io/a/b:1:2', /too many ":"/);
  at3('ftp://h.io/a/b', /unknown scheme "ftp"/);
  at3('fedora', /no "\/" between registry and repository/);
  at3('library/fedora:latest', /registry "library" is not a host name .*docker\.io\/library\/fedora/);
  at3('h_x.io/a/b', /registry host "h_x\.io" is invalid/);
  at3('h.io:99999/a/b', /port 99999 is out of range/);
  at3('h.io/A/b', /repository "A\/b" must be lower case/);
  at3('h.io/a//b', /repository "a\/\/b" has an empty path component/);
  at3('h.io/a/b:', /tag "" is invalid/);
  at3('h.io/a/b:.x', /tag "\.x" is invalid/);
  at3('h.io/a/b@sha256:abc', /not of the form sha256:<64 lower-case hex digits>/);
  at3('h.io/a/b@nocolon', /digest "nocolon" is not of the form sha256:/);
  at3(`h.io/a/b@sha512:${'a'.repeat(128)}`, /only sha256/);
  at3('h.io/a/b:.*', /tag "\.\*" is invalid/); // the glob as written, not the placeholder the grammar saw
  at3('h.io/a*/b:1', /"\*" is allowed only in the tag/);
  at3('h*.io/a/b:1', /"\*" is allowed only in the tag/);
  at3(`h.io/a/b:1*@sha256:${hex}`, /wildcard tag cannot be combined with a digest/);
  t.same(inputOf('h.io/a/b:1.*'), { text: 'h.io/a/b:1.*', line: 2, registry: 'h.io', repository: 'a/b', tag: '1.*', wildcard: true });
});

t.test('duplicate inputs name both lines; Docker Hub aliases, https default and library/ are folded', async (t) => {
  bad(t, 'cvmfs_repo: a.b\ninput:\n  - h.io/a/b:1\n  - h.io/x/y\n  - h.io/a/b:1\n', 5, 5, /"h\.io\/a\/b:1" on line 5 duplicates "h\.io\/a\/b:1" on line 3/);
  bad(t, "cvmfs_repo: a.b\ninput:\n  - docker.io/library/fedora:latest\n  - 'https://registry.hub.docker.com/fedora'\n", 4, 5, /on line 4 duplicates "docker\.io\/library\/fedora:latest" on line 3/);
  bad(t, 'cvmfs_repo: a.b\ninput:\n  - https://index.docker.io/a/b:1\n  - docker.io/a/b:1\n', 4, 5, /line 4 duplicates .* line 3/);
  // http and https, or different tags, are different images
  t.equal(parseRecipe('cvmfs_repo: a.b\ninput:\n  - http://h.io/a/b\n  - h.io/a/b\n  - h.io/a/b:2\n').inputs.length, 3);
  bad(t, 'cvmfs_repo: a.b\ninput:\n  - docker.io:443/a/b:1\n  - registry-1.docker.io/a/b:1\n', 4, 5, /line 4 duplicates .* line 3/);
});

t.test('YAML syntax errors name line and column', async (t) => {
  bad(t, 'cvmfs_repo: a.b\ninput:\n    - h.io/a/b\n  - h.io/a/c\n', 4, 1, /YAML .*\(BLOCK_AS_IMPLICIT_KEY\)/); // bad indentation
  bad(t, "cvmfs_repo: a.b\ninput:\n  - 'h.io/a/b\n", 4, 1, /YAML Missing closing 'quote \(MISSING_CHAR\)/); // unclosed quote, reported where the input ends
  bad(t, 'cvmfs_repo: "a.b\ninput: []\n', 3, 1, /Missing closing "quote/);
  bad(t, 'cvmfs_repo: a.b\ninput: [h.io/a/b]\ncvmfs_repo: c.d\n', 3, 1, /Map keys must be unique \(DUPLICATE_KEY\)/); // uniqueKeys
  bad(t, 'cvmfs_repo: a.b\ninput: [h.io/a/b\n', 3, 1, /YAML .*BAD_INDENT|YAML .*MISSING_CHAR/);
  bad(t, 'cvmfs_repo: a.b\n---\ninput: []\n', 2, 1, /multiple documents/);
  t.throws(() => parseRecipe('x: [', 'my/wish.yaml'), { message: /^D2C_RECIPE_INVALID: my\/wish\.yaml:1:\d+: YAML / });
});

t.test('wildcard expansion: glob to full-text regex, other characters literal, sorted', async (t) => {
  const input = (tag: string): RecipeInput => inputOf(`h.io/a/b:${tag}`);
  const tags = ['21.2.10', '21.2.1', '21.2.1-x', '21.2.1a', '21.2.11', '21x2x1', 'v21.2.1', 'latest', '21.2.1'];
  t.same(expandWildcard(input('21.2.1*'), tags), ['21.2.1', '21.2.1-x', '21.2.10', '21.2.11', '21.2.1a']);
  t.same(expandWildcard(input('*'), ['b', 'a', 'c']), ['a', 'b', 'c']);
  t.same(expandWildcard(input('*.2.1'), tags), ['21.2.1', 'v21.2.1']); // "." is literal: 21x2x1 is not selected
  t.same(expandWildcard(input('2*1'), tags), ['21.2.1', '21.2.11', '21x2x1']); // full text: v21.2.1 does not start with 2
  t.same(expandWildcard(input('latest'), tags), ['latest']);
  t.same(expandWildcard(input('nope'), tags), []);
  t.same(expandWildcard(parseReference(`h.io/a/b@sha256:${hex}`), tags), []);
});

t.test('output names for tag, digest, tag+digest', async (t) => {
  const base = { scheme: 'https', registry: 'registry.hub.docker.com', repository: 'library/fedora' };
  const thin = '$(scheme)://registry.gitlab.cern.ch/thin/$(image)';
  t.equal(outputName(DEFAULT_OUTPUT_FORMAT, { ...base, tag: '39' }), 'https://registry.hub.docker.com/library/fedora_thin:39');
  t.equal(outputName(thin, { ...base, tag: '39' }), 'https://registry.gitlab.cern.ch/thin/library/fedora:39');
  t.equal(outputName(thin, { ...base, digest: `sha256:${hex}` }), `https://registry.gitlab.cern.ch/thin/library/fedora@sha256:${hex}`);
  t.equal(outputName(thin, { ...base, tag: '39', digest: `sha256:${hex}` }), `https://registry.gitlab.cern.ch/thin/library/fedora:39@sha256:${hex}`);
  t.equal(outputName('r.io/x$(reference) $(digest) $(tag) $(registry)', { ...base, tag: 't', digest: 'sha256:d' }), 'r.io/x:t@sha256:d sha256:d t registry.hub.docker.com');
  // every occurrence is replaced (DUCC stops after 5)
  t.equal(outputName('$(tag)'.repeat(7), { ...base, tag: 'x' }), 'xxxxxxx');
  t.throws(() => outputName('$(nope)', { ...base, tag: 'x' }), { code: 'D2C_RECIPE_INVALID', message: /unknown variable \$\(nope\)/ });
  t.throws(() => outputName(DEFAULT_OUTPUT_FORMAT, { ...base, digest: `sha256:${hex}` }), { code: 'D2C_RECIPE_INVALID', message: /uses \$\(tag\)/ });
  t.throws(() => outputName('$(image)', base), { code: 'D2C_RECIPE_INVALID', message: /uses \$\(image\)/ });
});

t.test('property: outputName leaves no "$(" for known variables', async (t) => {
  const known = ['scheme', 'registry', 'repository', 'tag', 'digest', 'reference', 'image'];
  const literal = fc.stringMatching(/^[A-Za-z0-9_./:@-]{0,6}$/);
  const part = fc.oneof(literal, fc.constantFrom(...known).map((v) => `$(${v})`));
  const word = fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,10}$/);
  fc.assert(fc.property(fc.array(part, { maxLength: 12 }), word, word, word, word, (parts, registry, repository, tag, digest) => {
    const name = outputName(parts.join(''), { scheme: 'https', registry, repository, tag, digest: `sha256:${digest}` });
    return !name.includes('$(');
  }));
  t.pass('held');
});

t.test('property: a literal tag expands to exactly itself when present, nothing when absent', async (t) => {
  const tag = fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}$/);
  fc.assert(fc.property(tag, fc.array(tag, { maxLength: 10 }), (literal, others) => {
    const input = inputOf(`h.io/a/b:${literal}`);
    t.equal(input.wildcard, false);
    const without = others.filter((o) => o !== literal);
    const present = expandWildcard(input, [...without, literal, ...without]);
    const absent = expandWildcard(input, without);
    return present.length === 1 && present[0] === literal && absent.length === 0;
  }));
  t.pass('held');
});
