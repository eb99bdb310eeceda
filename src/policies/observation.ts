// The observation window: the prompt's last queries of each layer, and their attention over the prompt per
// (layer, KV head), which one-shot selection (snapkv, pyramid, fastgen) and initial scores (h2o, tova) rank by.
import type { HostKvCache } from '../kv/host-cache.js';
import { native } from '../native.js';

/** Keeps the last `window` prefill queries of each layer as chunks arrive. */
export class QueryWindow {
  readonly window: number;
  readonly #row: number; // numHeads * headDim
  readonly #q: Float32Array[]; // [numLayers] each [window, numHeads, headDim], oldest first
  readonly #count: Int32Array; // [numLayers] rows held
  readonly #end: Int32Array; // [numLayers] position after the last row held

  constructor(numLayers: number, numHeads: number, headDim: number, window: number) {
    this.window = window;
    this.#row = numHeads * headDim;
    this.#q = Array.from({ length: numLayers }, () => new Float32Array(window * this.#row));
    this.#count = new Int32Array(numLayers);
    this.#end = new Int32Array(numLayers);
  }

  /** Queries of positions [start, start + T): q [T, numHeads, headDim]. */
  push(layer: number, start: number, q: Float32Array): void {
    const W = this.window;
    if (W === 0) return;
    const T = q.length / this.#row;
    const buf = this.#q[layer];
    const take = Math.min(T, W);
    const keep = Math.min(this.#count[layer], W - take); // older rows that still fit
    // Shift the kept older rows to the front, then append the newest `take` rows of this chunk.
    buf.copyWithin(0, (this.#count[layer] - keep) * this.#row, this.#count[layer] * this.#row);
    buf.set(q.subarray((T - take) * this.#row), keep * this.#row);
    this.#count[layer] = keep + take;
    this.#end[layer] = start + T;
  }

  /** The held queries of a layer: q [count, numHeads, headDim] at positions [start, start + count). */
  get(layer: number): { q: Float32Array; start: number; count: number } {
    const count = this.#count[layer];
    return { q: this.#q[layer].subarray(0, count * this.#row), start: this.#end[layer] - count, count };
  }
}

/**
 * Softmax per query row over the keys it may see (causal: row of position p sees [0, p]), averaged over the G
 * query heads of the group and summed over the window. scores: [W * G, n] scaled q.k, row t*G + g at position
 * start + t. Returns [n]: each token's attention mass from the window (sums to W when every row sees something).
 */
export function observedAttention(scores: Float32Array, W: number, G: number, n: number, start: number): Float32Array {
  const out = new Float32Array(n);
  for (let t = 0; t < W; t++) {
    const seen = Math.min(n, start + t + 1);
    for (let g = 0; g < G; g++) {
      const row = scores.subarray((t * G + g) * n, (t * G + g) * n + seen);
      let m = -Infinity;
      for (let j = 0; j < seen; j++) if (row[j] > m) m = row[j];
      if (m === -Infinity) continue;
      let sum = 0;
      for (let j = 0; j < seen; j++) sum += Math.exp(row[j] - m);
      const norm = 1 / (sum * G);
      for (let j = 0; j < seen; j++) out[j] += Math.exp(row[j] - m) * norm;
    }
  }
  return out;
}

/**
 * The window's attention over the n prompt tokens of one (layer, KV head), read from the host cache: q.k by the
 * native kvScores kernel, softmax in TypeScript. win.q is [count, numHeads, headDim] with head = kvHead * G + g.
 */
export function windowAttention(
  cache: HostKvCache, seq: number, layer: number, kvHead: number, win: { q: Float32Array; start: number; count: number },
  G: number, headDim: number, scale: number, n: number,
): Float32Array {
  const W = win.count;
  if (W === 0 || n === 0) return new Float32Array(n);
  const numHeads = cache.shape.numKvHeads * G;
  const q = new Float32Array(W * G * headDim); // [W, G, headDim]: this KV head's query rows, packed
  for (let t = 0; t < W; t++) q.set(win.q.subarray((t * numHeads + kvHead * G) * headDim, (t * numHeads + (kvHead + 1) * G) * headDim), t * G * headDim);
  const scores = new Float32Array(W * G * n); // [W * G, n]
  native().kvScores({ ...cache.region(layer), blockIds: cache.store.blockIds(seq), numTokens: n, kvHead, rows: W * G, q, scale, out: scores });
  return observedAttention(scores, W, G, n, win.start);
}
