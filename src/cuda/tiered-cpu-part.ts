// tiered's CPU part of one layer on the device-resident step: the picks ranked just below the device hot set come
// down with q, their rows are gathered from the pinned host KV into a compact region (one block: [Hkv, k2, 2, D]),
// the CPU workers attend it exactly, and the (o, lse) merge on the device. Gathering first keeps the work at k2
// rows a head, where an exclusion list over the whole context would cost O(context) a head and a layer.
import type { CpuAttentionPool } from '../cpu-attention.js';
import type { ModelConfig } from '../model/types.js';
import { native, type DevRef, type KvRegion } from '../native.js';

export interface CpuPicksRequest {
  config: ModelConfig;
  stream: number; // compute stream: the picks and q are read after what it has enqueued
  pool: CpuAttentionPool;
  region: KvRegion; // the layer's host KV
  blockIds: Int32Array;
  compact: { handle: number; offset: number }; // pinned host room for [Hkv, ranked - skip, 2, D] 16-bit
  n: number; // tokens stored
  scale: number;
  picks: DevRef; // int32 [Hkv, ranked], best first (cudaTopK)
  ranked: number;
  skip: number; // the CPU takes ranks [skip, ranked) of each head; the ranks before are on the device
  q: DevRef; // [nH, D] f32
  out: DevRef; // [nH, D] f32: the device part's output, merged in place
  lse: DevRef; // [nH] f32, likewise
  oPart: DevRef; // [nH, D] f32 room for the CPU's output
  lsePart: DevRef; // [nH] f32
  signal?: AbortSignal;
}

export async function attendCpuPicks(r: CpuPicksRequest): Promise<void> {
  const { numHeads: nH, numKvHeads: nKv, headDim: D } = r.config;
  const G = nH / nKv;
  const [qBytes, pickBytes] = await Promise.all([
    native().cudaDownload({ src: r.q, bytes: nH * D * 4, stream: r.stream }),
    native().cudaDownload({ src: r.picks, bytes: nKv * r.ranked * 4, stream: r.stream }),
  ]);
  const q = new Float32Array(qBytes.buffer, qBytes.byteOffset, nH * D); // [Hkv, G, D]
  const picks = new Int32Array(pickBytes.buffer, pickBytes.byteOffset, nKv * r.ranked);
  const k2 = r.ranked - r.skip;
  if (k2 <= 0) return; // the device hot set took every ranked token
  const positions = new Int32Array(nKv * k2); // [Hkv, k2]: each head's own picks (order does not matter to attention)
  for (let h = 0; h < nKv; h++) positions.set(picks.subarray(h * r.ranked + r.skip, (h + 1) * r.ranked), h * k2);
  const kvHeads = Int32Array.from({ length: nKv }, (_, h) => h);
  native().kvGather({ ...r.region, blockIds: r.blockIds, kvHeads, n: k2, positions, dst: r.compact });
  const compact: KvRegion = { ...r.compact, numBlocks: 1, numKvHeads: nKv, headDim: D, blockSize: k2, dtype: r.region.dtype };
  const o = new Float32Array(nH * D); // [Hkv, G, D]
  const l = new Float32Array(nH); // [Hkv, G]
  await r.pool.attend({ region: compact, blockIds: Int32Array.of(0), numTokens: k2, kvHeads, groupSize: G, scale: r.scale, q, out: o, lse: l }, { signal: r.signal });
  native().cudaUpload({ dst: r.oPart, data: o, stream: r.stream });
  native().cudaUpload({ dst: r.lsePart, data: l, stream: r.stream });
  native().cudaLseMerge({ rows: nH, headDim: D, oA: r.out, lseA: r.lse, oB: r.oPart, lseB: r.lsePart, out: r.out, lseOut: r.lse, stream: r.stream });
}
