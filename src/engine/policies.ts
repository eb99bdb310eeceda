// The lossless policies as data: where the full-precision KV lives and what the device tier must hold.
import type { TierPart } from '../device/tier-allocator.js';
import { HostKvCache, type HostKvShape } from '../kv/host-cache.js';
import type { PolicyName } from './options.js';

export interface PolicySpec {
  name: PolicyName;
  /** Home of the full-precision cache: the device tier (dense) or pinned host memory (everything else). */
  kvHome: 'device' | 'host';
  /** Copies the whole layer's KV into a device staging buffer before attending (HF OffloadedCache). */
  stagesLayer: boolean;
  /** The device-tier working set for a run whose cache has `shape`. */
  deviceParts(shape: HostKvShape): TierPart[];
}

const layerBytes = (s: HostKvShape): number => HostKvCache.bytesFor({ ...s, numLayers: 1 });

export const POLICY_SPECS: Record<PolicyName, PolicySpec> = {
  dense: { name: 'dense', kvHome: 'device', stagesLayer: false, deviceParts: (s) => [{ tag: 'kv', bytes: HostKvCache.bytesFor(s) }] },
  // FastDecode / llama.cpp -nkvo: attention runs where the KV is, on the CPU workers; the device holds no KV.
  cpu: { name: 'cpu', kvHome: 'host', stagesLayer: false, deviceParts: () => [] },
  'offload-layer': { name: 'offload-layer', kvHome: 'host', stagesLayer: true, deviceParts: (s) => [{ tag: 'staging', bytes: layerBytes(s) }] },
};
