// Builds the per-layer dense ONNX graphs (before and after attention) and the final norm + lm_head graph from f32 weights.
//
// The token embedding is not a graph: it is a row copy (T rows of `hidden` floats) done in TypeScript.
// As an ONNX Gather it would need embed_tokens as an initializer of its own — a second copy when the
// embeddings are tied to lm_head, and 2.1 GB in f32 for Llama 3's 128k x 4096, past protobuf's 2 GiB —
// to save a memcpy that costs microseconds. See `embedTokens`.
import { KvoffArgumentError, KvoffRangeError } from '../../errors.js';
import type { ModelConfig } from '../types.js';
import { GraphBuilder } from './graph.js';

/** Weights of the graph before attention; Float32Arrays in Hugging Face layout ([out, in] for projections). */
export interface PreAttentionWeights {
  inputLayernorm: Float32Array; // [hidden]
  qProj: Float32Array; // [numHeads * headDim, hidden]
  kProj: Float32Array; // [numKvHeads * headDim, hidden]
  vProj: Float32Array; // [numKvHeads * headDim, hidden]
  /** Present exactly when config.attentionBias (Qwen2). */
  qBias?: Float32Array; // [numHeads * headDim]
  kBias?: Float32Array; // [numKvHeads * headDim]
  vBias?: Float32Array; // [numKvHeads * headDim]
}

/** Weights of the graph after attention. */
export interface PostAttentionWeights {
  oProj: Float32Array; // [hidden, numHeads * headDim]
  postAttentionLayernorm: Float32Array; // [hidden]
  gateProj: Float32Array; // [intermediate, hidden]
  upProj: Float32Array; // [intermediate, hidden]
  downProj: Float32Array; // [hidden, intermediate]
}

export type LayerWeights = PreAttentionWeights & PostAttentionWeights;

export interface FinalWeights {
  norm: Float32Array; // [hidden]
  lmHead: Float32Array; // [vocab, hidden]; model.embed_tokens.weight when tied
}

/** Hugging Face tensor names of one layer, by LayerWeights field. */
export function layerWeightNames(layer: number): Record<keyof LayerWeights, string> {
  const p = `model.layers.${layer}`;
  return {
    inputLayernorm: `${p}.input_layernorm.weight`,
    qProj: `${p}.self_attn.q_proj.weight`,
    kProj: `${p}.self_attn.k_proj.weight`,
    vProj: `${p}.self_attn.v_proj.weight`,
    qBias: `${p}.self_attn.q_proj.bias`,
    kBias: `${p}.self_attn.k_proj.bias`,
    vBias: `${p}.self_attn.v_proj.bias`,
    oProj: `${p}.self_attn.o_proj.weight`,
    postAttentionLayernorm: `${p}.post_attention_layernorm.weight`,
    gateProj: `${p}.mlp.gate_proj.weight`,
    upProj: `${p}.mlp.up_proj.weight`,
    downProj: `${p}.mlp.down_proj.weight`,
  };
}

/** Gathers one layer's weights through `get` (HF name -> f32 data), biases only when the config has them. */
export function pickLayerWeights(config: ModelConfig, layer: number, get: (name: string) => Float32Array): LayerWeights {
  const n = layerWeightNames(layer);
  const w: LayerWeights = {
    inputLayernorm: get(n.inputLayernorm),
    qProj: get(n.qProj),
    kProj: get(n.kProj),
    vProj: get(n.vProj),
    oProj: get(n.oProj),
    postAttentionLayernorm: get(n.postAttentionLayernorm),
    gateProj: get(n.gateProj),
    upProj: get(n.upProj),
    downProj: get(n.downProj),
  };
  if (config.attentionBias) {
    w.qBias = get(n.qBias);
    w.kBias = get(n.kBias);
    w.vBias = get(n.vBias);
  }
  return w;
}

