// Forward passes: a prefill chunk of one sequence, and one decode step of a batch (dense graphs on ORT over
// all rows at once, kvoff's own attention per sequence in between).
import { performance } from 'node:perf_hooks';
import type { CpuAttentionPool } from '../cpu-attention.js';
import type { Model } from '../model/model.js';
import { embedTokens } from '../model/onnx/builder.js';
import { positionRange, ropeTables } from '../model/rope.js';
import type { LayerCall } from './decode-attention.js';
import type { RunKv, SeqKv } from './run-kv.js';
import type { EngineStats } from './stats.js';

export interface ForwardContext {
  model: Model;
  kv: RunKv;
  pool: CpuAttentionPool;
  stats: EngineStats;
  signal?: AbortSignal;
}

/** One row of a decode step: a sequence's next token at `pos`; a speculative row's KV is never stored. */
export interface DecodeRow {
  seq: SeqKv;
  token: number;
  pos: number;
  speculative: boolean; // must follow the real row of the same sequence
}

/**
 * Appends `tokens` at positions [start, start + T) of `seq` and returns the logits [vocab] of the last one.
 * Attention of query t covers positions [0, start + t]: causal, exact, over the paged host cache.
 */
export async function forward(ctx: ForwardContext, seq: SeqKv, tokens: Int32Array, start: number): Promise<Float32Array> {
  const { model, kv, stats, signal } = ctx;
  const c = model.config;
  const T = tokens.length;
  const rowQ = c.numHeads * c.headDim;
  let hidden = embedTokens(c, model.embed, tokens); // [T, hidden]
  const { cos, sin } = ropeTables(model.invFreq, positionRange(start, T)); // [T, headDim] each
  const slots = kv.cache.reserve(seq.id, T);
  for (let l = 0; l < c.numLayers; l++) {
    signal?.throwIfAborted();
    let t0 = performance.now();
    const { q, k, v } = await model.dense.preAttention(l, hidden, cos, sin); // q [T, numHeads, headDim]
    stats.deviceMs += performance.now() - t0;
    kv.cache.write(l, slots, k, v);
    seq.attn?.onWrite(l, start, k, v);
    const attn = new Float32Array(T * rowQ); // [T, numHeads * headDim]; head h = kvHead * G + g, as in HF's repeat_kv
    const lse = new Float32Array(T * c.numHeads); // [T, numHeads]
    // Prefill is exact over the host cache for every policy (decode goes through decodeStep), chunks of one included.
    seq.attn?.onPrefillQueries?.(l, start, q);
    await attendCache(ctx, l, seq, start, q, attn, lse);
    t0 = performance.now();
    hidden = await model.dense.postAttention(l, attn, hidden);
    stats.deviceMs += performance.now() - t0;
  }
  const t0 = performance.now();
  const logits = await model.dense.final(hidden.slice((T - 1) * c.hiddenSize)); // only the last row is sampled
  stats.deviceMs += performance.now() - t0;
  return logits;
}

/**
 * One decode step of a batch: every row's token at its position. Real rows append their KV; a speculative row
 * (specache) attends after its sequence's real row, picks that sequence's next hot set, and is forgotten.
 * Returns logits [rows, vocab].
 */
export async function decodeStep(ctx: ForwardContext, rows: DecodeRow[]): Promise<Float32Array> {
  const { model, kv, stats, signal } = ctx;
  const c = model.config;
  const R = rows.length;
  const rowQ = c.numHeads * c.headDim;
  const rowKv = c.numKvHeads * c.headDim;
  let hidden = embedTokens(c, model.embed, Int32Array.from(rows, (r) => r.token)); // [R, hidden]
  const { cos, sin } = ropeTables(model.invFreq, Int32Array.from(rows, (r) => r.pos)); // [R, headDim] each
  const slots = rows.map((r) => (r.speculative ? null : kv.cache.reserve(r.seq.id, 1)));
  for (let l = 0; l < c.numLayers; l++) {
    signal?.throwIfAborted();
    // Before the layer's own compute, so what a policy starts from its input (a prefetch) overlaps that compute.
    for (let i = 0; i < R; i++) if (!rows[i].speculative) rows[i].seq.attn?.onLayerInput?.(l, hidden.subarray(i * c.hiddenSize, (i + 1) * c.hiddenSize), rows[i].pos);
    let t0 = performance.now();
    const { q, k, v } = await model.dense.preAttention(l, hidden, cos, sin); // q [R, numHeads, headDim]; k, v [R, numKvHeads, headDim]
    stats.deviceMs += performance.now() - t0;
    const attn = new Float32Array(R * rowQ); // [R, numHeads * headDim]
    const lse = new Float32Array(R * c.numHeads); // [R, numHeads]
    const part = (i: number) => ({
      q: q.subarray(i * rowQ, (i + 1) * rowQ), k: k.subarray(i * rowKv, (i + 1) * rowKv), v: v.subarray(i * rowKv, (i + 1) * rowKv),
      out: attn.subarray(i * rowQ, (i + 1) * rowQ), lse: lse.subarray(i * c.numHeads, (i + 1) * c.numHeads),
    });
    // Sequences attend concurrently (the CPU workers take every sequence's shards); a speculative row waits for
    // its real row, whose hot-set update it reads.
    const chains = new Map<SeqKv, Promise<void>>();
    for (let i = 0; i < R; i++) {
      const r = rows[i];
      const p = part(i);
      if (!r.speculative) {
        kv.cache.write(l, slots[i]!, p.k, p.v);
        r.seq.attn?.onWrite(l, r.pos, p.k, p.v);
        const run = r.seq.attn ? r.seq.attn.attend(layerCall(ctx, l, r.seq), p.q, p.out, p.lse) : attendCache(ctx, l, r.seq, r.pos, p.q, p.out, p.lse);
        chains.set(r.seq, run);
      } else {
        const before = chains.get(r.seq) ?? Promise.resolve();
        chains.set(r.seq, before.then(() => r.seq.attn!.attendSpeculative!(layerCall(ctx, l, r.seq), p.q, p.k, p.v, p.out, p.lse)));
      }
    }
    const all = [...chains.values()];
    for (const p of all) p.catch(() => {}); // every chain is awaited below; the first failure fails the step
    await Promise.all(all);
    t0 = performance.now();
    hidden = await model.dense.postAttention(l, attn, hidden);
    stats.deviceMs += performance.now() - t0;
  }
  const t0 = performance.now();
  const logits = await model.dense.final(hidden); // [R, vocab]
  stats.deviceMs += performance.now() - t0;
  return logits;
}

export function layerCall(ctx: ForwardContext, layer: number, seq: SeqKv): LayerCall {
  const c = ctx.model.config;
  return {
    layer, cache: ctx.kv.cache, seq: seq.id, pool: ctx.pool, groupSize: c.numHeads / c.numKvHeads,
    scale: 1 / Math.sqrt(c.headDim), stats: ctx.stats, signal: ctx.signal,
  };
}

/**
 * Exact attention over the sequence's whole cache for T queries at [start, start + T): q, out [T, numHeads,
 * headDim]; lse [T, numHeads]. Runs on the CPU workers (offload-layer: over the staged copy).
 */
export async function attendCache(ctx: ForwardContext, l: number, seq: SeqKv, start: number, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void> {
  const { model, kv, pool, stats, signal } = ctx;
  const c = model.config;
  const G = c.numHeads / c.numKvHeads;
  const scale = 1 / Math.sqrt(c.headDim);
  const T = q.length / (c.numHeads * c.headDim);
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
