// Loads a Hugging Face model directory: config.json, safetensors (single, many, or via index), tokenizer files.
import { readFile, readdir, stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { describe } from '../errors.js';
import { parseModelConfig } from './config.js';
import { KvoffModelFormatError, KvoffModelNotFoundError } from './errors.js';
import { readSafetensorsFile } from './safetensors.js';
import type { ModelConfig, RawTensor, WeightMap } from './types.js';

export interface LoadedModelDir {
  dir: string; // absolute
  config: ModelConfig;
  weights: WeightMap;
  tokenizerJson: unknown | null;
  tokenizerConfig: unknown | null;
}

const INDEX_FILE = 'model.safetensors.index.json';

/** Reads and parses a JSON file; null when `optional` and absent. Errors name the file. */
async function readJson(path: string, optional: boolean): Promise<unknown | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (optional && code === 'ENOENT') return null;
    throw new KvoffModelNotFoundError(path, 'a readable JSON file', code ?? String(err), { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new KvoffModelFormatError(path, '', 'valid JSON', `invalid JSON (${(err as Error).message})`, { cause: err });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function loadModelDir(dirArg: string): Promise<LoadedModelDir> {
  const dir = resolve(dirArg);
  let st;
  try {
    st = await stat(dir);
  } catch (err) {
    throw new KvoffModelNotFoundError(dir, 'a model directory', (err as NodeJS.ErrnoException).code ?? String(err), { cause: err });
  }
  if (!st.isDirectory()) throw new KvoffModelNotFoundError(dir, 'a model directory', 'a file that is not a directory');

  const configPath = join(dir, 'config.json');
  const config = parseModelConfig(await readJson(configPath, false), configPath);

  // Small files first: a broken tokenizer.json should not cost reading gigabytes of weights.
  const tokenizerJson = await readJson(join(dir, 'tokenizer.json'), true);
  const tokenizerConfig = await readJson(join(dir, 'tokenizer_config.json'), true);

  const indexPath = join(dir, INDEX_FILE);
  const weights = (await exists(indexPath)) ? await loadIndexed(dir, indexPath) : await loadAllShards(dir);
  checkWeights(config, weights, dir);
  return { dir, config, weights, tokenizerJson, tokenizerConfig };
}

/** Loads the shards an index names; only the names in weight_map are kept, each from its own shard. */
async function loadIndexed(dir: string, indexPath: string): Promise<WeightMap> {
  const index = await readJson(indexPath, false);
  const map = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new KvoffModelFormatError(indexPath, 'weight_map', 'an object mapping tensor names to shard files', describe(map));
  }
  const byShard = new Map<string, string[]>();
  for (const [name, file] of Object.entries(map)) {
    if (typeof file !== 'string' || file === '') {
      throw new KvoffModelFormatError(indexPath, `weight_map[${JSON.stringify(name)}]`, 'a shard file name', describe(file));
    }
    const shardPath = resolve(dir, file);
    const rel = relative(dir, shardPath);
    // A shard path must stay inside the model directory: an index is data, not permission to read elsewhere.
    if (isAbsolute(file) || rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
      throw new KvoffModelFormatError(indexPath, `weight_map[${JSON.stringify(name)}]`, `a file inside ${dir}`, JSON.stringify(file));
    }
    const names = byShard.get(shardPath) ?? [];
    names.push(name);
    byShard.set(shardPath, names);
  }
  if (byShard.size === 0) throw new KvoffModelFormatError(indexPath, 'weight_map', 'at least one tensor', 'an empty map');

  const weights: WeightMap = new Map();
  for (const [shardPath, names] of byShard) {
    const shard = await readSafetensorsFile(shardPath);
    for (const name of names) {
      const t = shard.get(name);
      if (!t) {
        throw new KvoffModelFormatError(shardPath, `tensor ${JSON.stringify(name)}`, `the tensor that ${INDEX_FILE} places in this shard`, 'no such tensor');
      }
      weights.set(name, t);
    }
  }
  return weights;
}

/** Without an index, every *.safetensors file in the directory is a shard; a name may appear once. */
async function loadAllShards(dir: string): Promise<WeightMap> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.safetensors')).sort();
  if (files.length === 0) {
    throw new KvoffModelNotFoundError(dir, `${INDEX_FILE} or at least one *.safetensors file`, 'none');
  }
  const weights: WeightMap = new Map();
  const origin = new Map<string, string>();
  for (const f of files) {
    const path = join(dir, f);
    for (const [name, t] of await readSafetensorsFile(path)) {
      const prev = origin.get(name);
      if (prev !== undefined) {
        throw new KvoffModelFormatError(path, `tensor ${JSON.stringify(name)}`, 'each tensor name in only one shard', `a duplicate of the one in ${prev}`);
      }
      origin.set(name, path);
      weights.set(name, t);
    }
  }
  return weights;
}

/** The tensors a config implies, with their [out, in] (or [n]) shapes, in load order. */
export function requiredTensors(c: ModelConfig): Array<[string, number[]]> {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const out: Array<[string, number[]]> = [['model.embed_tokens.weight', [c.vocabSize, c.hiddenSize]]]; // [vocab, hidden]
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push([`${p}input_layernorm.weight`, [c.hiddenSize]]);
    out.push([`${p}self_attn.q_proj.weight`, [q, c.hiddenSize]]); // [numHeads*headDim, hidden]
    out.push([`${p}self_attn.k_proj.weight`, [kv, c.hiddenSize]]); // [numKvHeads*headDim, hidden]
    out.push([`${p}self_attn.v_proj.weight`, [kv, c.hiddenSize]]);
    if (c.attentionBias) {
      out.push([`${p}self_attn.q_proj.bias`, [q]]);
      out.push([`${p}self_attn.k_proj.bias`, [kv]]);
      out.push([`${p}self_attn.v_proj.bias`, [kv]]);
    }
    out.push([`${p}self_attn.o_proj.weight`, [c.hiddenSize, q]]); // [hidden, numHeads*headDim]
    out.push([`${p}post_attention_layernorm.weight`, [c.hiddenSize]]);
    out.push([`${p}mlp.gate_proj.weight`, [c.intermediateSize, c.hiddenSize]]); // [intermediate, hidden]
    out.push([`${p}mlp.up_proj.weight`, [c.intermediateSize, c.hiddenSize]]);
    out.push([`${p}mlp.down_proj.weight`, [c.hiddenSize, c.intermediateSize]]); // [hidden, intermediate]
  }
  out.push(['model.norm.weight', [c.hiddenSize]]);
  out.push(['lm_head.weight', [c.vocabSize, c.hiddenSize]]); // [vocab, hidden]
  return out;
}

/**
 * Checks every tensor the config implies; the first missing or misshapen one is reported. With
 * tied embeddings and no lm_head, lm_head.weight is made to share embed_tokens' bytes.
 */
function checkWeights(c: ModelConfig, weights: WeightMap, dir: string): void {
  if (c.tieWordEmbeddings && !weights.has('lm_head.weight')) {
    const embed = weights.get('model.embed_tokens.weight');
    if (embed) weights.set('lm_head.weight', embed);
  }
  for (const [name, shape] of requiredTensors(c)) {
    const t: RawTensor | undefined = weights.get(name);
    const hint = name === 'lm_head.weight' && !c.tieWordEmbeddings ? ' (tie_word_embeddings is false)' : '';
    if (!t) throw new KvoffModelFormatError(dir, `tensor ${JSON.stringify(name)}`, `a tensor of shape ${JSON.stringify(shape)}${hint}`, 'no such tensor');
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new KvoffModelFormatError(dir, `tensor ${JSON.stringify(name)} shape`, JSON.stringify(shape), JSON.stringify(t.shape));
    }
  }
}