export function pickFinalWeights(config: ModelConfig, get: (name: string) => Float32Array): FinalWeights {
  return {
    norm: get('model.norm.weight'),
    lmHead: get(config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight'),
  };
}

/** Graph input and output names, the contract between these graphs and session.ts. */
export const PRE_INPUTS = ['hidden', 'cos', 'sin'] as const;
export const PRE_OUTPUTS = ['q', 'k', 'v'] as const;
export const POST_INPUTS = ['attn', 'residual'] as const;
export const POST_OUTPUTS = ['hidden'] as const;
export const FINAL_INPUTS = ['hidden'] as const;
export const FINAL_OUTPUTS = ['logits'] as const;

/**
 * RMSNorm in f32: x / sqrt(mean(x^2) + eps) * w. Written as Pow, ReduceMean, Add, Sqrt, Div, Mul because
 * that is the pattern onnxruntime's SimplifiedLayerNormFusion turns into one kernel (checked with
 * optimizedModelFilePath: one SimplifiedLayerNormalization node; x * Sigmoid(x) likewise becomes QuickGelu(alpha=1)).
 */
function rmsNorm(g: GraphBuilder, x: string, weight: Float32Array, eps: number, name: string): string {
  const w = g.f32(`${name}.weight`, [weight.length], weight);
  const sq = g.node('Pow', [x, g.f32Scalar(`${name}.two`, 2)]);
  const mean = g.node('ReduceMean', [sq], { axes: [-1], keepdims: 1 }); // [T, 1]
  const std = g.node('Sqrt', [g.node('Add', [mean, g.f32Scalar(`${name}.eps`, eps)])]);
  return g.node('Mul', [g.node('Div', [x, std]), w]);
}

/** x @ W^T (+ b), HF Linear. Gemm's transB reads W in its [out, in] layout, so no transposed copy is made. */
function linear(g: GraphBuilder, x: string, name: string, w: Float32Array, out: number, inp: number, bias?: Float32Array): string {
  const inputs = [x, g.f32(`${name}.weight`, [out, inp], w)];
  if (bias !== undefined) inputs.push(g.f32(`${name}.bias`, [out], bias));
  return g.node('Gemm', inputs, { transB: 1 });
}

/** x * cos + rotate_half(x) * sin with rotate_half(x) = concat(-x2, x1); x [T, H, D], cos/sin [T, 1, D]. */
function rope(g: GraphBuilder, x: string, cos: string, sin: string, halves: string): string {
  const [x1, x2] = g.nodeN('Split', [x, halves], [`${x}_1`, `${x}_2`], { axis: -1 }); // [T, H, D/2] each
  const rotated = g.node('Concat', [g.node('Neg', [x2]), x1], { axis: -1 }); // [T, H, D]
  return g.node('Add', [g.node('Mul', [x, cos]), g.node('Mul', [rotated, sin])]);
}

function checkConfig(c: ModelConfig): void {
  if (c.headDim % 2 !== 0) throw new KvoffArgumentError('config.headDim', 'an even number (RoPE)', c.headDim);
  if (c.numHeads % c.numKvHeads !== 0) {
    throw new KvoffArgumentError('config.numKvHeads', `a divisor of numHeads (${c.numHeads})`, c.numKvHeads);
  }
}

/**
 * hidden [T, hidden], cos [T, headDim], sin [T, headDim]
 *   -> q [T, numHeads, headDim], k [T, numKvHeads, headDim], v [T, numKvHeads, headDim]
 * input_layernorm, q/k/v projections (+ bias when config.attentionBias), RoPE on q and k.
 */
export function buildPreAttentionGraph(c: ModelConfig, layer: number, w: PreAttentionWeights): Uint8Array {
  checkConfig(c);
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D } = c;
  for (const b of ['qBias', 'kBias', 'vBias'] as const) {
    if (c.attentionBias !== (w[b] !== undefined)) {
      const want = c.attentionBias ? 'a Float32Array (config.attentionBias is true)' : 'undefined (config.attentionBias is false)';
      throw new KvoffArgumentError(`layer ${layer} ${b}`, want, w[b]);
    }
  }
  const g = new GraphBuilder(`layer${layer}.pre_attention`);
  const hidden = g.input('hidden', ['T', H]);
  const cos3 = g.node('Reshape', [g.input('cos', ['T', D]), g.i64('rope_shape', [-1, 1, D])]); // [T, 1, D]
  const sin3 = g.node('Reshape', [g.input('sin', ['T', D]), 'rope_shape']); // [T, 1, D]
  const halves = g.i64('rope_halves', [D / 2, D / 2]);

  const x = rmsNorm(g, hidden, w.inputLayernorm, c.rmsNormEps, 'input_layernorm'); // [T, H]
  const q = linear(g, x, 'q_proj', w.qProj, nH * D, H, w.qBias); // [T, nH * D]
  const k = linear(g, x, 'k_proj', w.kProj, nKv * D, H, w.kBias); // [T, nKv * D]
  const v = linear(g, x, 'v_proj', w.vProj, nKv * D, H, w.vBias); // [T, nKv * D]
  const q3 = g.node('Reshape', [q, g.i64('q_shape', [-1, nH, D])], {}, 'q_heads'); // [T, nH, D]
  const k3 = g.node('Reshape', [k, g.i64('kv_shape', [-1, nKv, D])], {}, 'k_heads'); // [T, nKv, D]
  g.node('Reshape', [v, 'kv_shape'], {}, 'v'); // [T, nKv, D]

  g.output(rope(g, q3, cos3, sin3, halves), 'q', ['T', nH, D]);
  g.output(rope(g, k3, cos3, sin3, halves), 'k', ['T', nKv, D]);
  g.output('v', 'v', ['T', nKv, D]);
  return g.encode();
}

