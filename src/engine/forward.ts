// One forward pass of T new tokens of one sequence: dense graphs on ORT, kvoff's own attention in between.
import { performance } from 'node:perf_hooks';
import type { CpuAttentionPool } from '../cpu-attention.js';
import type { Model } from '../model/model.js';
import { embedTokens } from '../model/onnx/builder.js';
import { runFinal, runPostAttention, runPreAttention } from '../model/onnx/session.js';
import { positionRange, ropeTables } from '../model/rope.js';
import type { RunKv } from './run-kv.js';
import type { EngineStats } from './stats.js';

export interface ForwardContext {
  model: Model;
  kv: RunKv;
  pool: CpuAttentionPool;
  stats: EngineStats;
  signal?: AbortSignal;
}

/**
 * Appends `tokens` at positions [start, start + T) of `seq` and returns the logits [vocab] of the last one.
 * Attention of query t covers positions [0, start + t]: causal, exact, over the paged host cache.
 */
export async function forward(ctx: ForwardContext, seq: number, tokens: Int32Array, start: number): Promise<Float32Array> {
  const { model, kv, pool, stats, signal } = ctx;
  const cache = kv.cache;
  const c = model.config;
  const T = tokens.length;
  const G = c.numHeads / c.numKvHeads;
  const rowQ = c.numHeads * c.headDim;
  const kvHeads = Int32Array.from({ length: c.numKvHeads }, (_, h) => h);
  const scale = 1 / Math.sqrt(c.headDim);
  let hidden = embedTokens(c, model.embed, tokens); // [T, hidden]
  const { cos, sin } = ropeTables(model.invFreq, positionRange(start, T)); // [T, headDim] each
  const slots = cache.reserve(seq, T);
  for (let l = 0; l < c.numLayers; l++) {
    signal?.throwIfAborted();
    let t0 = performance.now();
    const { q, k, v } = await runPreAttention(model.runner, c, l, hidden, cos, sin); // q [T, numHeads, headDim]
    stats.deviceMs += performance.now() - t0;
    cache.write(l, slots, k, v);
    t0 = performance.now();
    const attn = new Float32Array(T * rowQ); // [T, numHeads * headDim]; head h = kvHead * G + g, as in HF's repeat_kv
    const lse = new Float32Array(T * c.numHeads);
    const c0 = performance.now();
    const { region, blockIds, bytesCopied } = kv.attentionSource(l, seq);
    if (bytesCopied > 0) {
      stats.bytesH2D += bytesCopied;
      stats.copyMs += performance.now() - c0;
    }
    const base = { region, blockIds, kvHeads, groupSize: G, scale };
    if (T === 1) await pool.attend({ ...base, numTokens: start + 1, q, out: attn, lse }, { signal });
    else await pool.attendCausal({ ...base, start, q, out: attn, lse }, { signal });
    stats.cpuAttnMs += performance.now() - t0;
    t0 = performance.now();
    hidden = await runPostAttention(model.runner, c, l, attn, hidden);
    stats.deviceMs += performance.now() - t0;
  }
  const t0 = performance.now();
  const logits = await runFinal(model.runner, c, hidden.slice((T - 1) * c.hiddenSize)); // only the last row is sampled
  stats.deviceMs += performance.now() - t0;
  return logits;
}
