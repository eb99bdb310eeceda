// config.json parsing: real Llama 2 / 3.1 / 3.2, Mistral, Qwen2 configs normalize correctly; bad ones name the field.
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../src/model/config.js';
import { KvoffModelFormatError } from '../src/model/errors.js';

// Copied from the Hugging Face repos (only unused keys trimmed).
const LLAMA2_7B = {
  architectures: ['LlamaForCausalLM'], bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 4096,
  initializer_range: 0.02, intermediate_size: 11008, max_position_embeddings: 4096, model_type: 'llama',
  num_attention_heads: 32, num_hidden_layers: 32, num_key_value_heads: 32, pretraining_tp: 1, rms_norm_eps: 1e-5,
  rope_scaling: null, tie_word_embeddings: false, torch_dtype: 'float16', use_cache: true, vocab_size: 32000,
};
const LLAMA31_8B = {
  architectures: ['LlamaForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009], hidden_act: 'silu', hidden_size: 4096, intermediate_size: 14336,
  max_position_embeddings: 131072, mlp_bias: false, model_type: 'llama', num_attention_heads: 32, num_hidden_layers: 32,
  num_key_value_heads: 8, pretraining_tp: 1, rms_norm_eps: 1e-5,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0, tie_word_embeddings: false, torch_dtype: 'bfloat16', vocab_size: 128256,
};
const LLAMA32_1B = {
  ...LLAMA31_8B, head_dim: 64, hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  tie_word_embeddings: true,
};
const MISTRAL_7B_V03 = {
  architectures: ['MistralForCausalLM'], attention_dropout: 0.0, bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu',
  hidden_size: 4096, intermediate_size: 14336, max_position_embeddings: 32768, model_type: 'mistral',
  num_attention_heads: 32, num_hidden_layers: 32, num_key_value_heads: 8, rms_norm_eps: 1e-5, rope_theta: 1000000.0,
  sliding_window: null, tie_word_embeddings: false, torch_dtype: 'bfloat16', vocab_size: 32768,
};
const QWEN25_05B = {
  architectures: ['Qwen2ForCausalLM'], attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151643,
  hidden_act: 'silu', hidden_size: 896, intermediate_size: 4864, max_position_embeddings: 32768, max_window_layers: 24,
  model_type: 'qwen2', num_attention_heads: 14, num_hidden_layers: 24, num_key_value_heads: 2, rms_norm_eps: 1e-6,
  rope_theta: 1000000.0, sliding_window: 32768, tie_word_embeddings: true, torch_dtype: 'bfloat16',
  use_sliding_window: false, vocab_size: 151936,
};

function refused(json: unknown, ...parts: string[]): KvoffModelFormatError {
  let caught: unknown;
  try {
    parseModelConfig(json, 'config.json');
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(KvoffModelFormatError);
  const e = caught as KvoffModelFormatError;
  expect(e.code).toBe('KVOFF_E_MODEL_FORMAT');
  expect(e.path).toBe('config.json');
  expect(e.message).toMatch(/^Expected .+ for config\.json.* but received .+$/s);
  for (const p of parts) expect(e.message).toContain(p);
  return e;
}

describe('parseModelConfig: supported configs', () => {
  it('Llama 2 7B: MHA, no scaling, one eos', () => {
    expect(parseModelConfig(LLAMA2_7B, 'config.json')).toEqual({
      architecture: 'llama', vocabSize: 32000, hiddenSize: 4096, intermediateSize: 11008, numLayers: 32, numHeads: 32,
      numKvHeads: 32, headDim: 128, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null, maxPositionEmbeddings: 4096,
      tieWordEmbeddings: false, attentionBias: false, bosTokenId: 1, eosTokenIds: [2],
    });
  });

  it('Llama 3.1 8B: GQA 4:1, llama3 rope scaling, several eos ids', () => {
    const c = parseModelConfig(LLAMA31_8B, 'config.json');
    expect(c.numKvHeads).toBe(8);
    expect(c.headDim).toBe(128);
    expect(c.ropeTheta).toBe(500000);
    expect(c.ropeScaling).toEqual({ type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
    expect(c.eosTokenIds).toEqual([128001, 128008, 128009]);
    expect(c.bosTokenId).toBe(128000);
    expect(c.tieWordEmbeddings).toBe(false);
  });

  it('Llama 3.2 1B: explicit head_dim, tied embeddings', () => {
    const c = parseModelConfig(LLAMA32_1B, 'config.json');
    expect([c.hiddenSize, c.numHeads, c.numKvHeads, c.headDim, c.tieWordEmbeddings]).toEqual([2048, 32, 8, 64, true]);
    expect(c.ropeScaling).toMatchObject({ type: 'llama3', factor: 32 });
  });

  it('accepts `type` instead of `rope_type`, linear scaling, and "default" as none', () => {
    const { rope_type: _, ...noRopeType } = LLAMA31_8B.rope_scaling;
    expect(parseModelConfig({ ...LLAMA31_8B, rope_scaling: { ...noRopeType, type: 'llama3' } }, 'config.json').ropeScaling).toMatchObject({ type: 'llama3' });
    expect(parseModelConfig({ ...LLAMA2_7B, rope_scaling: { type: 'linear', factor: 4 } }, 'config.json').ropeScaling).toEqual({ type: 'linear', factor: 4 });
    expect(parseModelConfig({ ...LLAMA2_7B, rope_scaling: { rope_type: 'default' } }, 'config.json').ropeScaling).toBeNull();
  });

  it('Mistral 7B v0.3: GQA, no sliding window; a window covering the context is fine', () => {
    const c = parseModelConfig(MISTRAL_7B_V03, 'config.json');
    expect([c.architecture, c.numKvHeads, c.headDim, c.vocabSize, c.ropeTheta]).toEqual(['mistral', 8, 128, 32768, 1e6]);
    expect(parseModelConfig({ ...MISTRAL_7B_V03, sliding_window: 32768 }, 'config.json').architecture).toBe('mistral');
  });

  it('Mistral NeMo-style head_dim that is not hidden / heads', () => {
    const c = parseModelConfig({ ...MISTRAL_7B_V03, hidden_size: 5120, head_dim: 128, num_hidden_layers: 40 }, 'config.json');
    expect(c.headDim).toBe(128);
  });

  it('Qwen2.5 0.5B: GQA 7:1, q/k/v bias, tied, window ignored when use_sliding_window is false', () => {
    const c = parseModelConfig(QWEN25_05B, 'config.json');
    expect([c.architecture, c.numHeads, c.numKvHeads, c.headDim, c.attentionBias, c.tieWordEmbeddings]).toEqual(['qwen2', 14, 2, 64, true, true]);
    expect(c.eosTokenIds).toEqual([151643]);
  });

  it('MQA: one KV head', () => {
    const c = parseModelConfig({ ...LLAMA2_7B, num_key_value_heads: 1 }, 'config.json');
    expect(c.numKvHeads).toBe(1);
  });

  it('fills the transformers defaults for omitted keys', () => {
    const llama = parseModelConfig({ architectures: ['LlamaForCausalLM'] }, 'config.json');
    expect(llama).toMatchObject({ vocabSize: 32000, hiddenSize: 4096, intermediateSize: 11008, numKvHeads: 32, headDim: 128, rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 2048, tieWordEmbeddings: false, bosTokenId: 1, eosTokenIds: [2] });
    const qwen = parseModelConfig({ architectures: ['Qwen2ForCausalLM'], num_attention_heads: 16, hidden_size: 1024 }, 'config.json');
    expect(qwen).toMatchObject({ numKvHeads: 16, headDim: 64, vocabSize: 151936, tieWordEmbeddings: false, bosTokenId: null, eosTokenIds: [] });
    expect(parseModelConfig({ ...LLAMA2_7B, num_key_value_heads: null }, 'config.json').numKvHeads).toBe(32);
    // Only model_type, as some hand-written configs have.
    const { architectures: _, ...noArch } = LLAMA2_7B;
    expect(parseModelConfig(noArch, 'config.json').architecture).toBe('llama');
  });
});

describe('parseModelConfig: refusals name the field, the expectation and the value', () => {
  it('unknown architecture, with the supported list', () => {
    const e = refused({ ...LLAMA2_7B, architectures: ['GPT2LMHeadModel'] });
    expect(e.message).toBe('Expected one of LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM for config.json architectures but received GPT2LMHeadModel');
    const { architectures: _, ...noArch } = LLAMA2_7B;
    refused({ ...noArch, model_type: 'gpt2' }, 'architectures', 'model_type "gpt2"');
    refused({ ...LLAMA2_7B, architectures: [] }, 'architectures', 'array(0)');
    refused('not an object', 'a JSON object');
  });

  it('wrongly typed or out-of-range fields', () => {
    expect(refused({ ...LLAMA2_7B, hidden_size: '4096' }).message).toBe('Expected a positive integer for config.json hidden_size but received "4096"');
    refused({ ...LLAMA2_7B, num_attention_heads: 0 }, 'num_attention_heads', 'a positive integer', 'received 0');
    refused({ ...LLAMA2_7B, intermediate_size: 11008.5 }, 'intermediate_size', '11008.5');
    refused({ ...LLAMA2_7B, rms_norm_eps: -1 }, 'rms_norm_eps', 'a positive finite number');
    refused({ ...LLAMA2_7B, tie_word_embeddings: 'yes' }, 'tie_word_embeddings', 'true or false');
    refused({ ...LLAMA31_8B, eos_token_id: 'x' }, 'eos_token_id', 'a token id or an array of token ids');
    refused({ ...LLAMA31_8B, eos_token_id: [1, -2] }, 'eos_token_id[1]', 'a non-negative integer', 'received -2');
  });

  it('inconsistent head counts', () => {
    refused({ ...LLAMA2_7B, num_key_value_heads: 5 }, 'num_key_value_heads', 'a divisor of num_attention_heads (32)', 'received 5');
    refused({ ...LLAMA2_7B, hidden_size: 4000, num_attention_heads: 48, num_key_value_heads: 8 }, 'hidden_size', 'multiple of num_attention_heads (48)');
    refused({ ...LLAMA2_7B, head_dim: 7 }, 'head_dim', 'even');
  });

  it('activation, biases and quantization kvoff does not implement', () => {
    refused({ ...LLAMA2_7B, hidden_act: 'gelu' }, 'hidden_act', '"silu"', 'received "gelu"');
    refused({ ...LLAMA31_8B, attention_bias: true }, 'attention_bias');
    refused({ ...LLAMA31_8B, mlp_bias: true }, 'mlp_bias');
    refused({ ...LLAMA31_8B, quantization_config: { quant_method: 'gptq' } }, 'quantization_config');
  });

  it('sliding windows shorter than the context', () => {
    refused({ ...MISTRAL_7B_V03, sliding_window: 4096 }, 'sliding_window', 'null or a window >= max_position_embeddings (32768)', 'received 4096');
    // transformers' MistralConfig defaults sliding_window to 4096 when the key is absent.
    const { sliding_window: _, ...noWindow } = MISTRAL_7B_V03;
    refused(noWindow, 'sliding_window', 'received 4096');
    refused({ ...QWEN25_05B, use_sliding_window: true, sliding_window: 4096, max_window_layers: 0 }, 'use_sliding_window');
  });

  it('RoPE scaling kvoff does not implement, or incomplete llama3 parameters', () => {
    refused({ ...LLAMA2_7B, rope_scaling: { rope_type: 'yarn', factor: 4 } }, 'rope_scaling.rope_type', '"llama3", "linear"', 'received "yarn"');
    refused({ ...LLAMA2_7B, rope_scaling: { type: 'dynamic', factor: 2 } }, 'rope_scaling.type', 'received "dynamic"');
    const { low_freq_factor: _, ...partial } = LLAMA31_8B.rope_scaling;
    refused({ ...LLAMA31_8B, rope_scaling: partial }, 'rope_scaling.low_freq_factor', 'a positive finite number', 'received undefined');
    refused({ ...LLAMA31_8B, rope_scaling: { ...LLAMA31_8B.rope_scaling, high_freq_factor: 1 } }, 'rope_scaling.high_freq_factor', '> low_freq_factor');
    refused({ ...LLAMA2_7B, rope_scaling: { type: 'linear' } }, 'rope_scaling.factor');
    refused({ ...LLAMA2_7B, rope_scaling: 'llama3' }, 'rope_scaling', 'an object or null');
  });
});
