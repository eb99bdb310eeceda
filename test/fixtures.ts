// Test fixtures: tiny random Hugging Face model directories written to a temp dir.
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseModelConfig } from '../src/model/config.js';
import { requiredTensors } from '../src/model/load-dir.js';
import { writeSafetensors } from '../src/model/safetensors.js';
import type { ModelConfig, RawTensor } from '../src/model/types.js';
import type { F32Weights } from './reference-forward.js';
import { randn, rng } from './helpers.js';

export interface TinyModelSpec {
  architecture?: 'LlamaForCausalLM' | 'MistralForCausalLM' | 'Qwen2ForCausalLM';
  hidden?: number;
  heads?: number;
  kvHeads?: number;
  layers?: number;
  vocab?: number;
  maxPos?: number;
  tied?: boolean;
  seed?: number;
  extra?: Record<string, unknown>; // more config.json fields (rope_scaling, head_dim, ...)
}

export interface TinyModel {
  dir: string;
  config: ModelConfig;
  weights: F32Weights;
}

/** Writes config.json and model.safetensors (f32) of a random model; returns its f32 weights too. */
export async function writeTinyModel(spec: TinyModelSpec = {}): Promise<TinyModel> {
  const hidden = spec.hidden ?? 64;
  const json = {
    architectures: [spec.architecture ?? 'LlamaForCausalLM'], hidden_act: 'silu', hidden_size: hidden, intermediate_size: hidden * 2,
    num_attention_heads: spec.heads ?? 4, num_key_value_heads: spec.kvHeads ?? 2, num_hidden_layers: spec.layers ?? 2,
    vocab_size: spec.vocab ?? 97, max_position_embeddings: spec.maxPos ?? 512, rms_norm_eps: 1e-5, rope_theta: 10000,
    tie_word_embeddings: spec.tied ?? false, bos_token_id: 1, eos_token_id: 2, use_sliding_window: false, sliding_window: null,
    ...spec.extra,
  };
  const config = parseModelConfig(json, 'fixture config.json');
  const r = rng(spec.seed ?? 1234);
  const weights: F32Weights = new Map();
  const tensors = new Map<string, RawTensor>();
  for (const [name, shape] of requiredTensors(config)) {
    if (name === 'lm_head.weight' && config.tieWordEmbeddings) continue;
    const n = shape.reduce((a, b) => a * b, 1);
    const isNorm = name.endsWith('norm.weight');
    const data = isNorm ? Float32Array.from(randn(n, r, 0.1), (x) => 1 + x) : randn(n, r, 1 / Math.sqrt(shape[shape.length - 1]));
    weights.set(name, data);
    tensors.set(name, { dtype: 'f32', shape, data: new Uint8Array(data.buffer) });
  }
  if (config.tieWordEmbeddings) weights.set('lm_head.weight', weights.get('model.embed_tokens.weight')!);
  const dir = await mkdtemp(join(tmpdir(), 'kvoff-tiny-'));
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(json));
  await writeFile(join(dir, 'model.safetensors'), writeSafetensors(tensors));
  return { dir, config, weights };
}
