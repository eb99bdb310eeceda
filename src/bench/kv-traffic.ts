// KV bytes one decode step reads in the device tier and on the CPU, per policy: what the engine's counters do
// not record (they count copies, not reads), derived from the policy and the knobs the run used.
import type { PolicyName } from '../engine/options.js';
import type { ModelConfig } from '../model/types.js';

/** Full-precision K and V of one token over every layer and KV head (f16/bf16: 2 bytes). */
export function kvBytesPerToken(c: ModelConfig): number {
  return c.numLayers * c.numKvHeads * 2 * c.headDim * 2;
}

export interface KvTraffic {
  deviceKvBytes: number;
  cpuKvBytes: number;
}

/**
 * One decode step over `tokens` tokens of context for each of `batch` sequences. The device tier's working set
 * (deviceBytesPeak) is read whole every step: dense attends all of its KV, and the split policies score every
 * low-bit key and attend the hot set. offload-layer reuses a one-layer staging buffer per sequence, but attends
 * every layer's KV through it. The CPU workers read what the policy sends them: exact, all but the hot set;
 * tiered, the next cpuK tokens by score; cpu, everything. `knobs` are engine.lastKnobs (fitted to the budget).
 */
export function stepKvTraffic(
  policy: PolicyName, c: ModelConfig, tokens: number, batch: number, deviceBytesPeak: number, knobs: Record<string, number> | null,
): KvTraffic {
  const perSeq = kvBytesPerToken(c);
  const full = perSeq * tokens * batch;
  const k = knobs ?? {};
  const hot = Math.min(tokens, (k.sinks ?? 0) + (k.topK ?? 0) + (k.window ?? 0)); // always attended on the device
  const rest = (tokens - hot) * perSeq * batch;
  switch (policy) {
    case 'cpu':
      return { deviceKvBytes: 0, cpuKvBytes: full };
    case 'offload-layer':
      return { deviceKvBytes: full, cpuKvBytes: 0 };
    case 'exact':
      return { deviceKvBytes: deviceBytesPeak, cpuKvBytes: rest };
    case 'tiered':
      return { deviceKvBytes: deviceBytesPeak, cpuKvBytes: Math.min((k.cpuK ?? 0) * perSeq * batch, rest) };
    default: // dense, specache, and policies that attend only in the device tier
      return { deviceKvBytes: deviceBytesPeak, cpuKvBytes: 0 };
  }
}
