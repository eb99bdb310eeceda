// Reference for the batched forms of the CUDA step kernels (one launch for a batch of sequences, a token each): each
// is the single-sequence reference applied to every sequence in turn, on sequence-major buffers.
import { decodeRef, kvStoreHostRef, kvWriteRef } from './device-attention-ref.js';
import type { HalfDtype } from './half.js';
import type { PagedShape } from './paged-kv.js';
import { topKRef } from './topk.js';

/** Token t ([H * D] of k and v) is sequence t's: into slot slots[t] of region t of `regions` [B, H, capacity, 2, D]. */
export function kvWriteBatchRef(regions: Uint16Array, s: { numKvHeads: number; headDim: number; capacity: number; dtype: HalfDtype }, slots: Int32Array, k: Float32Array, v: Float32Array): void {
  const row = s.numKvHeads * s.headDim;
  const region = s.numKvHeads * s.capacity * 2 * s.headDim;
  slots.forEach((slot, t) =>
    kvWriteRef(regions.subarray(t * region, (t + 1) * region), s, slot, k.subarray(t * row, (t + 1) * row), v.subarray(t * row, (t + 1) * row)));
}

/** Token t lands at row offsets[t] of block blocks[t] of the paged host region. */
export function kvStoreHostBatchRef(region: Uint16Array, s: PagedShape, blocks: Int32Array, offsets: Int32Array, k: Float32Array, v: Float32Array): void {
  const row = s.numKvHeads * s.headDim;
  blocks.forEach((block, t) => kvStoreHostRef(region, s, Int32Array.of(block), offsets[t], k.subarray(t * row, (t + 1) * row), v.subarray(t * row, (t + 1) * row)));
}

/**
 * seqs sequences of numKvHeads heads each: sequence s's queries at q + s * qSeqStride attend its region of `kv`
 * [seqs, H, capacity, 2, D] with counts [seqs * H]; out [seqs, H * G, D] and lse [seqs, H * G], one after another.
 */
export function decodeBatchRef(
  r: { kv: Uint16Array; capacity: number; numKvHeads: number; headDim: number; dtype: HalfDtype; groupSize: number },
  seqs: number, counts: Int32Array, q: Float32Array, qSeqStride: number, scale: number,
): { out: Float32Array; lse: Float32Array } {
  const { numKvHeads: H, groupSize: G, headDim: D, capacity } = r;
  const region = H * capacity * 2 * D;
  const out = new Float32Array(seqs * H * G * D), lse = new Float32Array(seqs * H * G);
  for (let s = 0; s < seqs; s++) {
    const one = decodeRef({ ...r, kv: r.kv.subarray(s * region, (s + 1) * region) }, counts.subarray(s * H, (s + 1) * H), q.subarray(s * qSeqStride, s * qSeqStride + H * G * D), scale);
    out.set(one.out, s * H * G * D);
    lse.set(one.lse, s * H * G);
  }
  return { out, lse };
}

/** cudaTopK with per-row counts: row r's k best of positions [first, first + counts[r]) of scores [rows, ld], absolute. */
export function topKRowsRef(scores: Float32Array, ld: number, first: number, counts: Int32Array, k: number): Int32Array {
  const out = new Int32Array(counts.length * k);
  counts.forEach((n, r) => {
    const best = topKRef(scores.subarray(r * ld + first, r * ld + first + n), 1, n, k);
    for (let j = 0; j < k; j++) out[r * k + j] = first + best[j];
  });
  return out;
}
