// Rotary position embeddings: inverse frequencies (default, linear, llama3) and cos/sin tables, as Hugging Face computes them.
import type { ModelConfig, RopeScaling } from './types.js';

const f = Math.fround;

/** What RoPE needs from the config. */
export type RopeParams = Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>;

/**
 * inv_freq [headDim / 2], float32 like transformers' `ROPE_INIT_FUNCTIONS[rope_type]`.
 * Every step is rounded to float32 as torch does (`scalar / tensor` is `tensor.reciprocal() * scalar` in torch),
 * so the values agree with HF's to about an ulp (libm pow differs) and a comparison against PyTorch tests
 * the model, not the rounding.
 */
export function ropeInvFreq(p: RopeParams): Float32Array {
  const dim = p.headDim;
  if (!Number.isInteger(dim) || dim < 2 || dim % 2 !== 0) {
    throw new RangeError(`Expected an even headDim >= 2 for RoPE but received ${dim}`);
  }
  const base = p.ropeTheta;
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    // _compute_default_rope_parameters: 1.0 / (base ** (arange(0, dim, 2).float() / dim))
    const exponent = f(f(2 * i) / dim);
    out[i] = f(1 / f(Math.pow(base, exponent))); // reciprocal(...) * 1.0
  }
  return applyScaling(out, p.ropeScaling);
}

function applyScaling(invFreq: Float32Array, s: RopeScaling | null): Float32Array {
  if (s === null) return invFreq;
  if (s.type === 'linear') {
    // _compute_linear_scaling_rope_parameters: dividing inv_freq by factor == dividing positions by factor.
    for (let i = 0; i < invFreq.length; i++) invFreq[i] = f(invFreq[i] / s.factor);
    return invFreq;
  }
  return llama3(invFreq, s);
}

/** _compute_llama3_parameters: keep high frequencies, divide low ones by factor, interpolate smoothly between. */
function llama3(invFreq: Float32Array, s: Extract<RopeScaling, { type: 'llama3' }>): Float32Array {
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: oldLen } = s;
  const lowFreqWavelen = oldLen / lowFreqFactor; // python floats: double
  const highFreqWavelen = oldLen / highFreqFactor;
  const twoPi = f(2 * Math.PI);
  for (let i = 0; i < invFreq.length; i++) {
    const inv = invFreq[i];
    const wavelen = f(f(1 / inv) * twoPi); // 2 * math.pi / inv_freq
    // torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    const scaled = wavelen > lowFreqWavelen ? f(inv / factor) : inv;
    const isMedium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
    if (!isMedium) {
      invFreq[i] = scaled;
      continue;
    }
    // smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    const smooth = f(f(f(f(1 / wavelen) * oldLen) - lowFreqFactor) / (highFreqFactor - lowFreqFactor));
    // smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama (left to right, as torch evaluates it)
    invFreq[i] = f(f(f(f(1 - smooth) * scaled) / factor) + f(smooth * scaled));
  }
  return invFreq;
}

/** cos, sin: [T, headDim] for the given positions; both halves repeat the same frequencies (HF's rotate_half layout). */
export interface RopeTables {
  cos: Float32Array; // [T, headDim]
  sin: Float32Array; // [T, headDim]
}

/**
 * LlamaRotaryEmbedding.forward: freqs = float32(pos * inv_freq), emb = cat(freqs, freqs), cos/sin in float32.
 * attention_scaling is 1 for default, linear and llama3, so it is left out.
 */
export function ropeTables(invFreq: Float32Array, positions: ArrayLike<number>): RopeTables {
  const half = invFreq.length;
  const dim = 2 * half;
  const T = positions.length;
  const cos = new Float32Array(T * dim);
  const sin = new Float32Array(T * dim);
  for (let t = 0; t < T; t++) {
    const pos = f(positions[t]);
    const row = t * dim;
    for (let j = 0; j < half; j++) {
      const angle = f(pos * invFreq[j]);
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      cos[row + j] = c;
      cos[row + half + j] = c;
      sin[row + j] = s;
      sin[row + half + j] = s;
    }
  }
  return { cos, sin };
}

/** Positions start, start + 1, …, start + T - 1. */
export function positionRange(start: number, T: number): Int32Array {
  return Int32Array.from({ length: T }, (_, i) => start + i);
}
