// Test fixtures: tiny random Hugging Face model directories written to a temp dir.
import { writeRandomModel } from '../src/model/random-model.js';
import type { ModelConfig } from '../src/model/types.js';
import type { F32Weights } from './reference-forward.js';

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
  const m = await writeRandomModel(json, { dtype: 'f32', seed: spec.seed ?? 1234, keepF32: true });
  return { dir: m.dir, config: m.config, weights: m.weights! };
}