/**
 * attn [T, numHeads * headDim], residual [T, hidden] -> hidden [T, hidden]
 * h = residual + o_proj(attn); out = h + down(silu(gate(n)) * up(n)) with n = post_attention_layernorm(h).
 */
export function buildPostAttentionGraph(c: ModelConfig, layer: number, w: PostAttentionWeights): Uint8Array {
  checkConfig(c);
  const { hiddenSize: H, numHeads: nH, headDim: D, intermediateSize: I } = c;
  const g = new GraphBuilder(`layer${layer}.post_attention`);
  const attn = g.input('attn', ['T', nH * D]);
  const residual = g.input('residual', ['T', H]);

  const h = g.node('Add', [linear(g, attn, 'o_proj', w.oProj, H, nH * D), residual]); // [T, H]
  const n = rmsNorm(g, h, w.postAttentionLayernorm, c.rmsNormEps, 'post_attention_layernorm');
  const gate = linear(g, n, 'gate_proj', w.gateProj, I, H); // [T, I]
  const up = linear(g, n, 'up_proj', w.upProj, I, H); // [T, I]
  const act = g.node('Mul', [g.node('Mul', [gate, g.node('Sigmoid', [gate])]), up]); // silu(gate) * up
  const down = linear(g, act, 'down_proj', w.downProj, H, I); // [T, H]
  g.output(g.node('Add', [h, down]), 'hidden', ['T', H]);
  return g.encode();
}

/** Which rows of lm_head a final graph computes: all by default, or a slice when the full matrix exceeds 2 GiB. */
export interface VocabRange {
  start: number;
  end: number;
}

/** hidden [T, hidden] -> logits [T, end - start]: model.norm then lm_head rows [start, end). */
export function buildFinalGraph(c: ModelConfig, w: FinalWeights, range: VocabRange = { start: 0, end: c.vocabSize }): Uint8Array {
  const { hiddenSize: H } = c;
  if (!(range.start >= 0 && range.start < range.end)) throw new KvoffRangeError('vocab range start', range.start, 0, range.end - 1);
  if (range.end > c.vocabSize) throw new KvoffRangeError('vocab range end', range.end, range.start + 1, c.vocabSize);
  if (w.lmHead.length !== c.vocabSize * H) {
    throw new KvoffArgumentError('lm_head', `Float32Array(${c.vocabSize * H}) of shape [${c.vocabSize}, ${H}]`, w.lmHead);
  }
  const rows = range.end - range.start;
  const g = new GraphBuilder(`final[${range.start},${range.end})`);
  const x = rmsNorm(g, g.input('hidden', ['T', H]), w.norm, c.rmsNormEps, 'norm');
  const head = w.lmHead.subarray(range.start * H, range.end * H);
  g.output(linear(g, x, 'lm_head', head, rows, H), 'logits', ['T', rows]);
  return g.encode();
}

/** Vocab slices whose lm_head rows stay under `maxBytes` each (protobuf's 2 GiB by default, minus room). */
export function planVocabRanges(c: ModelConfig, maxBytes = 2 ** 31 - (1 << 24)): VocabRange[] {
  const rowsPer = Math.max(1, Math.floor(maxBytes / (4 * c.hiddenSize)));
  const out: VocabRange[] = [];
  for (let s = 0; s < c.vocabSize; s += rowsPer) out.push({ start: s, end: Math.min(c.vocabSize, s + rowsPer) });
  return out;
}

/** hidden [T, hiddenSize] = embed_tokens[tokens]; embed [vocab, hiddenSize] f32. */
export function embedTokens(c: ModelConfig, embed: Float32Array, tokens: ArrayLike<number>): Float32Array {
  const H = c.hiddenSize;
  const out = new Float32Array(tokens.length * H);
  for (let t = 0; t < tokens.length; t++) {
    const id = tokens[t];
    if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new KvoffRangeError('token id', id, 0, c.vocabSize - 1);
    out.set(embed.subarray(id * H, (id + 1) * H), t * H);
  }
  return out;
}
