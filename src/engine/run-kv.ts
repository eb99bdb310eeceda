// The KV memory of one generation run: the device tier (capped by vramBudget), the full-precision cache placed
// where the policy says, and each sequence's device state. Planning picks the best knob setting that fits the
// budget, or fails with needed, given and the smallest budget that works.
import { HostDeviceTier, type TierBuffer } from '../device/device-tier.js';
import { planTier, type TierPart } from '../device/tier-allocator.js';
import { KvoffCapacityError } from '../errors.js';
import { HostKvCache, type HostKvShape } from '../kv/host-cache.js';
import { native, type KvRegion } from '../native.js';
import { formatBytes } from '../units.js';
import type { DecodeAttention } from './decode-attention.js';
import type { Knobs, PolicyEnv, PolicySpec, SeqShape } from './policies.js';

/** One sequence of the run: its id in the cache's store, and its device state. */
export interface SeqKv {
  index: number; // position in the batch
  id: number; // sequence id in cache.store, once opened
  attn: DecodeAttention | null;
  staging: TierBuffer | null; // offload-layer: [numKvHeads, capacityTokens, 2, headDim] of 16-bit values
}

export class RunKv {
  readonly cache: HostKvCache;
  readonly tier: HostDeviceTier | null; // null when the policy needs no device memory (cpu)
  readonly seqs: SeqKv[];
  readonly knobs: Knobs; // the setting the plan chose

  private constructor(cache: HostKvCache, tier: HostDeviceTier | null, seqs: SeqKv[], knobs: Knobs) {
    this.cache = cache;
    this.tier = tier;
    this.seqs = seqs;
    this.knobs = knobs;
  }

