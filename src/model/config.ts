// Hugging Face config.json (Llama, Mistral, Qwen2) validated with zod and normalized to ModelConfig.
import { z } from 'zod';
import { describe } from '../errors.js';
import { KvoffModelFormatError } from './errors.js';
import { SUPPORTED_ARCHITECTURES, type Architecture, type ModelConfig, type RopeScaling } from './types.js';

// Every leaf carries its own "expected" text as the zod error, so a zod issue's message is the
// X of "Expected X for <file> <field> but received Z".
const POS_INT = 'a positive integer';
const posInt = () => z.number({ error: POS_INT }).int({ error: POS_INT }).positive({ error: POS_INT });
const NON_NEG_INT = 'a non-negative integer';
const tokenId = () => z.number({ error: NON_NEG_INT }).int({ error: NON_NEG_INT }).nonnegative({ error: NON_NEG_INT });
const POS_NUM = 'a positive finite number';
const posNum = () => z.number({ error: POS_NUM }).positive({ error: POS_NUM }).finite({ error: POS_NUM });
const bool = () => z.boolean({ error: 'true or false' });

const ConfigSchema = z.object({
  vocab_size: posInt().optional(),
  hidden_size: posInt().optional(),
  intermediate_size: posInt().optional(),
  num_hidden_layers: posInt().optional(),
  num_attention_heads: posInt().optional(),
  num_key_value_heads: posInt().nullable().optional(),
  head_dim: posInt().nullable().optional(),
  // kvoff's MLP graphs are SwiGLU; gelu and friends would silently compute a different model.
  hidden_act: z.literal('silu', { error: '"silu" (the only activation kvoff implements)' }).optional(),
  max_position_embeddings: posInt().optional(),
  rms_norm_eps: posNum().optional(),
  rope_theta: posNum().optional(),
  tie_word_embeddings: bool().optional(),
  attention_bias: bool().optional(),
  mlp_bias: bool().optional(),
  sliding_window: posInt().nullable().optional(),
  use_sliding_window: bool().optional(),
  max_window_layers: z.number({ error: NON_NEG_INT }).int({ error: NON_NEG_INT }).nonnegative({ error: NON_NEG_INT }).optional(),
  bos_token_id: tokenId().nullable().optional(),
  eos_token_id: z
    .union([tokenId(), z.array(tokenId())], { error: 'a token id or an array of token ids' })
    .nullable()
    .optional(),
});
type RawConfig = z.infer<typeof ConfigSchema>;

const Llama3Schema = z.object({
  factor: posNum(),
  low_freq_factor: posNum(),
  high_freq_factor: posNum(),
  original_max_position_embeddings: posInt(),
});
const LinearSchema = z.object({ factor: posNum() });

interface Defaults {
  vocab: number;
  intermediate: number;
  maxPos: number;
  kvHeads: number | null; // null: same as num_attention_heads
  bos: number | null;
  eos: number[];
  slidingWindow: number | null;
}

// The defaults of transformers' LlamaConfig / MistralConfig / Qwen2Config, for keys a config.json omits.
const DEFAULTS: Record<Architecture, Defaults> = {
  llama: { vocab: 32000, intermediate: 11008, maxPos: 2048, kvHeads: null, bos: 1, eos: [2], slidingWindow: null },
  mistral: { vocab: 32000, intermediate: 14336, maxPos: 4096 * 32, kvHeads: 8, bos: 1, eos: [2], slidingWindow: 4096 },
  qwen2: { vocab: 151936, intermediate: 22016, maxPos: 32768, kvHeads: null, bos: null, eos: [], slidingWindow: 4096 },
};

