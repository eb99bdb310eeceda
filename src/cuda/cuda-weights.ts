// A decoder's weights in one device arena as bf16, the projections fused where they share an input (q|k|v, gate|up).
import { KvoffError } from '../errors.js';
import { f16ToF32, f32ToBf16 } from '../kernels/half.js';
import { layerWeightNames } from '../model/onnx/builder.js';
import { tensorElements, toFloat32 } from '../model/tensor.js';
import type { ModelConfig, RawTensor, WeightMap } from '../model/types.js';
import { native } from '../native.js';
import { DeviceArena, DeviceLayout } from './device-arena.js';

/** Buffer names in the weights arena: `${layer}.${part}`, and the final norm and lm_head. */
export type LayerPart = 'inNorm' | 'qkv' | 'o' | 'postNorm' | 'gateUp' | 'down';

/** Rows and columns of each part ([out, in], HF layout), bf16. */
export function layerPartShapes(c: ModelConfig): Record<LayerPart, [number, number]> {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D, intermediateSize: I } = c;
  return { inNorm: [1, H], qkv: [(nH + 2 * nKv) * D, H], o: [H, nH * D], postNorm: [1, H], gateUp: [2 * I, H], down: [H, I] };
}

export function weightLayout(c: ModelConfig): DeviceLayout {
  const layout = new DeviceLayout();
  const shapes = layerPartShapes(c);
  for (let l = 0; l < c.numLayers; l++) {
    for (const [part, [r, k]] of Object.entries(shapes)) layout.add(`${l}.${part}`, r * k * 2);
    if (c.attentionBias) layout.add(`${l}.qkvBias`, shapes.qkv[0] * 4); // [(nH + 2 nKv) D] f32: q | k | v biases, kept exact
  }
  layout.add('embed', c.vocabSize * c.hiddenSize * 2);
  layout.add('norm', c.hiddenSize * 2);
  layout.add('lmHead', c.vocabSize * c.hiddenSize * 2);
  return layout;
}

/** A stored tensor as bf16 bits: bf16 as is, f32 and f16 rounded to nearest even. */
export function toBf16(t: RawTensor): Uint16Array {
  const n = tensorElements(t.shape);
  if (t.dtype === 'bf16') return new Uint16Array(new Uint8Array(t.data).buffer, 0, n);
  const out = new Uint16Array(n);
  if (t.dtype === 'f32') {
    const src = new Float32Array(new Uint8Array(t.data).buffer, 0, n);
    for (let i = 0; i < n; i++) out[i] = f32ToBf16(src[i]);
  } else {
    const src = new Uint16Array(new Uint8Array(t.data).buffer, 0, n);
    for (let i = 0; i < n; i++) out[i] = f32ToBf16(f16ToF32(src[i]));
  }
  return out;
}

/** Uploads every weight of the model (synchronous copies at load time, before any kernel runs). */
export function uploadWeights(c: ModelConfig, weights: WeightMap, onLayer?: (done: number, total: number) => void): DeviceArena {
  const arena = DeviceArena.create(weightLayout(c));
  try {
    const get = (name: string): Uint16Array => {
      const t = weights.get(name);
      if (!t) throw new KvoffError('KVOFF_E_MODEL_FORMAT', `Expected tensor ${name} but it is missing`);
      return toBf16(t);
    };
    const write = (name: string, parts: Array<Uint16Array | Float32Array>): void => {
      let at = 0;
      for (const p of parts) {
        native().cudaArenaWrite({ handle: arena.handle, offset: arena.ref(name).devOffset + at, data: new Uint8Array(p.buffer, p.byteOffset, p.byteLength) });
        at += p.byteLength;
      }
    };
    for (let l = 0; l < c.numLayers; l++) {
      const n = layerWeightNames(l);
      write(`${l}.inNorm`, [get(n.inputLayernorm)]);
      write(`${l}.qkv`, [get(n.qProj), get(n.kProj), get(n.vProj)]); // rows: q, then k, then v
      if (c.attentionBias) {
        const bias = (name: string): Float32Array => {
          const t = weights.get(name);
          if (!t) throw new KvoffError('KVOFF_E_MODEL_FORMAT', `Expected tensor ${name} but it is missing`);
          return toFloat32(t);
        };
        write(`${l}.qkvBias`, [bias(n.qBias), bias(n.kBias), bias(n.vBias)]);
      }
      write(`${l}.o`, [get(n.oProj)]);
      write(`${l}.postNorm`, [get(n.postAttentionLayernorm)]);
      write(`${l}.gateUp`, [get(n.gateProj), get(n.upProj)]); // rows: gate, then up (cudaSwiGlu's order)
      write(`${l}.down`, [get(n.downProj)]);
      onLayer?.(l + 1, c.numLayers + 1);
    }
    write('embed', [get('model.embed_tokens.weight')]);
    write('norm', [get('model.norm.weight')]);
    write('lmHead', [get(c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight')]);
    onLayer?.(c.numLayers + 1, c.numLayers + 1);
    return arena;
  } catch (err) {
    arena.free();
    throw err;
  }
}

/**
 * Random bf16 weights made on the device (no host traffic: an 8B model is 16 GB), uniform in +-sqrt(3 / fan_in) so
 * every projection keeps unit variance; norms are ones.
 */
export function randomDeviceWeights(c: ModelConfig, seed: number, stream = 0): DeviceArena {
  const arena = DeviceArena.create(weightLayout(c));
  const ones = new Uint16Array(c.hiddenSize).fill(0x3f80); // bf16 1.0
  let i = 0;
  for (const [name, { bytes }] of arena.layout) {
    const dst = arena.ref(name);
    if (name.endsWith('Norm') || name === 'norm') {
      native().cudaUpload({ dst, data: ones, stream });
      continue;
    }
    if (name.endsWith('qkvBias')) {
      native().cudaFillRandom({ dst, count: bytes / 4, dtype: 'f32', seed: seed * 1000 + i++, scale: 0.5, stream });
      continue;
    }
    const fanIn = name === 'embed' ? 3 : name.endsWith('.down') ? c.intermediateSize : name.endsWith('.o') ? c.numHeads * c.headDim : c.hiddenSize;
    native().cudaFillRandom({ dst, count: bytes / 2, dtype: 'bf16', seed: seed * 1000 + i++, scale: Math.sqrt(3 / fanIn), stream });
  }
  return arena;
}
