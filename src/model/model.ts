// A loaded model: config, tokenizer, f32 embedding, and its dense layers on the CPU backend (ONNX graphs) or the CUDA one.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KvoffDisposedError, KvoffError } from '../errors.js';
import { native } from '../native.js';
import { loadModelDir } from './load-dir.js';
import { buildFinalGraph, buildPostAttentionGraph, buildPreAttentionGraph, pickFinalWeights, pickLayerWeights } from './onnx/builder.js';
import { CudaDenseLayers } from '../cuda/cuda-dense-layers.js';
import { randomDeviceWeights, uploadWeights } from '../cuda/cuda-weights.js';
import { ortDenseLayers, type DenseLayers } from './dense-layers.js';
import { createRunner, graphNames, type DenseRunner } from './onnx/session.js';
import { ropeInvFreq } from './rope.js';
import { toFloat32 } from './tensor.js';
import { loadTokenizer, type KvoffTokenizer } from './tokenizer.js';
import type { ModelConfig } from './types.js';

export type BackendName = 'auto' | 'cpu' | 'cuda';

export interface LoadModelOptions {
  backend?: BackendName;
  /** onnxruntime intra-op threads per graph run (default: onnxruntime's choice). */
  denseThreads?: number;
  /** Run the dense graphs on the calling thread (tests); default is a worker thread, see onnx/session.ts. */
  inlineDense?: boolean;
  onProgress?: (stage: string, done: number, total: number) => void;
}

/** A backend was asked for that cannot be had; never a silent fallback. */
export class KvoffBackendError extends KvoffError {
  constructor(asked: string, why: string) {
    super('KVOFF_E_BACKEND', `Expected a usable backend for --backend but received "${asked}": ${why}`);
  }
}

const here = dirname(fileURLToPath(import.meta.url));

/** The embedded demo model's directory, from src/model (tests) or dist/src/model (built package). */
export function demoModelDir(): string {
  for (const p of [join(here, '..', 'demo-model'), join(here, '..', '..', '..', 'src', 'demo-model')]) {
    if (existsSync(join(p, 'config.json'))) return p;
  }
  throw new KvoffError('KVOFF_E_MODEL_NOT_FOUND', `Expected the embedded demo model at ${join(here, '..', 'demo-model')} but it is missing; reinstall kvoff or pass --model DIR`);
}

/** 'auto' is CUDA where a GPU is usable (as `kvoff doctor` reports it), else the CPU; 'cuda' without one is an error. */
export function resolveBackend(asked: BackendName = 'auto'): 'cpu' | 'cuda' {
  if (asked === 'cpu') return 'cpu';
  const cuda = native().buildInfo().cuda;
  if (cuda.deviceCount > 0) return 'cuda';
  if (asked === 'auto') return 'cpu';
  throw new KvoffBackendError(asked, cuda.reason);
}

export class Model {
  #live = true;
  private constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly tokenizer: KvoffTokenizer | null,
    readonly backend: 'cpu' | 'cuda',
    readonly embed: Float32Array, // [vocab, hidden]
    readonly invFreq: Float32Array, // [headDim / 2]
    readonly weightBytes: number, // as stored; on CUDA the device holds them as bf16, outside the KV budget
    readonly dense: DenseLayers,
    private readonly ortRunner: DenseRunner | null,
  ) {}

  /** The onnxruntime runner of the CPU backend (tests and tools that run single graphs). */
  get runner(): DenseRunner {
    if (this.ortRunner === null) throw new KvoffBackendError(this.backend, 'this model runs on CUDA; its onnxruntime graphs were never built');
    return this.ortRunner;
  }

  static async load(pathOrDemo: string | undefined, opts: LoadModelOptions = {}): Promise<Model> {
    const backend = resolveBackend(opts.backend);
    const dir = pathOrDemo === undefined || pathOrDemo === 'demo' ? demoModelDir() : pathOrDemo;
    const progress = opts.onProgress ?? (() => {});
    const loaded = await loadModelDir(dir);
    const { config, weights } = loaded;
    const tokenizer = loaded.tokenizerJson ? loadTokenizer(loaded.tokenizerJson, loaded.tokenizerConfig, join(loaded.dir, 'tokenizer.json')) : null;
    let weightBytes = 0;
    for (const t of new Set(weights.values())) weightBytes += t.data.byteLength;
    const get = (name: string): Float32Array => {
      const t = weights.get(name);
      if (!t) throw new KvoffError('KVOFF_E_MODEL_FORMAT', `Expected tensor ${name} in ${loaded.dir} but it is missing`);
      return toFloat32(t);
    };
    const embed = get('model.embed_tokens.weight');
    if (backend === 'cuda') {
      const onDevice = uploadWeights(config, weights, (d, t) => progress('load', d, t));
      try {
        return new Model(loaded.dir, config, tokenizer, backend, embed, ropeInvFreq(config), weightBytes, new CudaDenseLayers(config, onDevice), null);
      } catch (err) {
        onDevice.free();
        throw err;
      }
    }
    const runner = createRunner({ offMainThread: !opts.inlineDense, intraOpNumThreads: opts.denseThreads });
    try {
      const total = config.numLayers + 1;
      for (let l = 0; l < config.numLayers; l++) {
        const w = pickLayerWeights(config, l, get);
        await runner.load(graphNames.pre(l), buildPreAttentionGraph(config, l, w), { transfer: true });
        await runner.load(graphNames.post(l), buildPostAttentionGraph(config, l, w), { transfer: true });
        progress('load', l + 1, total);
      }
      await runner.load(graphNames.final, buildFinalGraph(config, pickFinalWeights(config, get)), { transfer: true });
      progress('load', total, total);
      return new Model(loaded.dir, config, tokenizer, backend, embed, ropeInvFreq(config), weightBytes, ortDenseLayers(runner, config), runner);
    } catch (err) {
      await runner.dispose();
      throw err;
    }
  }

  /**
   * A model of `config` with random bf16 weights made on the GPU, for benches of large shapes: nothing goes through
   * disk or host memory but the embedding table, which the host-side path reads (widened to f32).
   */
  static async randomOnDevice(config: ModelConfig, seed = 1): Promise<Model> {
    resolveBackend('cuda'); // throws, saying why, without a usable GPU
    const weights = randomDeviceWeights(config, seed);
    try {
      const { vocabSize: V, hiddenSize: H } = config;
      const b = await native().cudaDownload({ src: weights.ref('embed'), bytes: V * H * 2, stream: 0 });
      const bits = new Uint16Array(b.buffer, b.byteOffset, V * H);
      const embed = new Float32Array(V * H); // [vocab, hidden]
      const wide = new Uint32Array(embed.buffer); // bf16 is the top half of an f32: widening is a shift
      for (let i = 0; i < wide.length; i++) wide[i] = bits[i] << 16;
      return new Model('', config, null, 'cuda', embed, ropeInvFreq(config), weights.bytes, new CudaDenseLayers(config, weights), null);
    } catch (err) {
      weights.free();
      throw err;
    }
  }

  get live(): boolean {
    return this.#live;
  }

  check(): void {
    if (!this.#live) throw new KvoffDisposedError('Model');
  }

  async dispose(): Promise<void> {
    if (!this.#live) return;
    this.#live = false;
    await this.dense.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

export function loadModel(pathOrDemo?: string, opts?: LoadModelOptions): Promise<Model> {
  return Model.load(pathOrDemo, opts);
}
