// Prefill for the device-resident step, layer by layer over the whole prompt: only one layer's KV is ever staged on
// the device, so a prompt whose KV does not fit there still prefills on the GPU (tensor-core GEMMs, flash attention
// that never holds a score matrix). Each layer's KV goes home as it is made (the pinned host cache, or dense's own
// device arena) and is handed to the policy (low-bit copy, sinks, window, first top-k).
import { positionRange, ropeTables } from '../model/rope.js';
import type { ModelConfig } from '../model/types.js';
import { native, type DevRef } from '../native.js';
import { DeviceArena, DeviceLayout } from './device-arena.js';
import { LayerKernels, activationLayout, qkvWidth } from './layer-kernels.js';
import type { ResidentAttention } from './resident-attention.js';

export interface ResidentPrefillOptions {
  chunk: number; // prompt rows per kernel pass (bounds the activations: [chunk, 2 * intermediate] f32 is the largest)
  dtype: 'bf16' | 'f16'; // KV storage
  stream: number;
  signal?: AbortSignal;
  onLayer?: (done: number, total: number) => void; // after each layer, once the GPU has finished it
}

function prefillLayout(c: ModelConfig, T: number, chunk: number, staged: boolean): DeviceLayout {
  const layout = new DeviceLayout()
    .add('hidden', T * c.hiddenSize * 4) // [T, H] f32: the residual stream of the whole prompt between layers
    .add('cos', T * c.headDim * 4) // [T, D]
    .add('sin', T * c.headDim * 4)
    .add('lse', chunk * c.numHeads * 4); // [chunk, nH] (prefill attention writes it; nothing reads it)
  if (staged) layout.add('stage', c.numKvHeads * T * 2 * c.headDim * 2); // [Hkv, T, 2, D] 16-bit: one layer's KV
  return layout;
}

/**
 * Runs `tokens` (positions 0 .. T-1) through every layer on `stream`, leaving each layer's KV with `attention`, and
 * resolves with the logits [vocab] of the last token.
 */
export async function prefillResident(
  c: ModelConfig, weights: DeviceArena, attention: ResidentAttention, tokens: Int32Array, invFreq: Float32Array, o: ResidentPrefillOptions,
): Promise<Float32Array> {
  const T = tokens.length;
  const C = Math.min(o.chunk, T);
  const { stream, dtype } = o;
  const staged = attention.prefillKv === undefined;
  const p = DeviceArena.create(prefillLayout(c, T, C, staged));
  let a: DeviceArena | null = null;
  try {
    a = DeviceArena.create(activationLayout(c, C, 1));
    const kernels = new LayerKernels(c, weights, stream);
    const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D } = c;
    const width = qkvWidth(c);
    native().cudaEmbed({ table: weights.ref('embed'), vocab: c.vocabSize, hidden: H, ids: tokens, out: p.ref('hidden'), stream });
    const { cos, sin } = ropeTables(invFreq, positionRange(0, T));
    native().cudaUpload({ dst: p.ref('cos'), data: cos, stream });
    native().cudaUpload({ dst: p.ref('sin'), data: sin, stream });
    const rowCopy = (src: DevRef, dst: DevRef, bytes: number) => native().cudaCopyD2D({ src, dst, bytes, stream });
    for (let l = 0; l < c.numLayers; l++) {
      o.signal?.throwIfAborted();
      const home = attention.prefillKv?.(l) ?? { kv: p.ref('stage'), capacity: T };
      let last = 0; // rows in the last chunk: its last row's q selects specache's first hot set
      for (let s = 0; s < T; s += C) {
        const rows = Math.min(C, T - s);
        rowCopy(p.ref('hidden', s * H * 4), a.ref('x'), rows * H * 4);
        rowCopy(p.ref('cos', s * D * 4), a.ref('cos'), rows * D * 4);
        rowCopy(p.ref('sin', s * D * 4), a.ref('sin'), rows * D * 4);
        kernels.pre(a, l, rows);
        const kv = { k: a.ref('qkv', nH * D * 4), v: a.ref('qkv', (nH + nKv) * D * 4), srcRowStride: width, tokens: rows, numKvHeads: nKv, headDim: D, dtype, stream };
        native().cudaKvWrite({ ...kv, dst: home.kv, capacity: home.capacity, slot: s });
        if (attention.host) native().cudaKvStoreHost({ ...kv, ...attention.host.region(l), blockIds: attention.host.blockIds, start: s });
        native().cudaAttendPrefill({
          kv: home.kv, capacity: home.capacity, numKvHeads: nKv, headDim: D, dtype, groupSize: nH / nKv,
          q: a.ref('qkv'), qRowStride: width, T: rows, start: s, scale: 1 / Math.sqrt(D), out: a.ref('attn'), lse: p.ref('lse'), stream,
        });
        kernels.post(a, l, rows);
        rowCopy(a.ref('x'), p.ref('hidden', s * H * 4), rows * H * 4);
        last = rows;
      }
      attention.load(l, { kv: (off) => ({ ...home.kv, devOffset: home.kv.devOffset + off }), n: T, capacity: home.capacity }, a.ref('qkv', (last - 1) * width * 4));
      // One wait a layer: the host never runs more than a layer ahead (the launch queue stays short, an abort lands
      // within a layer) and the event loop stays free.
      await native().cudaStreamSynchronize({ stream });
      o.onLayer?.(l + 1, c.numLayers);
    }
    rowCopy(p.ref('hidden', (T - 1) * H * 4), a.ref('x'), H * 4);
    kernels.head(a, 1);
    const b = await native().cudaDownload({ src: a.ref('logits'), bytes: c.vocabSize * 4, stream });
    return new Float32Array(b.buffer, b.byteOffset, c.vocabSize).slice();
  } finally {
    // Freed once the enqueued work is done (an abort may leave some in flight): the arenas outlive their last use.
    a?.free();
    p.free();
  }
}