const ARCH_OF: Record<string, Architecture> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};
const MODEL_TYPE_OF: Record<string, string> = { llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM' };
const SUPPORTED_TEXT = `one of ${SUPPORTED_ARCHITECTURES.join(', ')}`;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function fieldName(path: readonly PropertyKey[]): string {
  let s = '';
  for (const k of path) s += typeof k === 'number' ? `[${k}]` : s ? `.${String(k)}` : String(k);
  return s;
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v = root;
  for (const k of path) v = isPlainObject(v) || Array.isArray(v) ? (v as Record<PropertyKey, unknown>)[k as string] : undefined;
  return v;
}

/** Runs a zod schema; its first issue becomes a KvoffModelFormatError naming the field. */
function parseWith<T>(schema: z.ZodType<T>, value: unknown, source: string, prefix: PropertyKey[] = []): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const path = [...prefix, ...issue.path];
  throw new KvoffModelFormatError(source, fieldName(path), issue.message, describe(valueAt(value, issue.path)));
}

function architectureOf(json: Record<string, unknown>, source: string): Architecture {
  const archs = json.architectures;
  if (archs === undefined || archs === null) {
    // Some hand-written configs give only model_type; transformers maps it the same way.
    const mt = json.model_type;
    if (typeof mt === 'string' && Object.hasOwn(MODEL_TYPE_OF, mt)) return ARCH_OF[MODEL_TYPE_OF[mt]];
    throw new KvoffModelFormatError(source, 'architectures', SUPPORTED_TEXT, `no architectures (model_type ${describe(mt)})`);
  }
  if (!Array.isArray(archs) || archs.length === 0 || !archs.every((a) => typeof a === 'string')) {
    throw new KvoffModelFormatError(source, 'architectures', `a non-empty array naming ${SUPPORTED_TEXT}`, describe(archs));
  }
  // transformers instantiates architectures[0]; the rest are alternative heads we would not run.
  const name = archs[0] as string;
  if (!Object.hasOwn(ARCH_OF, name)) throw new KvoffModelFormatError(source, 'architectures', SUPPORTED_TEXT, name);
  return ARCH_OF[name];
}

function ropeScalingOf(json: Record<string, unknown>, source: string): RopeScaling | null {
  // transformers v5 writes rope_parameters; older configs write rope_scaling. Both carry rope_type.
  const key = json.rope_scaling != null ? 'rope_scaling' : json.rope_parameters != null ? 'rope_parameters' : null;
  if (key === null) return null;
  const raw = json[key];
  if (!isPlainObject(raw)) throw new KvoffModelFormatError(source, key, 'an object or null', describe(raw));
  const type = raw.rope_type ?? raw.type;
  const typeField = raw.rope_type !== undefined ? `${key}.rope_type` : `${key}.type`;
  if (type === 'default' || (type === undefined && key === 'rope_parameters')) return null;
  if (type === 'llama3') {
    const p = parseWith(Llama3Schema, raw, source, [key]);
    if (p.high_freq_factor <= p.low_freq_factor) {
      // The llama3 ramp divides by (high - low); equal factors would give NaN frequencies.
      throw new KvoffModelFormatError(source, `${key}.high_freq_factor`, `a number > low_freq_factor (${p.low_freq_factor})`, String(p.high_freq_factor));
    }
    return {
      type: 'llama3',
      factor: p.factor,
      lowFreqFactor: p.low_freq_factor,
      highFreqFactor: p.high_freq_factor,
      originalMaxPositionEmbeddings: p.original_max_position_embeddings,
    };
  }
  if (type === 'linear') return { type: 'linear', factor: parseWith(LinearSchema, raw, source, [key]).factor };
  throw new KvoffModelFormatError(source, typeField, 'one of "llama3", "linear", "default" (the RoPE scalings kvoff implements)', describe(type));
}

