// The KV memory of one generation run: the device tier (capped by vramBudget) and the full-precision
// cache, placed where the policy says; planning fails with needed, given and the smallest budget that works.
import { HostDeviceTier, type TierBuffer } from '../device/device-tier.js';
import { planTier } from '../device/tier-allocator.js';
import { KvoffCapacityError } from '../errors.js';
import { HostKvCache, type HostKvShape } from '../kv/host-cache.js';
import { native, type KvRegion } from '../native.js';
import { formatBytes } from '../units.js';
import { splitShape, type PolicySpec } from './policies.js';
import { SplitAttention } from './split-attention.js';

export class RunKv {
  readonly cache: HostKvCache;
  readonly tier: HostDeviceTier | null; // null when the policy needs no device memory (cpu)
  readonly split: SplitAttention | null; // the tier split of decode attention (exact, tiered)
  readonly #staging: TierBuffer | null; // one layer's KV, for offload-layer

  private constructor(cache: HostKvCache, tier: HostDeviceTier | null, staging: TierBuffer | null, split: SplitAttention | null) {
    this.cache = cache;
    this.tier = tier;
    this.split = split;
    this.#staging = staging;
  }

  /** Plans the device tier under `budget` bytes (Infinity: uncapped) and places the cache. */
  static open(policy: PolicySpec, shape: HostKvShape, budget: number): RunKv {
    const parts = policy.deviceParts(shape);
    const plan = planTier(parts, Number.isFinite(budget) ? Math.max(budget, 1) : Number.MAX_SAFE_INTEGER);
    if (!plan.ok) {
      throw new KvoffCapacityError(
        'bytes of KV device tier', plan.needed, budget,
        `policy ${policy.name} needs ${parts.map((p) => `${p.tag} ${p.bytes}`).join(' + ')} bytes there for ${shape.numBlocks * shape.blockSize} tokens: ` +
          `the smallest budget that works is ${plan.needed} bytes (${formatBytes(plan.needed)}); given ${budget} bytes (${formatBytes(budget)})`,
      );
    }
    // The CPU backend's stand-in for VRAM takes only what the plan needs, never more than the budget.
    const tier = plan.needed > 0 ? new HostDeviceTier({ capacity: plan.needed }) : null;
    try {
      const kv = policy.kvHome === 'device' ? tier!.allocate(HostKvCache.bytesFor(shape), 'kv') : null;
      const staging = policy.stagesLayer ? tier!.allocate(HostKvCache.bytesFor({ ...shape, numLayers: 1 }), 'staging') : null;
      const split = policy.split ? new SplitAttention(tier!, splitShape(shape), policy.split) : null;
      const cache = new HostKvCache(shape, kv ? { at: kv.ref } : { pin: true });
      return new RunKv(cache, tier, staging, split);
    } catch (err) {
      tier?.dispose();
      throw err;
    }
  }

  get deviceBytes(): number {
    return this.tier?.bytesInUse ?? 0;
  }

  get hostBytes(): number {
    return this.cache.handle === this.tier?.handle ? 0 : this.cache.bytes;
  }

  /**
   * Where layer `layer` of `seq` is attended. offload-layer first copies the layer's KV of the sequence into
   * the staging buffer with one gather call (per head, each block's run of tokens is one memcpy) and attends
   * the copy, laid out as a single block [numKvHeads, n, 2, headDim]. Returns the region, its block ids and
   * the bytes copied.
   */
  attentionSource(layer: number, seq: number): { region: KvRegion; blockIds: Int32Array; bytesCopied: number } {
    const region = this.cache.region(layer);
    const blockIds = this.cache.store.blockIds(seq);
    if (!this.#staging) return { region, blockIds, bytesCopied: 0 };
    const n = this.cache.store.numTokens(seq);
    const H = region.numKvHeads;
    const positions = new Int32Array(H * n); // [H, n]: every token of every head
    for (let h = 0; h < H; h++) for (let p = 0; p < n; p++) positions[h * n + p] = p;
    const dst = this.#staging.ref;
    native().kvGather({ ...region, blockIds, kvHeads: Int32Array.from({ length: H }, (_, h) => h), n, positions, dst });
    return {
      region: { ...region, handle: dst.handle, offset: dst.offset, numBlocks: 1, blockSize: n },
      blockIds: Int32Array.of(0),
      bytesCopied: H * n * 2 * region.headDim * 2,
    };
  }

  dispose(): void {
    this.split?.dispose();
    this.cache.dispose();
    this.tier?.dispose();
  }
}
