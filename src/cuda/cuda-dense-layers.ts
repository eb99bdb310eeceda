// The CUDA backend's dense layers: bf16 weights on the device, f32 activations, kvoff's kernels on one stream.
// Host tensors go in and come out per call (DenseLayers' contract), so every attention policy runs unchanged.
import { KvoffArgumentError } from '../errors.js';
import type { DenseLayers, QKV } from '../model/dense-layers.js';
import type { ModelConfig } from '../model/types.js';
import { native, type DevRef } from '../native.js';
import { DeviceArena } from './device-arena.js';
import { LayerKernels, activationLayout, qkvWidth } from './layer-kernels.js';

const asF32 = (b: Uint8Array): Float32Array => new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);

export class CudaDenseLayers implements DenseLayers {
  readonly backend = 'cuda' as const;
  readonly #kernels: LayerKernels;
  #scratch: DeviceArena | null = null;
  #rows = 0;
  #onDevice: Float32Array | null = null; // the host array whose rows 'x' holds: the engine passes the same hidden to pre and post

  constructor(
    readonly config: ModelConfig,
    readonly weights: DeviceArena, // weightLayout(config), see cuda-weights.ts
    readonly stream = 0,
  ) {
    this.#kernels = new LayerKernels(config, weights, stream);
  }

  /** Scratch for at least T rows; grows (after the stream drains) when a longer chunk arrives. */
  async #buffers(T: number): Promise<DeviceArena> {
    if (this.#scratch && T <= this.#rows) return this.#scratch;
    if (this.#scratch) {
      await native().cudaStreamSynchronize({ stream: this.stream });
      this.#scratch.free();
      this.#scratch = null;
      this.#onDevice = null;
    }
    const rows = Math.max(T, this.#rows * 2, 8);
    this.#scratch = DeviceArena.create(activationLayout(this.config, rows));
    this.#rows = rows;
    return this.#scratch;
  }

  #upload(dst: DevRef, data: Float32Array): void {
    native().cudaUpload({ dst, data, stream: this.stream });
  }

  async #download(src: DevRef, floats: number): Promise<Float32Array> {
    return asF32(await native().cudaDownload({ src, bytes: floats * 4, stream: this.stream }));
  }

  async preAttention(layer: number, hidden: Float32Array, cos: Float32Array, sin: Float32Array): Promise<QKV> {
    const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D } = this.config;
    const T = hidden.length / H;
    const s = await this.#buffers(T);
    const width = qkvWidth(this.config);
    this.#upload(s.ref('x'), hidden);
    this.#onDevice = hidden;
    this.#upload(s.ref('cos'), cos);
    this.#upload(s.ref('sin'), sin);
    this.#kernels.pre(s, layer, T);
    const all = await this.#download(s.ref('qkv'), T * width); // [T, width]
    const q = new Float32Array(T * nH * D);
    const k = new Float32Array(T * nKv * D);
    const v = new Float32Array(T * nKv * D);
    for (let t = 0; t < T; t++) {
      const row = all.subarray(t * width, (t + 1) * width);
      q.set(row.subarray(0, nH * D), t * nH * D);
      k.set(row.subarray(nH * D, (nH + nKv) * D), t * nKv * D);
      v.set(row.subarray((nH + nKv) * D), t * nKv * D);
    }
    return { q, k, v };
  }

  async postAttention(layer: number, attn: Float32Array, residual: Float32Array): Promise<Float32Array> {
    const { hiddenSize: H, numHeads: nH, headDim: D } = this.config;
    const T = residual.length / H;
    if (attn.length !== T * nH * D) throw new KvoffArgumentError('attn', `${T * nH * D} floats ([${T}, ${nH * D}])`, attn.length);
    const s = await this.#buffers(T);
    if (residual !== this.#onDevice) this.#upload(s.ref('x'), residual); // else 'x' holds it since preAttention
    this.#onDevice = null; // 'x' becomes the layer's output
    this.#upload(s.ref('attn'), attn);
    this.#kernels.post(s, layer, T);
    return (await this.#download(s.ref('x'), T * H)).slice();
  }

  async final(hidden: Float32Array): Promise<Float32Array> {
    const T = hidden.length / this.config.hiddenSize;
    const s = await this.#buffers(T);
    this.#upload(s.ref('x'), hidden);
    this.#onDevice = null;
    this.#kernels.head(s, T);
    return (await this.#download(s.ref('logits'), T * this.config.vocabSize)).slice();
  }

  async dispose(): Promise<void> {
    if (!this.weights.live) return;
    await native().cudaStreamSynchronize({ stream: this.stream }).catch(() => {});
    this.#scratch?.free();
    this.#scratch = null;
    this.weights.free();
  }
}
