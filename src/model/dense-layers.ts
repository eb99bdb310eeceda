// The dense part of the decoder (everything but attention) behind one interface: onnxruntime on the CPU, or kvoff's CUDA kernels.
import { runFinal, runPostAttention, runPreAttention, type DenseRunner } from './onnx/session.js';
import type { ModelConfig } from './types.js';

export interface QKV {
  q: Float32Array; // [T, numHeads, headDim], RoPE applied
  k: Float32Array; // [T, numKvHeads, headDim], RoPE applied
  v: Float32Array; // [T, numKvHeads, headDim]
}

/**
 * Host tensors in, host tensors out: attention runs in between wherever the policy puts it (CPU workers over the
 * pinned host cache, the device tier), so only q, k, v go down and the attention output comes back, per layer.
 */
export interface DenseLayers {
  readonly backend: 'cpu' | 'cuda';
  /** hidden [T, hidden], cos/sin [T, headDim] (ropeTables) -> input_layernorm, q/k/v projections, RoPE. */
  preAttention(layer: number, hidden: Float32Array, cos: Float32Array, sin: Float32Array): Promise<QKV>;
  /** attn [T, numHeads * headDim], residual [T, hidden] -> residual + o_proj(attn), then + MLP(post_attention_layernorm(.)). */
  postAttention(layer: number, attn: Float32Array, residual: Float32Array): Promise<Float32Array>;
  /** hidden [T, hidden] -> logits [T, vocab] (final norm, lm_head). */
  final(hidden: Float32Array): Promise<Float32Array>;
  dispose(): Promise<void>;
}

/** The CPU backend: kvoff's ONNX graphs on onnxruntime's CPU execution provider. */
export function ortDenseLayers(runner: DenseRunner, c: ModelConfig): DenseLayers {
  return {
    backend: 'cpu',
    preAttention: (l, hidden, cos, sin) => runPreAttention(runner, c, l, hidden, cos, sin),
    postAttention: (l, attn, residual) => runPostAttention(runner, c, l, attn, residual),
    final: (hidden) => runFinal(runner, c, hidden),
    dispose: () => runner.dispose(),
  };
}
