/**
 * DUCC's wish-list ("recipe") format (docs/thin-images-and-layout.md §8.1): which images to
 * convert into which repository, and what to name the thin images pushed back.
 *
 * Model: the YAML is parsed once into a document with positions (yaml v2, LineCounter), then
 * walked by hand so that every complaint names `file:line:column` of the node at fault. Nothing
 * here touches the network: wildcard tags are expanded by the caller, who fetches the tag list
 * and hands it to `expandWildcard`. The reference grammar is reference.ts's; registry names are
 * kept as written, and the converter normalises Docker Hub's aliases later (reference.ts).
 */
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { ConvertError } from './errors.js';
import { checkReference } from './reference.js';

/** One `input:` entry, parsed. */
export interface RecipeInput {
  /** The entry as written in the recipe (the string value, without YAML quotes). */
  readonly text: string;
  /** 1-based line of the entry in the recipe; 0 for a reference that came from elsewhere. */
  readonly line: number;
  /** Only when written; absent means `https` (DUCC prepends `https://`). */
  readonly scheme?: 'http' | 'https';
  /** `host[:port]` as written (Docker Hub aliases are not normalised here). */
  readonly registry: string;
  /** Repository path as written, e.g. `library/fedora`. */
  readonly repository: string;
  /** The tag; may contain `*` (then `wildcard` is true). `latest` when neither tag nor digest is written, as DUCC does. */
  readonly tag?: string;
  /** `algorithm:hex`, when written. */
  readonly digest?: string;
  /** The tag contains `*` and must be expanded against the registry's tag list. */
  readonly wildcard: boolean;
}

export interface Recipe {
  /** Always 1: the only version DUCC knows. An absent `version:` is accepted, as DUCC does. */
  readonly version: 1;
  /** Registry user for pushing thin images (DUCC also uses it for the input registries). */
  readonly user?: string;
  /** The target repository's fqrn (the part of `cvmfs_repo` before any `/`). */
  readonly repository: string;
  /** Newer DUCC: `cvmfs_repo: repo/subdir` converts below that directory. Relative, no `.`/`..`. */
  readonly subdirectory?: string;
  /** `output_format`, or DEFAULT_OUTPUT_FORMAT; its variables are known to be valid. */
  readonly outputFormat: string;
  /** In recipe order; never empty; no two name the same image. */
  readonly inputs: readonly RecipeInput[];
}

/** Variables of `output_format` values, §8.1. */
export interface OutputVars {
  scheme: string;
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

export const DEFAULT_OUTPUT_FORMAT = '$(scheme)://$(registry)/$(repository)_thin:$(tag)';

const OUTPUT_VARIABLES = ['scheme', 'registry', 'repository', 'tag', 'digest', 'reference', 'image'] as const;
type OutputVariable = (typeof OUTPUT_VARIABLES)[number];

const TOP_LEVEL_KEYS = ['version', 'user', 'cvmfs_repo', 'output_format', 'input'] as const;
type TopLevelKey = (typeof TOP_LEVEL_KEYS)[number];

/** CernVM-FS fully qualified repository name. */
export const FQRN = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/;

type Parsed<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly reason: string };
type ImageFields = Omit<RecipeInput, 'text' | 'line'>;

/** Stands in for each `*` of a wildcard tag while reference.ts checks the grammar (which has no `*`). */
const GLOB_PLACEHOLDER = 'x';

/**
 * `[scheme://]REGISTRY/REPOSITORY[:TAG][@DIGEST]` (§8.1), in the grammar of reference.ts, with
 * DUCC's two additions: `*` in the tag, and an explicit REGISTRY. REGISTRY must look like a host
 * (contain `.` or `:`, or be `localhost`), so that `library/fedora` is reported instead of being
 * fetched from a host called `library` (DUCC only finds out when the registry refuses). `key` is
 * the image's identity for duplicate detection: the normalised reference (Docker Hub aliases,
 * `library/`, the https default folded) with the tag as written.
 */
