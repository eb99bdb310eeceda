// Model directories: tiny random models (single file, sharded, indexed, tied) load; broken ones fail clearly.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { f32ToBf16 } from '../src/kernels/half.js';
import { KvoffModelFormatError, KvoffModelNotFoundError } from '../src/model/errors.js';
import { loadModelDir } from '../src/model/load-dir.js';
import { writeSafetensors } from '../src/model/safetensors.js';
import { toFloat32 } from '../src/model/tensor.js';
import { loadTokenizer } from '../src/model/tokenizer.js';
import type { RawTensor } from '../src/model/types.js';
import { randn, rng } from './helpers.js';

// hidden 16, 4 heads of 4, 2 KV heads (GQA 2:1), 2 layers, vocab 50.
const LLAMA_CONFIG = {
  architectures: ['LlamaForCausalLM'], hidden_act: 'silu', hidden_size: 16, intermediate_size: 24, num_attention_heads: 4,
  num_key_value_heads: 2, num_hidden_layers: 2, vocab_size: 50, max_position_embeddings: 128, rms_norm_eps: 1e-5,
  rope_theta: 10000, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2,
};
const QWEN_CONFIG = { ...LLAMA_CONFIG, architectures: ['Qwen2ForCausalLM'], tie_word_embeddings: true, use_sliding_window: false };

function bf16(shape: number[], seed: number): RawTensor {
  const v = randn(shape.reduce((a, b) => a * b, 1), rng(seed), 0.1);
  const h = new Uint16Array(v.length);
  for (let i = 0; i < v.length; i++) h[i] = f32ToBf16(v[i]);
  return { dtype: 'bf16', shape, data: new Uint8Array(h.buffer) };
}

