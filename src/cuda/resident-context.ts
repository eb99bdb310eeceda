// Hands a prefilled context to the device-resident policies: from one layer's full-precision KV staged on the device
// ([Hkv, capacity, 2, D], its first n rows filled), fill a hot region's sinks and window ring, the low-bit copy, and
// the pinned host cache.
import type { ModelConfig } from '../model/types.js';
import { native, type DevRef } from '../native.js';
import type { HostKv } from './resident-attention.js';

export interface StagedLayer {
  kv: (byteOffset: number) => DevRef; // [Hkv, capacity, 2, D] 16-bit
  n: number; // tokens staged: rows [0, n) of every head
  capacity: number; // rows per head (the stride between heads), >= n
}

const rowBytes = (c: ModelConfig): number => 4 * c.headDim; // K and V of one token-head, 16-bit

/** Rows [first, first + count) of every head of the staged layer into slots [slot, slot + count) of a hot region. */
function copyRows(c: ModelConfig, staged: StagedLayer, hot: (byteOffset: number) => DevRef, hotCap: number, first: number, count: number, slot: number, stream: number): void {
  const rb = rowBytes(c);
  for (let h = 0; h < c.numKvHeads; h++)
    native().cudaCopyD2D({ src: staged.kv((h * staged.capacity + first) * rb), dst: hot((h * hotCap + slot) * rb), bytes: count * rb, stream });
}

/** The sinks (slots [0, sinks)) and the window ring (position p in slot sinks + p % window) of a hot region. */
export function fillSinksAndWindow(c: ModelConfig, staged: StagedLayer, hot: (byteOffset: number) => DevRef, hotCap: number, sinks: number, window: number, stream: number): void {
  const { n } = staged;
  copyRows(c, staged, hot, hotCap, 0, Math.min(sinks, n), 0, stream);
  for (let p = Math.max(sinks, n - window); p < n; ) {
    const run = Math.min(n - p, window - (p % window));
    copyRows(c, staged, hot, hotCap, p, run, sinks + (p % window), stream);
    p += run;
  }
}

/** The staged layer into the host cache's blocks (one copy per block and head: contiguous on both sides). */
export function copyToHost(c: ModelConfig, staged: StagedLayer, host: HostKv, layer: number, stream: number): void {
  const r = host.region(layer);
  const rb = rowBytes(c);
  for (let b = 0; b * r.blockSize < staged.n; b++) {
    const rows = Math.min(r.blockSize, staged.n - b * r.blockSize);
    for (let h = 0; h < c.numKvHeads; h++) {
      const src = staged.kv((h * staged.capacity + b * r.blockSize) * rb);
      const hostOffset = r.offset + (host.blockIds[b] * c.numKvHeads + h) * r.blockSize * rb;
      native().cudaCopyD2H({ hostHandle: r.handle, hostOffset, devHandle: src.devHandle, devOffset: src.devOffset, bytes: rows * rb, stream });
    }
  }
}
