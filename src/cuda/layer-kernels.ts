// One decoder layer's dense kernels enqueued on a stream over device buffers (no host traffic): shared by the CUDA
// dense layers (host in, host out) and the device-resident decode step (activations never leave the GPU).
import type { ModelConfig } from '../model/types.js';
import { native, type DevRef } from '../native.js';
import { DeviceArena, DeviceLayout } from './device-arena.js';

/** Activations of up to `rows` tokens, f32; logits for `logitsRows` of them (prefill samples only its last row). */
export function activationLayout(c: ModelConfig, rows: number, logitsRows = rows): DeviceLayout {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D, intermediateSize: I, vocabSize: V } = c;
  return new DeviceLayout()
    .add('x', rows * H * 4) // residual stream [rows, H]
    .add('n', rows * H * 4) // normed [rows, H]
    .add('qkv', rows * (nH + 2 * nKv) * D * 4) // [rows, (nH + 2 nKv) D]: q | k | v of each row
    .add('attn', rows * nH * D * 4) // [rows, nH D]
    .add('cos', rows * D * 4) // [rows, D]
    .add('sin', rows * D * 4)
    .add('gateUp', rows * 2 * I * 4) // [rows, 2I]
    .add('act', rows * I * 4) // [rows, I]
    .add('logits', logitsRows * V * 4) // [logitsRows, V]
    .add('ids', rows * 4); // [rows] int32: token ids in, argmax out
}

export const qkvWidth = (c: ModelConfig): number => (c.numHeads + 2 * c.numKvHeads) * c.headDim;

export class LayerKernels {
  // DevRefs resolved once: a decode step makes hundreds of launches, and each lookup would allocate.
  readonly #w: Array<Record<string, DevRef>>; // plus qkvBias where the model has q/k/v biases
  readonly #final: { norm: DevRef; lmHead: DevRef };
  constructor(
    readonly c: ModelConfig,
    readonly weights: DeviceArena, // weightLayout(c) (cuda-weights.ts)
    readonly stream: number,
  ) {
    const parts = ['inNorm', 'qkv', 'o', 'postNorm', 'gateUp', 'down'];
    if (c.attentionBias) parts.push('qkvBias');
    this.#w = Array.from({ length: c.numLayers }, (_, l) => Object.fromEntries(parts.map((p) => [p, weights.ref(`${l}.${p}`)])));
    this.#final = { norm: weights.ref('norm'), lmHead: weights.ref('lmHead') };
  }

  /** x [T, H] -> qkv [T, width]: input_layernorm, the fused q|k|v projection (+ bias), RoPE on q and k (cos/sin already in a). */
  pre(a: DeviceArena, layer: number, T: number): void {
    const { c, stream } = this;
    const width = qkvWidth(c);
    const w = this.#w[layer];
    native().cudaRmsNorm({ x: a.ref('x'), weight: w.inNorm, out: a.ref('n'), rows: T, n: c.hiddenSize, eps: c.rmsNormEps, stream });
    native().cudaGemm({ w: w.qkv, x: a.ref('n'), y: a.ref('qkv'), m: T, n: width, k: c.hiddenSize, stream });
    if (w.qkvBias) native().cudaAddBias({ x: a.ref('qkv'), bias: w.qkvBias, rows: T, n: width, stream });
    const rope = { rows: T, headDim: c.headDim, rowStride: width, cos: a.ref('cos'), sin: a.ref('sin'), stream };
    native().cudaRope({ ...rope, x: a.ref('qkv'), heads: c.numHeads });
    native().cudaRope({ ...rope, x: a.ref('qkv', c.numHeads * c.headDim * 4), heads: c.numKvHeads });
  }

  /** attn [T, nH D], x [T, H] -> x += o_proj(attn); x += down(silu(gate(n)) * up(n)), n = post_attention_layernorm(x). */
  post(a: DeviceArena, layer: number, T: number): void {
    const { c, stream } = this;
    const { hiddenSize: H, intermediateSize: I } = c;
    const w = this.#w[layer];
    native().cudaGemm({ w: w.o, x: a.ref('attn'), y: a.ref('x'), m: T, n: H, k: c.numHeads * c.headDim, accumulate: true, stream });
    native().cudaRmsNorm({ x: a.ref('x'), weight: w.postNorm, out: a.ref('n'), rows: T, n: H, eps: c.rmsNormEps, stream });
    native().cudaGemm({ w: w.gateUp, x: a.ref('n'), y: a.ref('gateUp'), m: T, n: 2 * I, k: H, stream });
    native().cudaSwiGlu({ gateUp: a.ref('gateUp'), out: a.ref('act'), m: T, inter: I, stream });
    native().cudaGemm({ w: w.down, x: a.ref('act'), y: a.ref('x'), m: T, n: H, k: I, accumulate: true, stream });
  }

  /** x [T, H] -> logits [T, V] (final norm, lm_head). */
  head(a: DeviceArena, T: number): void {
    const { c, stream } = this;
    native().cudaRmsNorm({ x: a.ref('x'), weight: this.#final.norm, out: a.ref('n'), rows: T, n: c.hiddenSize, eps: c.rmsNormEps, stream });
    native().cudaGemm({ w: this.#final.lmHead, x: a.ref('n'), y: a.ref('logits'), m: T, n: c.vocabSize, k: c.hiddenSize, stream });
  }
}