/** Spelled out independently of load-dir's own list, so a wrong name or shape there is caught here. */
function tinyWeights(opts: { bias?: boolean; lmHead?: boolean } = {}): Map<string, RawTensor> {
  const w = new Map<string, RawTensor>();
  let seed = 1;
  w.set('model.embed_tokens.weight', bf16([50, 16], seed++)); // [vocab, hidden]
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}.`;
    w.set(`${p}input_layernorm.weight`, bf16([16], seed++));
    w.set(`${p}self_attn.q_proj.weight`, bf16([16, 16], seed++)); // [4 heads * 4, hidden]
    w.set(`${p}self_attn.k_proj.weight`, bf16([8, 16], seed++)); // [2 kv heads * 4, hidden]
    w.set(`${p}self_attn.v_proj.weight`, bf16([8, 16], seed++));
    if (opts.bias) {
      w.set(`${p}self_attn.q_proj.bias`, bf16([16], seed++));
      w.set(`${p}self_attn.k_proj.bias`, bf16([8], seed++));
      w.set(`${p}self_attn.v_proj.bias`, bf16([8], seed++));
    }
    w.set(`${p}self_attn.o_proj.weight`, bf16([16, 16], seed++));
    w.set(`${p}post_attention_layernorm.weight`, bf16([16], seed++));
    w.set(`${p}mlp.gate_proj.weight`, bf16([24, 16], seed++)); // [intermediate, hidden]
    w.set(`${p}mlp.up_proj.weight`, bf16([24, 16], seed++));
    w.set(`${p}mlp.down_proj.weight`, bf16([16, 24], seed++)); // [hidden, intermediate]
  }
  w.set('model.norm.weight', bf16([16], seed++));
  if (opts.lmHead ?? true) w.set('lm_head.weight', bf16([50, 16], seed++));
  return w;
}

// A byte-level BPE small enough to read: "hello world" -> hello Ġ w o r l d.
const TOKENIZER_JSON = {
  version: '1.0', truncation: null, padding: null, normalizer: null,
  added_tokens: [{ id: 12, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { '<s>': { id: '<s>', ids: [12], tokens: ['<s>'] } },
  },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false,
    byte_fallback: false, ignore_merges: false,
    vocab: { h: 0, e: 1, l: 2, o: 3, 'Ġ': 4, w: 5, r: 6, d: 7, he: 8, ll: 9, hell: 10, hello: 11 },
    merges: ['h e', 'l l', 'he ll', 'hell o'],
  },
};

let root = '';
let n = 0;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'kvoff-load-'));
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

/** Writes a model directory: config plus files given as JSON values or raw bytes. */
async function modelDir(config: unknown, files: Record<string, unknown>): Promise<string> {
  const dir = join(root, `m${n++}`);
  await mkdir(dir);
  await writeFile(join(dir, 'config.json'), typeof config === 'string' ? config : JSON.stringify(config));
  for (const [name, content] of Object.entries(files)) {
    await writeFile(join(dir, name), content instanceof Uint8Array ? content : JSON.stringify(content));
  }
  return dir;
}

async function formatError(p: Promise<unknown>, ...parts: string[]): Promise<KvoffModelFormatError> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(KvoffModelFormatError);
  const e = err as KvoffModelFormatError;
  expect(e.code).toBe('KVOFF_E_MODEL_FORMAT');
  for (const s of parts) expect(e.message).toContain(s);
  return e;
}

describe('loadModelDir: good directories', () => {
  it('a single model.safetensors, with tokenizer files', async () => {
    const w = tinyWeights();
    const dir = await modelDir(LLAMA_CONFIG, {
      'model.safetensors': writeSafetensors(w),
      'tokenizer.json': TOKENIZER_JSON,
      'tokenizer_config.json': { bos_token: '<s>' },
    });
    const m = await loadModelDir(dir);
    expect(m.dir).toBe(dir);
    expect(m.config).toMatchObject({ architecture: 'llama', numHeads: 4, numKvHeads: 2, headDim: 4, numLayers: 2 });
    expect(m.weights.size).toBe(w.size);
    const q = m.weights.get('model.layers.1.self_attn.q_proj.weight')!;
    expect(Array.from(toFloat32(q))).toEqual(Array.from(toFloat32(w.get('model.layers.1.self_attn.q_proj.weight')!)));

    const tok = loadTokenizer(m.tokenizerJson, m.tokenizerConfig);
    expect(Array.from(tok.encode('hello world'))).toEqual([11, 4, 5, 3, 6, 2, 7]);
    expect(Array.from(tok.encode('hello world', { addSpecialTokens: true }))).toEqual([12, 11, 4, 5, 3, 6, 2, 7]);
    expect(tok.decode(tok.encode('hello world'))).toBe('hello world');
    expect(tok.decode([12, 11], { skipSpecialTokens: true })).toBe('hello');
    expect(tok.decode([])).toBe('');
    expect(tok.vocabSize).toBe(13);
    expect(() => tok.decode([13])).toThrow(/token id in \[0, 12\] but received 13/);
  });

  it('no tokenizer files gives nulls', async () => {
    const dir = await modelDir(LLAMA_CONFIG, { 'model.safetensors': writeSafetensors(tinyWeights()) });
    const m = await loadModelDir(dir);
    expect(m.tokenizerJson).toBeNull();
    expect(m.tokenizerConfig).toBeNull();
  });

  it('shards listed in model.safetensors.index.json', async () => {
    const w = [...tinyWeights()];
    const half = Math.floor(w.length / 2);
    const a = new Map(w.slice(0, half));
    const b = new Map(w.slice(half));
    b.set('unlisted.extra', bf16([2], 99)); // present in a shard but not in the index: ignored
    const weightMap: Record<string, string> = {};
    for (const k of a.keys()) weightMap[k] = 'model-00001-of-00002.safetensors';
    for (const [k] of w.slice(half)) weightMap[k] = 'model-00002-of-00002.safetensors';
    const dir = await modelDir(LLAMA_CONFIG, {
      'model-00001-of-00002.safetensors': writeSafetensors(a),
      'model-00002-of-00002.safetensors': writeSafetensors(b),
      'model.safetensors.index.json': { metadata: { total_size: 0 }, weight_map: weightMap },
    });
    const m = await loadModelDir(dir);
    expect(m.weights.size).toBe(w.length);
    expect(m.weights.has('unlisted.extra')).toBe(false);
  });

  it('several *.safetensors files without an index', async () => {
    const w = [...tinyWeights()];
    const dir = await modelDir(LLAMA_CONFIG, {
      'a.safetensors': writeSafetensors(new Map(w.slice(0, 5))),
      'b.safetensors': writeSafetensors(new Map(w.slice(5))),
    });
    expect((await loadModelDir(dir)).weights.size).toBe(w.length);
  });

  it('Qwen2 with q/k/v biases and tied embeddings: lm_head shares embed_tokens', async () => {
    const dir = await modelDir(QWEN_CONFIG, { 'model.safetensors': writeSafetensors(tinyWeights({ bias: true, lmHead: false })) });
    const m = await loadModelDir(dir);
    expect(m.config.attentionBias).toBe(true);
    expect(m.weights.get('lm_head.weight')).toBe(m.weights.get('model.embed_tokens.weight'));
  });
});

describe('loadModelDir: clear errors', () => {
  it('missing directory, or a file where the directory should be', async () => {
    const missing = join(root, 'does-not-exist');
    const err = await loadModelDir(missing).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvoffModelNotFoundError);
    expect((err as KvoffModelNotFoundError).code).toBe('KVOFF_E_MODEL_NOT_FOUND');
    expect((err as Error).message).toBe(`Expected a model directory at ${missing} but received ENOENT`);
    const file = join(await modelDir(LLAMA_CONFIG, {}), 'config.json');
    await expect(loadModelDir(file)).rejects.toThrow(/not a directory/);
  });

  it('missing config.json names its path', async () => {
    const dir = join(root, `m${n++}`);
    await mkdir(dir);
    await expect(loadModelDir(dir)).rejects.toThrow(KvoffModelNotFoundError);
    await expect(loadModelDir(dir)).rejects.toThrow(join(dir, 'config.json'));
  });

  it('bad JSON names the file and the parse error', async () => {
    const dir = await modelDir('{"architectures": [', {});
    const e = await formatError(loadModelDir(dir), join(dir, 'config.json'), 'invalid JSON');
    expect(e.path).toBe(join(dir, 'config.json'));
    const dir2 = await modelDir(LLAMA_CONFIG, { 'model.safetensors': writeSafetensors(tinyWeights()), 'tokenizer.json': new TextEncoder().encode('{oops') });
    await formatError(loadModelDir(dir2), join(dir2, 'tokenizer.json'), 'invalid JSON');
  });

  it('a config refusal names config.json', async () => {
    const dir = await modelDir({ ...LLAMA_CONFIG, architectures: ['GPT2LMHeadModel'] }, {});
    await formatError(loadModelDir(dir), `${join(dir, 'config.json')} architectures`, 'GPT2LMHeadModel');
  });

  it('no weights at all', async () => {
    const dir = await modelDir(LLAMA_CONFIG, {});
    await expect(loadModelDir(dir)).rejects.toThrow(/\*\.safetensors file/);
  });

  it('the first missing tensor', async () => {
    const w = tinyWeights();
    w.delete('model.layers.1.mlp.down_proj.weight');
    const dir = await modelDir(LLAMA_CONFIG, { 'model.safetensors': writeSafetensors(w) });
    await formatError(loadModelDir(dir), 'tensor "model.layers.1.mlp.down_proj.weight"', '[16,24]', 'no such tensor');
  });

  it('missing lm_head when embeddings are not tied, and missing Qwen2 biases', async () => {
    const dir = await modelDir(LLAMA_CONFIG, { 'model.safetensors': writeSafetensors(tinyWeights({ lmHead: false })) });
    await formatError(loadModelDir(dir), 'lm_head.weight', 'tie_word_embeddings is false');
    const dir2 = await modelDir(QWEN_CONFIG, { 'model.safetensors': writeSafetensors(tinyWeights({ lmHead: false })) });
    await formatError(loadModelDir(dir2), 'model.layers.0.self_attn.q_proj.bias');
  });

  it('a tensor of the wrong shape', async () => {
    const w = tinyWeights();
    w.set('model.layers.0.self_attn.k_proj.weight', bf16([16, 16], 5)); // MHA-sized K in a GQA model
    const dir = await modelDir(LLAMA_CONFIG, { 'model.safetensors': writeSafetensors(w) });
    const e = await formatError(loadModelDir(dir), 'tensor "model.layers.0.self_attn.k_proj.weight" shape');
    expect(e.message).toContain('Expected [8,16]');
    expect(e.message).toContain('received [16,16]');
  });

  it('an index pointing outside the directory', async () => {
    for (const evil of ['../outside.safetensors', '/etc/passwd', 'sub/../../x.safetensors']) {
      const dir = await modelDir(LLAMA_CONFIG, {
        'model.safetensors.index.json': { weight_map: { 'model.embed_tokens.weight': evil } },
      });
      await formatError(loadModelDir(dir), join(dir, 'model.safetensors.index.json'), `a file inside ${dir}`, JSON.stringify(evil));
    }
  });

  it('an index naming a tensor its shard lacks, or a shard that does not exist', async () => {
    const w = tinyWeights();
    const weightMap: Record<string, string> = { 'model.ghost.weight': 'model.safetensors' };
    for (const k of w.keys()) weightMap[k] = 'model.safetensors';
    const dir = await modelDir(LLAMA_CONFIG, { 'model.safetensors': writeSafetensors(w), 'model.safetensors.index.json': { weight_map: weightMap } });
    await formatError(loadModelDir(dir), join(dir, 'model.safetensors'), 'tensor "model.ghost.weight"', 'no such tensor');

    const dir2 = await modelDir(LLAMA_CONFIG, { 'model.safetensors.index.json': { weight_map: { a: 'gone.safetensors' } } });
    await expect(loadModelDir(dir2)).rejects.toThrow(KvoffModelNotFoundError);
    await expect(loadModelDir(dir2)).rejects.toThrow(join(dir2, 'gone.safetensors'));

    const dir3 = await modelDir(LLAMA_CONFIG, { 'model.safetensors.index.json': { weights: {} } });
    await formatError(loadModelDir(dir3), 'weight_map', 'received undefined');
  });

  it('a corrupt shard is reported with its own path', async () => {
    const bytes = writeSafetensors(tinyWeights());
    const dir = await modelDir(LLAMA_CONFIG, { 'model.safetensors': bytes.subarray(0, bytes.length - 3) });
    await formatError(loadModelDir(dir), join(dir, 'model.safetensors'), 'data_offsets');
  });

  it('the same tensor in two shards without an index', async () => {
    const w = tinyWeights();
    const dir = await modelDir(LLAMA_CONFIG, { 'a.safetensors': writeSafetensors(w), 'b.safetensors': writeSafetensors(new Map([['model.norm.weight', w.get('model.norm.weight')!]])) });
    await formatError(loadModelDir(dir), 'b.safetensors', 'model.norm.weight', 'duplicate');
  });
});
