// Test helper: a plain TypeScript Llama/Mistral/Qwen2 forward pass on f32 weights, in f64 arithmetic, independent of onnxruntime.
import { ropeInvFreq, ropeTables } from '../src/model/rope.js';
import type { ModelConfig } from '../src/model/types.js';

/** Weights by Hugging Face name, f32, [out, in] for projections. */
export type F32Weights = Map<string, Float32Array>;

function get(w: F32Weights, name: string): Float32Array {
  const t = w.get(name);
  if (t === undefined) throw new Error(`reference forward: missing weight ${name}`);
  return t;
}

/** y [T, out] = x [T, in] @ W^T (+ b), W [out, in]. */
export function linearRef(x: Float64Array, T: number, W: Float32Array, out: number, inp: number, b?: Float32Array): Float64Array {
  const y = new Float64Array(T * out);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < out; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inp; i++) s += x[t * inp + i] * W[o * inp + i];
      y[t * out + o] = s;
    }
  }
  return y;
}

/** LlamaRMSNorm per row: x / sqrt(mean(x^2) + eps) * w. */
export function rmsNormRef(x: Float64Array, T: number, w: Float32Array, eps: number): Float64Array {
  const H = w.length;
  const y = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < H; i++) ss += x[t * H + i] ** 2;
    const inv = 1 / Math.sqrt(ss / H + eps);
    for (let i = 0; i < H; i++) y[t * H + i] = x[t * H + i] * inv * w[i];
  }
  return y;
}

/** In place on x [T, heads, D]: x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x2, x1). */
export function ropeRef(x: Float64Array, T: number, heads: number, D: number, cos: Float32Array, sin: Float32Array): void {
  const half = D / 2;
  const tmp = new Float64Array(D);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * D;
      for (let j = 0; j < D; j++) {
        const rot = j < half ? -x[base + j + half] : x[base + j - half];
        tmp[j] = x[base + j] * cos[t * D + j] + rot * sin[t * D + j];
      }
      x.set(tmp, base);
    }
  }
}

/**
 * Causal attention with grouped KV heads (head h reads KV head floor(h / (numHeads / numKvHeads)), as HF's
 * repeat_kv), f64 softmax. q [T, nH, D], k/v [T, nKv, D] -> out [T, nH * D]. Query t sees keys 0..t.
 */
export function causalAttentionRef(
  q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, T: number, nH: number, nKv: number, D: number,
): Float64Array {
  const group = nH / nKv;
  const scale = 1 / Math.sqrt(D);
  const out = new Float64Array(T * nH * D);
  const p = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nH; h++) {
      const kh = Math.floor(h / group);
      const qo = (t * nH + h) * D;
      let max = -Infinity;
      for (let s = 0; s <= t; s++) {
        const ko = (s * nKv + kh) * D;
        let dot = 0;
        for (let j = 0; j < D; j++) dot += q[qo + j] * k[ko + j];
        p[s] = dot * scale;
        max = Math.max(max, p[s]);
      }
      let sum = 0;
      for (let s = 0; s <= t; s++) sum += p[s] = Math.exp(p[s] - max);
      for (let s = 0; s <= t; s++) {
        const ko = (s * nKv + kh) * D;
        const ps = p[s] / sum;
        for (let j = 0; j < D; j++) out[qo + j] += ps * v[ko + j];
      }
    }
  }
  return out;
}

/** logits [T, vocab] for `tokens` at positions 0..T-1. */
export function referenceForward(c: ModelConfig, w: F32Weights, tokens: ArrayLike<number>): Float64Array {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D, intermediateSize: I, rmsNormEps: eps } = c;
  const T = tokens.length;
  const { cos, sin } = ropeTables(ropeInvFreq(c), Array.from({ length: T }, (_, i) => i));

  const embed = get(w, 'model.embed_tokens.weight'); // [vocab, H]
  let x = new Float64Array(T * H); // [T, H]
  for (let t = 0; t < T; t++) for (let i = 0; i < H; i++) x[t * H + i] = embed[tokens[t] * H + i];

  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    const bias = (n: string) => (c.attentionBias ? get(w, `${p}.self_attn.${n}.bias`) : undefined);
    const n1 = rmsNormRef(x, T, get(w, `${p}.input_layernorm.weight`), eps);
    const q = linearRef(n1, T, get(w, `${p}.self_attn.q_proj.weight`), nH * D, H, bias('q_proj')); // [T, nH, D]
    const k = linearRef(n1, T, get(w, `${p}.self_attn.k_proj.weight`), nKv * D, H, bias('k_proj')); // [T, nKv, D]
    const v = linearRef(n1, T, get(w, `${p}.self_attn.v_proj.weight`), nKv * D, H, bias('v_proj')); // [T, nKv, D]
    ropeRef(q, T, nH, D, cos, sin);
    ropeRef(k, T, nKv, D, cos, sin);
    const attn = causalAttentionRef(q, k, v, T, nH, nKv, D); // [T, nH * D]
    const o = linearRef(attn, T, get(w, `${p}.self_attn.o_proj.weight`), H, nH * D);
    for (let i = 0; i < x.length; i++) o[i] += x[i];
    x = o; // [T, H]

    const n2 = rmsNormRef(x, T, get(w, `${p}.post_attention_layernorm.weight`), eps);
    const gate = linearRef(n2, T, get(w, `${p}.mlp.gate_proj.weight`), I, H);
    const up = linearRef(n2, T, get(w, `${p}.mlp.up_proj.weight`), I, H);
    for (let i = 0; i < gate.length; i++) gate[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i]; // silu(gate) * up
    const down = linearRef(gate, T, get(w, `${p}.mlp.down_proj.weight`), H, I);
    for (let i = 0; i < x.length; i++) x[i] += down[i];
  }

  const n = rmsNormRef(x, T, get(w, 'model.norm.weight'), eps);
  const head = get(w, c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
  return linearRef(n, T, head, c.vocabSize, H);
}
