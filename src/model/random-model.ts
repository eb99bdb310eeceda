// Random-weight Hugging Face model directories (config.json + safetensors), for tests and for `kvoff bench --shape`.
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededRandom } from '../engine/sampling.js';
import { parseModelConfig } from './config.js';
import { requiredTensors } from './load-dir.js';
import { DTYPE_BYTES, writeSafetensors } from './safetensors.js';
import type { ModelConfig, RawTensor } from './types.js';

export interface RandomModelOptions {
  /** f32: normal values from one seeded stream (tests' reference forward); bf16: fast uniform values (benchmarks). */
  dtype?: 'f32' | 'bf16'; // default bf16
  seed?: number; // default 1234
  dir?: string; // default: a new temp dir
  /** Return the f32 weights by HF name (f32 only; lm_head aliases the embedding when tied). */
  keepF32?: boolean;
  /** Shards above this many bytes split into model-0000i-of-0000n.safetensors plus an index. */
  shardBytes?: number; // default 1 GiB: one shard is built in memory, twice (tensors + serialized file)
  onProgress?: (done: number, total: number) => void; // tensors written
}

export interface RandomModel {
  dir: string;
  config: ModelConfig;
  weights: Map<string, Float32Array> | null; // only with keepF32
  bytes: number; // of all tensors on disk
}

/** n normal values (Box-Muller) times `scale`, drawn from `r`. */
export function randn(n: number, r: () => number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12);
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r()) * scale;
  }
  return out;
}

/** Tensors a config implies, in load order; a tied lm_head is not stored. */
export function storedTensors(c: ModelConfig): Array<[string, number[]]> {
  return requiredTensors(c).filter(([name]) => !(name === 'lm_head.weight' && c.tieWordEmbeddings));
}

/** Parameters stored on disk (what the weights of a shape cost, before any dtype). */
export function parameterCount(c: ModelConfig): number {
  return storedTensors(c).reduce((n, [, shape]) => n + shape.reduce((a, b) => a * b, 1), 0);
}

// Norm weights sit around 1 so activations keep their scale; projections get std 1/sqrt(fan-in) so they stay O(1)
// through the layers.
const isNorm = (name: string) => name.endsWith('norm.weight');
const stdOf = (name: string, shape: number[]) => (isNorm(name) ? 0.1 : 1 / Math.sqrt(shape[shape.length - 1]));

/**
 * bf16 values, uniform with standard deviation `std` around `center`. Billions of values make Box-Muller's log
 * and cos the cost of a benchmark shape; a uniform of the same std keeps activations just as tame. xorshift32,
 * seeded per tensor, so tensors need no shared stream.
 */
function uniformBf16(n: number, center: number, std: number, seed: number): Uint16Array {
  const out = new Uint16Array(n); // [n] bf16 bits
  const a = std * Math.sqrt(3);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let s = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    f[0] = center + a * ((s >>> 0) / 2147483648 - 1);
    const bits = u[0];
    out[i] = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16; // round to nearest even: bf16 is f32's top half
  }
  return out;
}

function tensorSeed(seed: number, index: number): number {
  return (Math.imul(seed ^ 0x5bd1e995, 0x01000193) + Math.imul(index + 1, 0x9e3779b1)) >>> 0;
}

/**
 * Writes `configJson` and random weights of the shapes it implies. Shards are generated one at a time, so a
 * shape of many GB never sits in memory whole.
 */
export async function writeRandomModel(configJson: Record<string, unknown>, opts: RandomModelOptions = {}): Promise<RandomModel> {
  const dtype = opts.dtype ?? 'bf16';
  const seed = opts.seed ?? 1234;
  const config = parseModelConfig(configJson, 'random model config.json');
  const list = storedTensors(config);
  const keep = opts.keepF32 && dtype === 'f32' ? new Map<string, Float32Array>() : null;
  const r = seededRandom(seed); // the f32 stream: one sequence over all tensors, in load order
  const make = (name: string, shape: number[], index: number): RawTensor => {
    const n = shape.reduce((a, b) => a * b, 1);
    if (dtype === 'bf16') {
      const bits = uniformBf16(n, isNorm(name) ? 1 : 0, stdOf(name, shape), tensorSeed(seed, index));
      return { dtype, shape, data: new Uint8Array(bits.buffer) };
    }
    const data = isNorm(name) ? Float32Array.from(randn(n, r, 0.1), (x) => 1 + x) : randn(n, r, stdOf(name, shape));
    keep?.set(name, data);
    return { dtype, shape, data: new Uint8Array(data.buffer) };
  };

  // Consecutive tensors, up to shardBytes per shard; a larger tensor gets a shard of its own.
  const limit = opts.shardBytes ?? 2 ** 30;
  const shards: number[][] = [[]];
  let inShard = 0;
  let bytes = 0;
  list.forEach(([, shape], i) => {
    const b = shape.reduce((a, c) => a * c, 1) * DTYPE_BYTES[dtype];
    if (inShard > 0 && inShard + b > limit) {
      shards.push([]);
      inShard = 0;
    }
    shards[shards.length - 1].push(i);
    inShard += b;
    bytes += b;
  });

  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'kvoff-random-')));
  await writeFile(join(dir, 'config.json'), JSON.stringify(configJson, null, 2));
  const pad = (k: number) => String(k).padStart(5, '0');
  const fileOf = (s: number) => (shards.length === 1 ? 'model.safetensors' : `model-${pad(s + 1)}-of-${pad(shards.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  let done = 0;
  for (let s = 0; s < shards.length; s++) {
    const tensors = new Map<string, RawTensor>();
    for (const i of shards[s]) {
      const [name, shape] = list[i];
      tensors.set(name, make(name, shape, i));
      weightMap[name] = fileOf(s);
      opts.onProgress?.(++done, list.length);
    }
    await writeFile(join(dir, fileOf(s)), writeSafetensors(tensors));
  }
  if (shards.length > 1) {
    await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: bytes }, weight_map: weightMap }, null, 2));
  }
  if (keep && config.tieWordEmbeddings) keep.set('lm_head.weight', keep.get('model.embed_tokens.weight')!);
  return { dir, config, weights: keep, bytes };
}