function parseImageFields(text: string): Parsed<{ fields: ImageFields; key: string }> {
  const fail = (reason: string): Parsed<never> => ({ ok: false, reason });
  const afterScheme = text.replace(/^[A-Za-z][A-Za-z0-9+.-]*:\/\//, '');
  const at = afterScheme.indexOf('@');
  const name = at < 0 ? afterScheme : afterScheme.slice(0, at);
  const slash = name.indexOf('/');
  if (slash < 0) return fail('no "/" between registry and repository (write e.g. docker.io/library/fedora)');
  const registry = name.slice(0, slash);
  // The tag is what follows the last ":" after the last "/", as reference.ts splits it.
  const colon = name.lastIndexOf(':') > name.lastIndexOf('/') ? name.lastIndexOf(':') : -1;
  const nameStart = text.length - afterScheme.length;
  const tagStart = colon < 0 ? text.length : nameStart + colon + 1;
  const tagEnd = colon < 0 ? text.length : nameStart + name.length;
  const glob = colon < 0 ? undefined : text.slice(tagStart, tagEnd);
  if ((text.slice(0, tagStart) + text.slice(tagEnd)).includes('*')) return fail('"*" is allowed only in the tag');
  if (!/[.:]/.test(registry) && registry.toLowerCase() !== 'localhost') {
    return fail(`registry "${registry}" is not a host name (no "." or port; write e.g. docker.io/${name})`);
  }
  const wildcard = glob?.includes('*') ?? false;
  const tagSeen = glob?.replaceAll('*', GLOB_PLACEHOLDER);
  const checked = checkReference(tagSeen === undefined ? text : text.slice(0, tagStart) + tagSeen + text.slice(tagEnd));
  // A complaint about the tag names it as written, not as the grammar saw it.
  if (!checked.ok) return fail(wildcard ? checked.reason.replace(`tag "${tagSeen}"`, `tag "${glob}"`) : checked.reason);
  const ref = checked.reference;
  if (wildcard && ref.digest !== undefined) return fail('a wildcard tag cannot be combined with a digest');
  // DUCC's ParseImage defaults to `latest` when neither tag nor digest is given; so does reference.ts.
  const tag = wildcard ? glob : ref.tag;
  return {
    ok: true,
    value: {
      fields: {
        ...(ref.scheme !== undefined ? { scheme: ref.scheme } : {}),
        // Registry and repository as written: output names are made from them.
        registry,
        repository: name.slice(slash + 1, colon < 0 ? undefined : colon),
        ...(tag !== undefined ? { tag } : {}),
        ...(ref.digest !== undefined ? { digest: ref.digest } : {}),
        wildcard,
      },
      key: `${ref.scheme ?? 'https'}://${ref.registry}/${ref.repository}:${tag ?? ''}@${ref.digest ?? ''}`,
    },
  };
}

/** The variables an output format names, or the reason it is bad. */
function outputVariables(format: string): Parsed<ReadonlySet<OutputVariable>> {
  const used = new Set<OutputVariable>();
  for (const m of format.matchAll(/\$\(([^)]*)\)?/g)) {
    if (!m[0].endsWith(')')) return { ok: false, reason: `output_format "${format}" has an unclosed "$("` };
    const name = m[1] ?? '';
    if (!(OUTPUT_VARIABLES as readonly string[]).includes(name)) {
      return { ok: false, reason: `output_format "${format}" names unknown variable $(${name}); known: ${OUTPUT_VARIABLES.map((v) => `$(${v})`).join(' ')}` };
    }
    used.add(name as OutputVariable);
  }
  return { ok: true, value: used };
}

/**
 * The thin image's name for one input image (§8.1). Unlike DUCC, which replaces each variable at
 * most 5 times, every occurrence is replaced: a 6th would otherwise end up verbatim in an image
 * name. A variable without a value (`$(tag)` for a digest-only image) is an error rather than an
 * empty string, which would give a name like `repo_thin:` that no registry accepts.
 */
