// tiered's CPU part of one layer on the device-resident step: the picks ranked just below the device hot set come
// down with q, the CPU workers attend them exactly over the pinned host KV, and their (o, lse) merge on the device.
import type { CpuAttentionPool } from '../cpu-attention.js';
import { complement } from '../engine/split-attention.js';
import type { ModelConfig } from '../model/types.js';
import { native, type DevRef, type KvRegion } from '../native.js';

export interface CpuPicksRequest {
  config: ModelConfig;
  stream: number; // compute stream: the picks and q are read after what it has enqueued
  pool: CpuAttentionPool;
  region: KvRegion; // the layer's host KV
  blockIds: Int32Array;
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
  const o = new Float32Array(nH * D); // [Hkv, G, D]
  const l = new Float32Array(nH); // [Hkv, G]
  // One request per KV head: each head has its own picks, and the workers take an exclusion list per request.
  await Promise.all(Array.from({ length: nKv }, (_, h) => {
    const mine = picks.slice(h * r.ranked + r.skip, (h + 1) * r.ranked).sort();
    return r.pool.attend({
      region: r.region, blockIds: r.blockIds, numTokens: r.n, kvHeads: Int32Array.of(h), groupSize: G, scale: r.scale,
      q: q.subarray(h * G * D, (h + 1) * G * D), exclude: complement(mine, r.n), out: o.subarray(h * G * D, (h + 1) * G * D), lse: l.subarray(h * G, (h + 1) * G),
    }, { signal: r.signal });
  }));
  native().cudaUpload({ dst: r.oPart, data: o, stream: r.stream });
  native().cudaUpload({ dst: r.lsePart, data: l, stream: r.stream });
  native().cudaLseMerge({ rows: nH, headDim: D, oA: r.out, lseA: r.lse, oB: r.oPart, lseB: r.lsePart, out: r.out, lseOut: r.lse, stream: r.stream });
}