/** Validates a parsed config.json and fills transformers' defaults. `source` names the file in errors. */
export function parseModelConfig(json: unknown, source: string): ModelConfig {
  if (!isPlainObject(json)) throw new KvoffModelFormatError(source, '', 'a JSON object', describe(json));
  const architecture = architectureOf(json, source);
  if (json.quantization_config != null) {
    throw new KvoffModelFormatError(source, 'quantization_config', 'no quantization (kvoff reads F32, F16 or BF16 weights)', describe(json.quantization_config));
  }
  const c: RawConfig = parseWith(ConfigSchema, json, source);
  const d = DEFAULTS[architecture];

  const hiddenSize = c.hidden_size ?? 4096;
  const numHeads = c.num_attention_heads ?? 32;
  const numKvHeads = c.num_key_value_heads ?? d.kvHeads ?? numHeads;
  if (numHeads % numKvHeads !== 0) {
    throw new KvoffModelFormatError(source, 'num_key_value_heads', `a divisor of num_attention_heads (${numHeads})`, String(numKvHeads));
  }
  if (c.head_dim == null && hiddenSize % numHeads !== 0) {
    throw new KvoffModelFormatError(source, 'hidden_size', `a multiple of num_attention_heads (${numHeads}) when head_dim is absent`, String(hiddenSize));
  }
  const headDim = c.head_dim ?? hiddenSize / numHeads;
  if (headDim % 2 !== 0) {
    // RoPE rotates pairs of dimensions.
    throw new KvoffModelFormatError(source, c.head_dim == null ? 'hidden_size / num_attention_heads' : 'head_dim', 'an even head dimension', String(headDim));
  }
  const maxPos = c.max_position_embeddings ?? d.maxPos;

  if (architecture === 'llama' && c.attention_bias === true) {
    // Llama's attention_bias also puts a bias on o_proj, which the model description cannot carry.
    throw new KvoffModelFormatError(source, 'attention_bias', 'false (Llama attention biases are not supported)', 'true');
  }
  if (c.mlp_bias === true) throw new KvoffModelFormatError(source, 'mlp_bias', 'false (MLP biases are not supported)', 'true');
  checkSlidingWindow(architecture, c, json, d, maxPos, c.num_hidden_layers ?? 32, source);

  const ropeTheta =
    c.rope_theta ??
    (isPlainObject(json.rope_parameters) ? parseWith(z.object({ rope_theta: posNum().optional() }), json.rope_parameters, source, ['rope_parameters']).rope_theta : undefined) ??
    10000;

  // An explicit null means "none"; an absent key means the class default.
  const eos = c.eos_token_id === undefined ? d.eos : c.eos_token_id === null ? [] : typeof c.eos_token_id === 'number' ? [c.eos_token_id] : c.eos_token_id;
  return {
    architecture,
    vocabSize: c.vocab_size ?? d.vocab,
    hiddenSize,
    intermediateSize: c.intermediate_size ?? d.intermediate,
    numLayers: c.num_hidden_layers ?? 32,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: c.rms_norm_eps ?? 1e-6,
    ropeTheta,
    ropeScaling: ropeScalingOf(json, source),
    maxPositionEmbeddings: maxPos,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    attentionBias: architecture === 'qwen2', // Qwen2 hard-codes bias=True on q/k/v, whatever the config says
    bosTokenId: c.bos_token_id === undefined ? d.bos : c.bos_token_id,
    eosTokenIds: [...eos],
  };
}

/** kvoff attends every position; a window shorter than the context would change the model's output. */
function checkSlidingWindow(
  arch: Architecture,
  c: RawConfig,
  json: Record<string, unknown>,
  d: Defaults,
  maxPos: number,
  numLayers: number,
  source: string,
): void {
  const window = 'sliding_window' in json ? (c.sliding_window ?? null) : d.slidingWindow;
  const expected = `null or a window >= max_position_embeddings (${maxPos}), since kvoff attends the full context`;
  if (arch === 'mistral' && window !== null && window < maxPos) {
    throw new KvoffModelFormatError(source, 'sliding_window', expected, String(window));
  }
  // Qwen2 applies its window only when use_sliding_window is set, and only to layers >= max_window_layers.
  if (arch === 'qwen2' && c.use_sliding_window === true && window !== null && window < maxPos && (c.max_window_layers ?? 28) < numLayers) {
    throw new KvoffModelFormatError(source, 'use_sliding_window', `false, or sliding_window ${expected}`, 'true');
  }
}