  /**
   * Plans the device tier under `budget` bytes (Infinity: uncapped) for a cache of `shape` shared by
   * sequences of `capacities` tokens each, and opens every sequence's device state.
   */
  static open(policy: PolicySpec, shape: HostKvShape, groupSize: number, capacities: number[], budget: number, given: Knobs, env: PolicyEnv): RunKv {
    const seqShape = (capacityTokens: number): SeqShape => ({ ...shape, groupSize, capacityTokens });
    const shared: TierPart[] = policy.kvHome === 'device' ? [{ tag: 'kv', bytes: HostKvCache.bytesFor(shape) }] : [];
    const partsFor = (k: Knobs) => [...shared, ...capacities.flatMap((c) => policy.seqParts(seqShape(c), k))];
    const cap = Number.isFinite(budget) ? Math.max(budget, 1) : Number.MAX_SAFE_INTEGER;
    let smallest: { needed: number; parts: TierPart[] } | null = null;
    let chosen: { knobs: Knobs; needed: number } | null = null;
    const sharedBytes = shared.reduce((n, p) => n + p.bytes, 0);
    const perSeq = Number.isFinite(budget) ? Math.floor((budget - sharedBytes) / capacities.length) : Infinity;
    const fitted = policy.fit?.(seqShape(Math.max(...capacities)), perSeq, given);
    for (const knobs of [...(fitted ? [fitted] : []), ...policy.candidates(given)]) {
      const parts = partsFor(knobs);
      const plan = planTier(parts, cap);
      if (plan.ok) {
        chosen = { knobs, needed: plan.needed };
        break;
      }
      if (!smallest || plan.needed < smallest.needed) smallest = { needed: plan.needed, parts };
    }
    if (!chosen) {
      const { needed, parts } = smallest!;
      const tokens = capacities.reduce((a, b) => a + b, 0);
      throw new KvoffCapacityError(
        'bytes of KV device tier', needed, budget,
        `policy ${policy.name} needs at least ${summarize(parts)} bytes there for ${capacities.length} sequence(s), ${tokens} tokens in all: ` +
          `the smallest budget that works is ${needed} bytes (${formatBytes(needed)}); given ${budget} bytes (${formatBytes(budget)})`,
      );
    }
    // The CPU backend's stand-in for VRAM takes only what the plan needs, never more than the budget.
    const tier = chosen.needed > 0 ? new HostDeviceTier({ capacity: chosen.needed }) : null;
    const seqs: SeqKv[] = [];
    let cache: HostKvCache | null = null;
    try {
      const kv = policy.kvHome === 'device' ? tier!.allocate(HostKvCache.bytesFor(shape), 'kv') : null;
      for (let i = 0; i < capacities.length; i++) {
        const s = seqShape(capacities[i]);
        const staging = policy.stagesLayer ? tier!.allocate(s.numKvHeads * s.capacityTokens * 2 * s.headDim * 2, 'staging') : null;
        seqs.push({ index: i, id: -1, attn: tier ? policy.openSeq(tier, s, chosen.knobs, env) : null, staging });
      }
      cache = new HostKvCache(shape, kv ? { at: kv.ref } : { pin: true });
      return new RunKv(cache, tier, seqs, chosen.knobs);
    } catch (err) {
      for (const s of seqs) s.attn?.dispose();
      cache?.dispose();
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
   * Starts sequence `index`: fresh, or sharing the first `shared` tokens of an opened sequence's blocks. A
   * policy with device state is fed the shared tokens from the host cache, as if it had seen them written.
   */
  openSeq(index: number, prefix?: { from: SeqKv; shared: number }): SeqKv {
    const s = this.seqs[index];
    const store = this.cache.store;
    s.id = prefix ? store.createSequenceWithPrefix(prefix.from.id, prefix.shared) : store.createSequence();
    if (prefix && s.attn) {
      for (let l = 0; l < this.cache.shape.numLayers; l++) {
        const { k, v } = this.cache.readTokens(l, s.id, 0, prefix.shared);
        s.attn.onWrite(l, 0, k, v);
      }
    }
    return s;
  }

  /**
   * Where layer `layer` of a sequence is attended. offload-layer first copies the layer's KV of the sequence into
   * its staging buffer with one gather call (per head, each block's run of tokens is one memcpy) and attends
   * the copy, laid out as a single block [numKvHeads, n, 2, headDim]. Returns the region, its block ids and
   * the bytes copied.
   */
  attentionSource(layer: number, seq: SeqKv): { region: KvRegion; blockIds: Int32Array; bytesCopied: number } {
    const region = this.cache.region(layer);
    const blockIds = this.cache.store.blockIds(seq.id);
    if (!seq.staging) return { region, blockIds, bytesCopied: 0 };
    const n = this.cache.store.numTokens(seq.id);
    const H = region.numKvHeads;
    const positions = new Int32Array(H * n); // [H, n]: every token of every head
    for (let h = 0; h < H; h++) for (let p = 0; p < n; p++) positions[h * n + p] = p;
    const dst = seq.staging.ref;
    native().kvGather({ ...region, blockIds, kvHeads: Int32Array.from({ length: H }, (_, h) => h), n, positions, dst });
    return {
      region: { ...region, handle: dst.handle, offset: dst.offset, numBlocks: 1, blockSize: n },
      blockIds: Int32Array.of(0),
      bytesCopied: H * n * 2 * region.headDim * 2,
    };
  }

  /** Waits for every sequence's copies still in flight. */
  async settle(): Promise<void> {
    await Promise.all(this.seqs.map((s) => s.attn?.settle()));
  }

  dispose(): void {
    for (const s of this.seqs) s.attn?.dispose();
    this.cache.dispose();
    this.tier?.dispose();
  }
}

/** "kv 100 + low-bit 20 + ..." with parts of the same tag summed. */
function summarize(parts: TierPart[]): string {
  const byTag = new Map<string, number>();
  for (const p of parts) byTag.set(p.tag, (byTag.get(p.tag) ?? 0) + p.bytes);
  return [...byTag].map(([tag, bytes]) => `${tag} ${bytes}`).join(' + ');
}
