// Known model shapes for `--shape NAME`: the real Hugging Face config.json numbers, to pair with random weights.
import { KvoffArgumentError } from '../errors.js';

const LLAMA3_COMMON = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_act: 'silu', attention_bias: false, mlp_bias: false,
  max_position_embeddings: 131072, rms_norm_eps: 1e-5, rope_theta: 500000.0, bos_token_id: 128000, eos_token_id: 128001,
  vocab_size: 128256, torch_dtype: 'bfloat16',
};

/** config.json of each shape (base models: their max_position_embeddings covers the 128k contexts a bench asks for). */
export const SHAPES: Record<string, Record<string, unknown>> = {
  // meta-llama/Llama-3.2-1B
  'llama-3.2-1b': {
    ...LLAMA3_COMMON, hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32,
    num_key_value_heads: 8, head_dim: 64, tie_word_embeddings: true,
    rope_scaling: { rope_type: 'llama3', factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 },
  },
  // meta-llama/Llama-3.1-8B
  'llama-3.1-8b': {
    ...LLAMA3_COMMON, hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32,
    num_key_value_heads: 8, head_dim: 128, tie_word_embeddings: false,
    rope_scaling: { rope_type: 'llama3', factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 },
  },
  // Qwen/Qwen2.5-7B (q/k/v carry a bias: Qwen2 hard-codes it)
  'qwen2.5-7b': {
    architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', hidden_act: 'silu', hidden_size: 3584, intermediate_size: 18944,
    num_hidden_layers: 28, num_attention_heads: 28, num_key_value_heads: 4, max_position_embeddings: 131072, max_window_layers: 28,
    rms_norm_eps: 1e-6, rope_theta: 1000000.0, sliding_window: 131072, use_sliding_window: false, tie_word_embeddings: false,
    bos_token_id: 151643, eos_token_id: 151643, vocab_size: 152064, torch_dtype: 'bfloat16',
  },
  // A few hundred KB: for tests and smoke runs of every policy.
  tiny: {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_act: 'silu', hidden_size: 64, intermediate_size: 128,
    num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 4096, rms_norm_eps: 1e-5,
    rope_theta: 10000, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2, vocab_size: 97, torch_dtype: 'bfloat16',
  },
};

export const SHAPE_NAMES = Object.keys(SHAPES);

/** The config.json of shape `name`; an unknown name fails with the list of known ones. */
export function shapeConfig(name: string, flag = '--shape'): Record<string, unknown> {
  if (!Object.hasOwn(SHAPES, name)) throw new KvoffArgumentError(flag, `one of ${SHAPE_NAMES.join(', ')}`, name);
  return structuredClone(SHAPES[name]);
}