export function outputName(format: string, v: OutputVars): string {
  const used = outputVariables(format);
  if (!used.ok) throw new ConvertError('D2C_RECIPE_INVALID', used.reason);
  const reference = `${v.tag !== undefined ? `:${v.tag}` : ''}${v.digest !== undefined ? `@${v.digest}` : ''}`;
  const values: Readonly<Record<OutputVariable, string | undefined>> = {
    scheme: v.scheme,
    registry: v.registry,
    repository: v.repository,
    tag: v.tag,
    digest: v.digest,
    reference: reference === '' ? undefined : reference,
    image: reference === '' ? undefined : `${v.repository}${reference}`,
  };
  // One pass: substituted values are never rescanned.
  return format.replace(/\$\(([^)]*)\)/g, (_whole, name: string) => {
    const value = values[name as OutputVariable];
    if (value === undefined) {
      throw new ConvertError('D2C_RECIPE_INVALID', `output format "${format}" uses $(${name}), but image ${v.registry}/${v.repository} has no ${name === 'digest' ? 'digest' : 'tag or digest'}`);
    }
    return value;
  });
}

/**
 * The tags of `tags` that the input's tag selects, sorted and without duplicates: the glob
 * becomes a regular expression (`*` → `.*`, everything else literal) that must match a tag's full
 * text, as DUCC does. A tag without `*` selects only itself; an input without a tag selects none.
 */
export function expandWildcard(input: Pick<RecipeInput, 'tag'>, tags: readonly string[]): string[] {
  if (input.tag === undefined) return [];
  const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
  const re = new RegExp(`^${input.tag.split('*').map(escape).join('.*')}$`, 's');
  return [...new Set(tags.filter((tag) => re.test(tag)))].sort();
}

/**
 * Parses and validates a recipe. Every failure is D2C_RECIPE_INVALID with a message starting
 * `${file}:${line}:${column}: ` (1-based).
 */
