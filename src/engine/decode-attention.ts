// The per-sequence decode-attention strategy of a policy: it owns that sequence's device-tier state (low-bit
// copy, hot set, kept set) and attends one decode query per layer, returning (o, lse).
import type { CpuAttentionPool } from '../cpu-attention.js';
import type { HostKvCache } from '../kv/host-cache.js';
import type { EngineStats } from './stats.js';

/** What one layer's attention call of one sequence works with. */
export interface LayerCall {
  layer: number;
  cache: HostKvCache; // the full-precision cache (host tier)
  seq: number; // the sequence's id in cache.store
  pool: CpuAttentionPool;
  groupSize: number; // query heads per KV head
  scale: number;
  stats: EngineStats;
  signal?: AbortSignal;
}

export interface DecodeAttention {
  /** Tokens [start, start + T) were written to the host cache: k, v [T, numKvHeads, headDim]. */
  onWrite(layer: number, start: number, k: Float32Array, v: Float32Array): void;
  /** Token ids of positions [start, start + ids.length): the prompt before its prefill, each decoded token before its step (fastgen's token classes). */
  onTokens?(ids: Int32Array, start: number): void;
  /** Prefill queries of positions [start, start + T): q [T, numHeads, headDim]; for policies that select from them. */
  onPrefillQueries?(layer: number, start: number, q: Float32Array): void;
  /** The prompt is in the cache: one-shot selection or compression happens here. */
  onPrefillEnd?(cache: HostKvCache, seq: number): void;
  /**
   * A decode step's hidden state entering `layer` (the residual stream, before its pre-attention): hidden [hiddenSize]
   * of the token at `pos`. Real rows only. InfiniGen speculates the next layer's selection from it.
   */
  onLayerInput?(layer: number, hidden: Float32Array, pos: number): void;
  /** One decode query: q, out [numKvHeads, G, headDim]; lse [numKvHeads, G]. */
  attend(call: LayerCall, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void>;
  /** specache: the speculative query beside the real one; k, v [numKvHeads, headDim] are its own (never stored). */
  attendSpeculative?(call: LayerCall, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, lse: Float32Array): void;
  /** Waits for copies still in flight. */
  settle(): Promise<void>;
  dispose(): void;
}
