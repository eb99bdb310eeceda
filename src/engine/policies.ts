// The lossless policies as data: where the full-precision KV lives and what the device tier must hold.
import type { TierPart } from '../device/tier-allocator.js';
import type { SplitKnobs } from './split-attention.js';
import { HostKvCache, type HostKvShape } from '../kv/host-cache.js';
import { EXACT_DEFAULTS, SPECACHE_DEFAULTS, TIERED_DEFAULTS, splitDeviceParts } from './split-attention.js';
import type { PolicyName } from './options.js';

export interface PolicySpec {
  name: PolicyName;
  /** Home of the full-precision cache: the device tier (dense) or pinned host memory (everything else). */
  kvHome: 'device' | 'host';
  /** Copies the whole layer's KV into a device staging buffer before attending (HF OffloadedCache). */
  stagesLayer: boolean;
  /** Decode attention is split across tiers by low-bit score and merged by LSE (exact, tiered). */
  split: SplitKnobs | null;
  /** The device-tier working set for a run whose cache has `shape`. */
  deviceParts(shape: HostKvShape): TierPart[];
}

const layerBytes = (s: HostKvShape): number => HostKvCache.bytesFor({ ...s, numLayers: 1 });

const base = { kvHome: 'host', stagesLayer: false, split: null } as const;

export const POLICY_SPECS: Record<PolicyName, PolicySpec> = {
  dense: { ...base, name: 'dense', kvHome: 'device', deviceParts: (s) => [{ tag: 'kv', bytes: HostKvCache.bytesFor(s) }] },
  // FastDecode / llama.cpp -nkvo: attention runs where the KV is, on the CPU workers; the device holds no KV.
  cpu: { ...base, name: 'cpu', deviceParts: () => [] },
  'offload-layer': { ...base, name: 'offload-layer', stagesLayer: true, deviceParts: (s) => [{ tag: 'staging', bytes: layerBytes(s) }] },
  // He & Zhai + SpeCache's hot set: low-bit keys pick the hot tokens; the device attends them, the CPU the rest.
  exact: { ...base, name: 'exact', split: EXACT_DEFAULTS, deviceParts: (s) => splitDeviceParts(splitShape(s), EXACT_DEFAULTS) },
  // Ours: full precision for the hottest k1 (device), exact CPU attention for the next k2, a low-bit tail for the rest.
  tiered: { ...base, name: 'tiered', split: TIERED_DEFAULTS, deviceParts: (s) => splitDeviceParts(splitShape(s), TIERED_DEFAULTS) },
  // SpeCache: full-precision hot top-k plus a low-bit tail on the device; a speculative token picks the next hot set.
  specache: { ...base, name: 'specache', split: SPECACHE_DEFAULTS, deviceParts: (s) => splitDeviceParts(splitShape(s), SPECACHE_DEFAULTS) },
};

export function splitShape(s: HostKvShape) {
  return { numLayers: s.numLayers, numKvHeads: s.numKvHeads, headDim: s.headDim, dtype: s.dtype, capacityTokens: s.numBlocks * s.blockSize };
}