export function parseRecipe(text: string, file = 'recipe.yaml'): Recipe {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true, lineCounter });
  const firstError = doc.errors[0];
  if (firstError !== undefined) {
    const { line, col } = firstError.linePos?.[0] ?? lineCounter.linePos(firstError.pos[0]);
    // prettyErrors appends " at line L, column C:" and a source excerpt; keep the excerpt after our own position.
    const [summary = '', ...excerpt] = firstError.message.split('\n');
    const reason = summary.replace(/ at line \d+, column \d+:$/, '');
    const context = excerpt.join('\n').replace(/^\n+|\n+$/g, '');
    throw new ConvertError('D2C_RECIPE_INVALID', `${file}:${line}:${col}: YAML ${reason} (${firstError.code})${context === '' ? '' : `\n${context}`}`);
  }

  const fail = (node: Node | null | undefined, reason: string, fallbackOffset = 0): never => {
    const { line, col } = lineCounter.linePos(node?.range?.[0] ?? fallbackOffset);
    throw new ConvertError('D2C_RECIPE_INVALID', `${file}:${line}:${col}: ${reason}`);
  };
  const resolve = (node: unknown, d: Document): unknown => (isAlias(node) ? node.resolve(d) : node);

  const root = doc.contents;
  if (root === null || (isScalar(root) && root.value === null)) fail(root, 'recipe is empty; expected a mapping with cvmfs_repo and input');
  if (!isMap(root)) return fail(root, 'recipe is not a mapping; expected keys version, user, cvmfs_repo, output_format, input');

  const values = new Map<TopLevelKey, { key: Node; value: Node | null }>();
  for (const pair of root.items) {
    const key = pair.key;
    if (!isScalar(key) || typeof key.value !== 'string') return fail(isScalar(key) ? key : null, 'keys must be plain strings');
    // Strict on purpose: DUCC ignores unknown keys, so a typo such as `output_fromat:` silently
    // pushes thin images under the default name, and `inputs:` reads as no input at all.
    if (!(TOP_LEVEL_KEYS as readonly string[]).includes(key.value)) {
      return fail(key, `unknown key "${key.value}"; known: ${TOP_LEVEL_KEYS.join(', ')}`);
    }
    const value = resolve(pair.value, doc);
    values.set(key.value as TopLevelKey, { key, value: value === null || value === undefined ? null : (value as Node) });
  }
  // A `key:` with nothing after it is a null scalar positioned after the colon; point at the key instead.
  const at = (e: { key: Node; value: Node | null }): Node => (e.value === null || (isScalar(e.value) && e.value.value === null) ? e.key : e.value);
  const optionalString = (k: TopLevelKey): string | undefined => {
    const e = values.get(k);
    if (e === undefined || e.value === null || (isScalar(e.value) && e.value.value === null)) return undefined;
    if (!isScalar(e.value) || typeof e.value.value !== 'string') return fail(e.value, `${k} must be a string`);
    return e.value.value === '' ? undefined : e.value.value;
  };

  const version = values.get('version');
  if (version !== undefined && !(isScalar(version.value) && version.value.value === 1)) {
    fail(at(version), `version must be 1 (the only recipe version), not ${isScalar(version.value) ? JSON.stringify(version.value.value) : 'a collection'}`);
  }

  const user = optionalString('user');

  const repoEntry = values.get('cvmfs_repo');
  const cvmfsRepo = optionalString('cvmfs_repo');
  if (repoEntry === undefined || cvmfsRepo === undefined) {
    return fail(repoEntry !== undefined ? at(repoEntry) : root, 'cvmfs_repo is required: the fqrn of the target repository, e.g. unpacked.cern.ch');
  }
  const slash = cvmfsRepo.indexOf('/');
  const repository = slash < 0 ? cvmfsRepo : cvmfsRepo.slice(0, slash);
  const subdirectory = slash < 0 ? undefined : cvmfsRepo.slice(slash + 1);
  if (!FQRN.test(repository)) fail(repoEntry.value, `cvmfs_repo "${cvmfsRepo}": "${repository}" is not a valid fqrn (e.g. unpacked.cern.ch)`);
  if (subdirectory !== undefined && subdirectory.split('/').some((c) => c === '' || c === '.' || c === '..')) {
    fail(repoEntry.value, `cvmfs_repo "${cvmfsRepo}": subdirectory "${subdirectory}" must be a relative path without empty, "." or ".." components`);
  }

  const outputFormat = optionalString('output_format') ?? DEFAULT_OUTPUT_FORMAT;
  const formatVariables = outputVariables(outputFormat);
  if (!formatVariables.ok) return fail(values.get('output_format')?.value, formatVariables.reason);

  const inputEntry = values.get('input');
  if (inputEntry === undefined) return fail(root, 'input is required: a non-empty list of images');
  const seq = inputEntry.value;
  if (!isSeq(seq) || seq.items.length === 0) return fail(at(inputEntry), 'input must be a non-empty list of images');
  const inputs: RecipeInput[] = [];
  const seen = new Map<string, RecipeInput>();
  for (const raw of seq.items) {
    const item = resolve(raw, doc);
    const node = isAlias(raw) ? raw : (item as Node | null);
    if (!isScalar(item) || typeof item.value !== 'string') return fail(node, 'each input must be a string: [scheme://]REGISTRY/REPOSITORY[:TAG][@DIGEST]', seq.range?.[0]);
    const itemText = item.value;
    const line = lineCounter.linePos(node?.range?.[0] ?? 0).line;
    const parsed = parseImageFields(itemText);
    if (!parsed.ok) return fail(node, `input "${itemText}": ${parsed.reason}; expected [scheme://]REGISTRY/REPOSITORY[:TAG][@DIGEST]`);
    const input: RecipeInput = { text: itemText, line, ...parsed.value.fields };
    if (formatVariables.value.has('tag') && input.tag === undefined) {
      fail(node, `input "${itemText}" has no tag, but output_format "${outputFormat}" uses $(tag)`);
    }
    const key = parsed.value.key;
    const earlier = seen.get(key);
    if (earlier !== undefined) fail(node, `input "${itemText}" on line ${line} duplicates "${earlier.text}" on line ${earlier.line}`);
    seen.set(key, input);
    inputs.push(input);
  }

  return {
    version: 1,
    ...(user !== undefined ? { user } : {}),
    repository,
    ...(subdirectory !== undefined ? { subdirectory } : {}),
    outputFormat,
    inputs,
  };
}
