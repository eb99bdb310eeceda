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
  const { model, kv, stats, signal } = ctx;
  const cache = kv.cache;
  const c = model.config;
  const T = tokens.length;
  const rowQ = c.numHeads * c.headDim;
  let hidden = embedTokens(c, model.embed, tokens); // [T, hidden]
  const { cos, sin } = ropeTables(model.invFreq, positionRange(start, T)); // [T, headDim] each
  const slots = cache.reserve(seq, T);
  for (let l = 0; l < c.numLayers; l++) {
    signal?.throwIfAborted();
    let t0 = performance.now();
    const { q, k, v } = await runPreAttention(model.runner, c, l, hidden, cos, sin); // q [T, numHeads, headDim]
    stats.deviceMs += performance.now() - t0;
    cache.write(l, slots, k, v);
    kv.split?.onWrite(l, start, k, v);
    const attn = new Float32Array(T * rowQ); // [T, numHeads * headDim]; head h = kvHead * G + g, as in HF's repeat_kv
    const lse = new Float32Array(T * c.numHeads); // [T, numHeads]
    await attendLayer(ctx, l, seq, start, q, attn, lse);
    t0 = performance.now();
    hidden = await runPostAttention(model.runner, c, l, attn, hidden);
    stats.deviceMs += performance.now() - t0;
  }
  const t0 = performance.now();
  const logits = await runFinal(model.runner, c, hidden.slice((T - 1) * c.hiddenSize)); // only the last row is sampled
  stats.deviceMs += performance.now() - t0;
  return logits;
}

/**
 * specache's decode step: the real token at `start` and a speculative guess at `start + 1`. Only the real
 * token's KV is stored; the guess attends, picks each layer's next hot set, and yields a second logits row,
 * whose argmax is the next guess. Returns logits [2, vocab]: row 0 for the real next token.
 */
export async function forwardSpeculative(ctx: ForwardContext, seq: number, real: number, guess: number, start: number): Promise<Float32Array> {
  const { model, kv, stats, signal } = ctx;
  const split = kv.split!;
  const cache = kv.cache;
  const c = model.config;
  const G = c.numHeads / c.numKvHeads;
  const scale = 1 / Math.sqrt(c.headDim);
  const rowQ = c.numHeads * c.headDim;
  const rowKv = c.numKvHeads * c.headDim;
  let hidden = embedTokens(c, model.embed, Int32Array.of(real, guess)); // [2, hidden]
  const { cos, sin } = ropeTables(model.invFreq, positionRange(start, 2));
  const slots = cache.reserve(seq, 1);
  for (let l = 0; l < c.numLayers; l++) {
    signal?.throwIfAborted();
    let t0 = performance.now();
    const { q, k, v } = await runPreAttention(model.runner, c, l, hidden, cos, sin); // q [2, numHeads, headDim]; k, v [2, numKvHeads, headDim]
    stats.deviceMs += performance.now() - t0;
    const k0 = k.subarray(0, rowKv);
    const v0 = v.subarray(0, rowKv);
    cache.write(l, slots, k0, v0);
    split.onWrite(l, start, k0, v0);
    const attn = new Float32Array(2 * rowQ); // [2, numHeads * headDim]
    const lse = new Float32Array(2 * c.numHeads);
    await split.attend(l, cache, seq, ctx.pool, G, scale, q.subarray(0, rowQ), attn.subarray(0, rowQ), lse.subarray(0, c.numHeads), stats, signal);
    split.attendSpeculative(l, cache, seq, G, scale, q.subarray(rowQ), k.subarray(rowKv), v.subarray(rowKv), attn.subarray(rowQ), lse.subarray(c.numHeads), stats);
    t0 = performance.now();
    hidden = await runPostAttention(model.runner, c, l, attn, hidden);
    stats.deviceMs += performance.now() - t0;
  }
  const t0 = performance.now();
  const logits = await runFinal(model.runner, c, hidden); // [2, vocab]
  stats.deviceMs += performance.now() - t0;
  return logits;
}

/** Attention of one layer for T queries at [start, start + T): q, out [T, numHeads, headDim]; lse [T, numHeads]. */
async function attendLayer(ctx: ForwardContext, l: number, seq: number, start: number, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void> {
  const { model, kv, pool, stats, signal } = ctx;
  const c = model.config;
  const G = c.numHeads / c.numKvHeads;
  const scale = 1 / Math.sqrt(c.headDim);
  const T = q.length / (c.numHeads * c.headDim);
  if (kv.split && T === 1) {
    await kv.split.attend(l, kv.cache, seq, pool, G, scale, q, out, lse, stats, signal);
    return;
  }
  const t0 = performance.now();
  const { region, blockIds, bytesCopied } = kv.attentionSource(l, seq);
  if (bytesCopied > 0) {
    stats.bytesH2D += bytesCopied;
    stats.copyMs += performance.now() - t0;
  }
  const t1 = performance.now();
  const base = { region, blockIds, kvHeads: Int32Array.from({ length: c.numKvHeads }, (_, h) => h), groupSize: G, scale };
  if (T === 1) await pool.attend({ ...base, numTokens: start + 1, q, out, lse }, { signal });
  else await pool.attendCausal({ ...base, start, q, out, lse }, { signal });
  stats.cpuAttnMs += performance.now() - t1;
}
