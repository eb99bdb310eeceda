// The model description every part shares: a normalized config and raw tensors by Hugging Face name.

export type Architecture = 'llama' | 'mistral' | 'qwen2';
export const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'] as const;

export type RopeScaling =
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number }
  | { type: 'linear'; factor: number };

/** config.json, normalized: camelCase, defaults applied, GQA made explicit. */
export interface ModelConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number; // == numHeads for MHA, 1 for MQA
  headDim: number; // config.head_dim, else hiddenSize / numHeads
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  attentionBias: boolean; // q/k/v projections carry a bias (Qwen2)
  bosTokenId: number | null;
  eosTokenIds: number[];
}

export type TensorDtype = 'f32' | 'f16' | 'bf16';

/** A tensor as stored: little-endian bytes of `dtype`, row-major `shape`. `data` may view a shared file buffer. */
export interface RawTensor {
  dtype: TensorDtype;
  shape: number[];
  data: Uint8Array;
}

/** Tensors by Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight" ([out, in]). */
export type WeightMap = Map<string, RawTensor>;
