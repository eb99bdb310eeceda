// infinigen on the device-resident step: layer l + 1's top-k is speculated while layer l computes, from layer l's
// input through layer l + 1's own RMSNorm and query projection, scored against a keys-only low-bit copy of layer
// l + 1 and gathered from pinned host memory on the copy stream; layer l + 1 then attends its sinks, window and the
// fetched top-k, and drops the rest of the context for that step (as InfiniGen does). Layer 0 has no layer before it:
// it picks with its own query on the compute stream.
//
// Where this departs from the host-side policy (src/policies/infinigen-attention.ts): InfiniGen scores with r of the
// head's skewed 16-bit key columns (partialRatio = r / D). The device keeps every column at partialRatio x 16 bits
// instead (1, 2 or 4-bit KIVI keys, grouped per 64 tokens), the same key bytes, with scoring, top-k and gather
// kernels the device already has, and no calibration pass over the model.
import { KvoffArgumentError } from '../errors.js';
import { cudaAttendScratchBytes } from '../kernels/device-attention-ref.js';
import { deviceLowBitLayout } from '../kernels/device-lowbit-layout.js';
import type { ModelConfig } from '../model/types.js';
import { native, type DevRef } from '../native.js';
import { DeviceArena, DeviceLayout } from './device-arena.js';
import { qkvWidth } from './layer-kernels.js';
import { fillSinksAndWindow, type StagedLayer } from './resident-context.js';
import {
  PerStep, attnRef, drainPairs, freePairs, kvRegionBytes, oneLaunchFits, qkvRefs, rowsConsecutive, scaleOf, waitFor, waitTimed,
  type HostKv, type ResidentAttention, type ResidentShape, type StepRows,
} from './resident-attention.js';

/** The host-side policy's knobs (infinigen.ts). */
export interface InfinigenResidentKnobs {
  topK: number;
  partialRatio: number;
  window: number; // a multiple of INFINIGEN_KEY_GROUP: a completed key group is contiguous in the window ring
  sinks: number;
}

/** Tokens per key group of the low-bit copy. */
export const INFINIGEN_KEY_GROUP = 64; // the larger KIVI group: half the per-channel zero/scale bytes of 32

/** Bits per key channel holding the bytes of partialRatio of the channels at 16 bits: 1, 2 or 4 (4 at most). */
export function infinigenKeyBits(partialRatio: number): 1 | 2 | 4 {
  const bits = partialRatio * 16;
  return bits >= 4 ? 4 : bits >= 2 ? 2 : 1;
}

/** Hot slots per KV head: [sinks][window ring][top-k]. */
const hotCapacity = (k: InfinigenResidentKnobs): number => k.sinks + k.window + k.topK;

function keysShape(c: ModelConfig, capacity: number, k: InfinigenResidentKnobs, seqs = 1) {
  return {
    numKvHeads: c.numKvHeads * seqs, headDim: c.headDim, bits: infinigenKeyBits(k.partialRatio), keyGroupSize: INFINIGEN_KEY_GROUP as 64,
    valueGroupSize: c.headDim, capacityTokens: capacity, keysOnly: true,
  };
}

/** Bytes of one sequence's share of each per-sequence buffer (sequence s's lies s of these into the buffer). */
function perSeqBytes(c: ModelConfig, capacity: number, k: InfinigenResidentKnobs, blocks: number) {
  return {
    keys: deviceLowBitLayout(keysShape(c, capacity, k)).layerBytes, // a layer's KIVI keys: Hkv sections
    hot: kvRegionBytes(c, hotCapacity(k)), // [Hkv, hotCap, 2, D]
    picks: c.numKvHeads * k.topK * 4, // int32 [Hkv, topK], best first
    scores: c.numKvHeads * capacity * 4, // f32 [Hkv, capacity]
    blockTable: blocks * 4, // int32 [blocks]
  };
}

/**
 * The device buffers of a batch of `seqs` sequences (one sequence: seqs 1), sequence-major so that one launch covers
 * the batch: sequence s's part of each per-sequence buffer follows sequence s - 1's, and a batch's keys, hot sets and
 * picks read as one sequence of seqs * Hkv heads.
 */
function infinigenLayout(c: ModelConfig, capacity: number, k: InfinigenResidentKnobs, seqs: number, blocks = Math.ceil(capacity)): DeviceLayout {
  const per = perSeqBytes(c, capacity, k, blocks);
  const hotCap = hotCapacity(k);
  const layout = new DeviceLayout()
    .add('lse', seqs * c.numHeads * 4) // f32 [seqs, nH]
    .add('attnScratch', cudaAttendScratchBytes({ numKvHeads: seqs * c.numKvHeads, groupSize: c.numHeads / c.numKvHeads, headDim: c.headDim, maxRows: hotCap }));
  for (let l = 0; l < c.numLayers; l++) {
    layout.add(`keys${l}`, seqs * per.keys);
    layout.add(`hot${l}`, seqs * per.hot);
    layout.add(`picks${l}`, seqs * per.picks);
  }
  return layout
    .add('specX', seqs * c.hiddenSize * 4) // f32 [seqs, H]: layer l's input, set aside for the copy stream
    .add('specN', seqs * c.hiddenSize * 4) // f32 [seqs, H]: normed with layer l + 1's input norm
    .add('specQ', seqs * c.numHeads * c.headDim * 4) // f32 [seqs, nH, D]: layer l + 1's speculated queries, rotated
    .add('scores', seqs * per.scores)
    .add('gatherTable', seqs * c.numKvHeads * k.topK * 8) // uint32 [seqs * Hkv * topK, 2]
    .add('blockTable', seqs * per.blockTable); // int32 [seqs, blocks]: each sequence's table, padded with its first block
}

/**
 * Bytes infinigen keeps on the device for `seqs` sequences of up to `capacity` tokens each (the part the budget
 * caps): the batch's leader holds them all.
 */
export function infinigenDeviceBytes(c: ModelConfig, capacity: number, k: InfinigenResidentKnobs, seqs = 1): number {
  return infinigenLayout(c, capacity, k, seqs).bytes;
}

/** A batch step's launch arguments, the same at every layer: made once a step (PerStep, keyed by its rows). */
interface BatchArgs {
  fullTopK: boolean; // every sequence ranks a full top-k: one scores / top-k / gather launch for all
  maxRanked: number; // the most tokens a sequence ranks (the top-k's n)
  topKCounts: Int32Array | undefined; // [B * Hkv] tokens each row ranks, when the sequences differ
  groups: number; // key groups to score: the most any sequence has
  blocks: Int32Array; // [B] the host block each sequence's token lands in
  offsets: Int32Array; // [B] its row in that block
  slots: Int32Array; // [B] its slot in the window ring
  hotCounts: Int32Array; // [B * Hkv] hot rows each head attends
}

/** What every sequence of a batch shares: the leader's device buffers, events and speculation. */
class Shared {
  readonly arena: DeviceArena;
  readonly per: ReturnType<typeof perSeqBytes>;
  readonly blocks: number; // block-table entries per sequence
  readonly fetched: number[]; // [numLayers] event after the copy stream's pick and fetch for that layer, 0 when none
  readonly copyEvents: Array<[number, number]> = []; // (start, end) of each layer's gathers: the copy time
  readonly stallEvents: Array<[number, number]> = []; // (before, after) each compute-stream wait for a layer's fetch
  readonly exposedEvents: Array<[number, number]> = []; // layer 0's pick and gather, on the compute stream: copy time never hidden
  readonly members: InfinigenResident[] = [];
  constructor(c: ModelConfig, capacity: number, k: InfinigenResidentKnobs, readonly seqs: number) {
    this.blocks = Math.ceil(capacity); // a block holds at least one token: enough entries for any block size
    this.per = perSeqBytes(c, capacity, k, this.blocks);
    this.fetched = new Array<number>(c.numLayers).fill(0);
    this.arena = DeviceArena.create(infinigenLayout(c, capacity, k, seqs, this.blocks));
  }
}

/**
 * One sequence's infinigen. The first sequence of a batch (the leader, made with the batch size) allocates the device
 * buffers of all; the others are made with { leader } and use their part of them. Each layer of a batch runs as one launch per kernel over every sequence
 * (attendBatch): the speculation's norm, projection and RoPE over every row, then the scores, top-k and gather of all
 * sequences' heads at once, between one pair of timing events, and one event the next layer waits for.
 */
export class InfinigenResident implements ResidentAttention {
  readonly speculative = false;
  readonly waitsForHost = false;
  /** One launch per kernel for the whole batch (false: a launch per sequence, the reference the tests hold it to). */
  batchedKernels = true;
  /** Profiling: marks the copy stream's phases of the speculation (a PhaseProfile of copyStream). */
  copyProfile: { mark(phase: string): void } | null = null;
  readonly #shared: Shared;
  readonly #hotCap: number;
  readonly #w: Array<{ inNorm: DevRef; qkv: DevRef; qkvBias: DevRef | null }>; // each layer's query-side weights
  readonly #counts: Int32Array;
  readonly #keyShape: ReturnType<typeof keysShape>; // one sequence's low-bit keys' shape fields, which every key kernel takes
  readonly #batch = new PerStep<BatchArgs, readonly StepRows[]>((steps) => this.#batchArgs(steps));

  constructor(
    readonly s: ResidentShape,
    readonly k: InfinigenResidentKnobs,
    readonly host: HostKv,
    readonly copyStream: number,
    weights: DeviceArena, // weightLayout(c) (cuda-weights.ts)
    seqs: number | { leader: InfinigenResident } = 1, // the leader: the batch's size; the others: their leader
  ) {
    const c = s.config;
    if (k.window < INFINIGEN_KEY_GROUP || k.window % INFINIGEN_KEY_GROUP !== 0) throw new KvoffArgumentError('infinigen window', `a positive multiple of ${INFINIGEN_KEY_GROUP}`, k.window);
    if (!Number.isSafeInteger(k.topK) || k.topK < 1) throw new KvoffArgumentError('infinigen topK', 'an integer >= 1', k.topK);
    this.#hotCap = hotCapacity(k);
    this.#w = Array.from({ length: c.numLayers }, (_, l) => ({
      inNorm: weights.ref(`${l}.inNorm`), qkv: weights.ref(`${l}.qkv`), qkvBias: c.attentionBias ? weights.ref(`${l}.qkvBias`) : null,
    }));
    this.#counts = new Int32Array(c.numKvHeads);
    this.#keyShape = keysShape(c, s.capacity, k);
    if (typeof seqs === 'number') {
      if (!Number.isSafeInteger(seqs) || seqs < 1) throw new KvoffArgumentError('infinigen batch', 'an integer >= 1', seqs);
      this.#shared = new Shared(c, s.capacity, k, seqs);
    } else {
      const lead = seqs.leader;
      this.#shared = lead.#shared;
      // One sequence's share of the leader's buffers is sized for the leader's shape and knobs; the batched store and
      // gather address every sequence's blocks through one host region.
      const same = (x: ReturnType<HostKv['region']>, y: ReturnType<HostKv['region']>) => x.handle === y.handle && x.offset === y.offset && x.numBlocks === y.numBlocks;
      if (s.capacity !== lead.s.capacity || k.topK !== lead.k.topK || k.window !== lead.k.window || k.sinks !== lead.k.sinks || k.partialRatio !== lead.k.partialRatio || !same(host.region(0), lead.host.region(0)))
        throw new Error('infinigen: a sequence joins a batch whose leader has another capacity, other knobs or another host region');
    }
    this.seq = this.#shared.members.length;
    try {
      if (this.seq >= this.#shared.seqs) throw new Error(`infinigen: a batch of ${this.#shared.seqs} is full`);
      if (host.blockIds.length > this.#shared.blocks) throw new Error(`infinigen: ${host.blockIds.length} blocks, more than the ${this.#shared.blocks} a sequence has room for`);
      // This sequence's row of the block table, padded with its first block (the gather clamps to the table).
      const bt = new Int32Array(this.#shared.blocks).fill(host.blockIds[0] ?? 0);
      bt.set(host.blockIds);
      native().cudaArenaWrite({ handle: this.#shared.arena.handle, offset: this.#ref('blockTable').devOffset, data: new Uint8Array(bt.buffer) });
    } catch (err) {
      if (this.seq === 0) this.#shared.arena.free();
      throw err;
    }
    this.#shared.members.push(this);
  }

  /** This sequence's index in its batch (0: the leader). */
  readonly seq: number;

  /** A batch's leader holds every sequence's device memory; the others none. */
  get deviceBytes(): number {
    return this.seq === 0 ? this.#shared.arena.bytes : 0;
  }

  /** A buffer of the batch (sequence 0's part first). */
  ref(name: string, byteOffset = 0): DevRef {
    return this.#shared.arena.ref(name, byteOffset);
  }

  /** This sequence's part of a per-sequence buffer (keysL, hotL, picksL, scores, blockTable). */
  #ref(name: string): DevRef {
    const kind = name.replace(/\d+$/, '') as keyof Shared['per'];
    return this.ref(name, this.seq * this.#shared.per[kind]);
  }

  #keys(layer: number, stream = this.s.stream) {
    return { ...this.#keyShape, lowBit: this.#ref(`keys${layer}`), stream };
  }

  /** Tokens ranked for the top-k among n stored: those between the sinks and the window (all of them when fewer than topK). */
  #ranked(n: number): number {
    const { sinks, window, topK } = this.k;
    if (n < sinks + window + 1) throw new KvoffArgumentError('infinigen context', `at least sinks + window + 1 = ${sinks + window + 1} tokens`, n);
    return Math.min(topK, n - sinks - window);
  }

  /** Key groups covering [0, n - window): quantized already, since the window holds at least one group and a group is quantized as soon as its last token is stored. */
  #groups(n: number): number {
    return Math.ceil((n - this.k.window) / INFINIGEN_KEY_GROUP);
  }

  /** Scores layer `layer`'s quantized keys with q ([nH, D]) and takes each head's best, on `on`; returns the picks per head. */
  #pick(layer: number, q: DevRef, n: number, on: number): number {
    const c = this.s.config;
    const { sinks, window } = this.k;
    const ranked = this.#ranked(n);
    native().cudaKiviScores({ ...this.#keys(layer, on), groupSize: c.numHeads / c.numKvHeads, q, numGroups: this.#groups(n), out: this.#ref('scores'), ldOut: this.s.capacity });
    native().cudaTopK({ scores: this.#ref('scores'), rows: c.numKvHeads, ld: this.s.capacity, first: sinks, n: n - window - sinks, k: ranked, out: this.#ref(`picks${layer}`), stream: on });
    return ranked;
  }

  /** Gathers the `ranked` picks of each head from the pinned host KV into the hot set's top-k slots, on `on`. */
  #fetch(layer: number, ranked: number, on: number): void {
    const { sinks, window } = this.k;
    native().cudaKvGatherDevice({
      ...this.host.region(layer), blockTable: this.#ref('blockTable'), tableLen: this.#shared.blocks, positions: this.#ref(`picks${layer}`),
      ldPositions: ranked, n: ranked, dst: this.#ref(`hot${layer}`), dstCapacity: this.#hotCap, dstSlot: sinks + window, table: this.ref('gatherTable'), stream: on,
    });
  }

  /**
   * Every sequence's pick of `layer` with its query (sequence i's at q + i * [nH, D]), then the gathers, between one
   * pair of timing events: one launch each for the batch when every sequence ranks a full top-k, else one a sequence.
   */
  #pickAndFetchAll(seqs: InfinigenResident[], layer: number, q: DevRef, steps: readonly StepRows[], on: number): [number, number] {
    const c = this.s.config;
    const { sinks, window, topK } = this.k;
    const batch = this.#whole(seqs, steps) ? this.#batch.at(steps) : null;
    if (!batch?.fullTopK) {
      const qAt = (i: number) => ({ devHandle: q.devHandle, devOffset: q.devOffset + i * c.numHeads * c.headDim * 4 });
      const ranked = seqs.map((x, i) => x.#pick(layer, qAt(i), steps[i].pos + 1, on));
      const t0 = native().cudaEventRecord({ stream: on, timing: true });
      seqs.forEach((x, i) => x.#fetch(layer, ranked[i], on));
      return [t0, native().cudaEventRecord({ stream: on, timing: true })];
    }
    const B = seqs.length;
    native().cudaKiviScores({
      ...keysShape(c, this.s.capacity, this.k, B), lowBit: this.ref(`keys${layer}`), stream: on, groupSize: c.numHeads / c.numKvHeads, q,
      numGroups: batch.groups, out: this.ref('scores'), ldOut: this.s.capacity,
    });
    if (on === this.copyStream) this.copyProfile?.mark('scores');
    native().cudaTopK({
      scores: this.ref('scores'), rows: B * c.numKvHeads, ld: this.s.capacity, first: sinks, n: batch.maxRanked, counts: batch.topKCounts, k: topK,
      out: this.ref(`picks${layer}`), stream: on,
    });
    if (on === this.copyStream) this.copyProfile?.mark('top-k');
    const t0 = native().cudaEventRecord({ stream: on, timing: true });
    native().cudaKvGatherDevice({
      ...this.host.region(layer), seqs: B, blockTable: this.ref('blockTable'), tableLen: this.#shared.blocks, positions: this.ref(`picks${layer}`),
      ldPositions: topK, n: topK, dst: this.ref(`hot${layer}`), dstCapacity: this.#hotCap, dstSlot: sinks + window, table: this.ref('gatherTable'), stream: on,
    });
    if (on === this.copyStream) this.copyProfile?.mark('gather');
    return [t0, native().cudaEventRecord({ stream: on, timing: true })];
  }

  /**
   * Layer l + 1's picks, enqueued on the copy stream from layer l's input (a.x before layer l's MLP changes it): its
   * RMSNorm and query projection (bias, RoPE at each sequence's position) over every sequence's row at once, then
   * each sequence's scores, top-k and gather. The sequences' rows are consecutive (one row each: no speculative row).
   */
  #speculate(seqs: InfinigenResident[], next: number, a: DeviceArena, steps: readonly StepRows[]): void {
    const c = this.s.config;
    const sh = this.#shared;
    const on = this.copyStream;
    const B = seqs.length;
    const row0 = steps[0].row0 ?? 0;
    const qWidth = c.numHeads * c.headDim;
    const w = this.#w[next];
    native().cudaCopyD2D({ src: a.ref('x', row0 * c.hiddenSize * 4), dst: this.ref('specX'), bytes: B * c.hiddenSize * 4, stream: this.s.stream });
    waitFor(on, this.s.stream);
    this.copyProfile?.mark('copy stream idle');
    native().cudaRmsNorm({ x: this.ref('specX'), weight: w.inNorm, out: this.ref('specN'), rows: B, n: c.hiddenSize, eps: c.rmsNormEps, stream: on });
    // The fused q|k|v weight is [width, H] row-major: its first nH * D rows are the query projection.
    native().cudaGemm({ w: w.qkv, x: this.ref('specN'), y: this.ref('specQ'), m: B, n: qWidth, k: c.hiddenSize, stream: on });
    if (w.qkvBias) native().cudaAddBias({ x: this.ref('specQ'), bias: w.qkvBias, rows: B, n: qWidth, stream: on });
    // The rows' cos/sin (each sequence's position) stay put until the compute stream has waited for this layer's fetch.
    const rope = { rows: B, heads: c.numHeads, headDim: c.headDim, cos: a.ref('cos', row0 * c.headDim * 4), sin: a.ref('sin', row0 * c.headDim * 4), stream: on };
    native().cudaRope({ ...rope, x: this.ref('specQ') });
    this.copyProfile?.mark('speculated query');
    sh.copyEvents.push(this.#pickAndFetchAll(seqs, next, this.ref('specQ'), steps, on));
    if (sh.fetched[next] !== 0) native().cudaEventFree({ event: sh.fetched[next] });
    sh.fetched[next] = native().cudaEventRecord({ stream: on });
  }

  /** Makes the compute stream wait for a layer's fetch, timed (waitTimed: the stall is zero when it came first). */
  #awaitFetch(layer: number): void {
    waitTimed(this.s.stream, this.#shared.fetched[layer], this.#shared.stallEvents);
    this.#shared.fetched[layer] = 0;
  }

  /** A prefilled layer (staged on the device): its low-bit keys (complete groups) and the hot sinks and window. */
  load(layer: number, staged: StagedLayer): void {
    const groups = Math.floor(staged.n / INFINIGEN_KEY_GROUP) * INFINIGEN_KEY_GROUP;
    native().cudaKiviQuantize({ ...this.#keys(layer), kv: staged.kv(0), dtype: this.s.dtype, kvCapacity: staged.capacity, kvFirstRow: 0, first: 0, tokens: groups });
    const hot = this.#ref(`hot${layer}`);
    fillSinksAndWindow(this.s.config, staged, (off) => ({ devHandle: hot.devHandle, devOffset: hot.devOffset + off }), this.#hotCap, this.k.sinks, this.k.window, this.s.stream);
  }

  attend(layer: number, a: DeviceArena, step: StepRows): void {
    this.attendBatch(layer, a, [step], [this]);
  }

  /** A layer of every sequence of the batch (this one the leader, peers[0]); see the class comment. */
  attendBatch(layer: number, a: DeviceArena, steps: readonly StepRows[], peers: readonly ResidentAttention[]): void {
    const seqs = peers as InfinigenResident[];
    if (seqs[0] !== this || seqs.some((x) => x.#shared !== this.#shared)) throw new Error(`infinigen: a batch of ${seqs.length} not led by its own leader`);
    // The speculation reads every sequence's row at once: one row each, one after another.
    if (!rowsConsecutive(steps)) throw new Error('infinigen: a batch\'s rows must be one a sequence, consecutive');
    steps.forEach((step, i) => seqs[i].#ranked(step.pos + 1)); // a context too short is refused before anything is enqueued
    const whole = this.#whole(seqs, steps);
    if (whole) this.#storeAll(seqs, layer, a, steps);
    else steps.forEach((step, i) => seqs[i].#store(layer, a, step));
    steps[0].mark?.('store');
    const q0 = qkvRefs(this.s.config, a, steps[0].row0 ?? 0).q;
    if (layer === 0) this.#shared.exposedEvents.push(this.#pickAndFetchAll(seqs, 0, this.#ownQueries(a, steps), steps, this.s.stream));
    else if (this.#shared.fetched[layer] !== 0) this.#awaitFetch(layer);
    else throw new Error(`infinigen: layer ${layer} attended with no fetch speculated for it`);
    steps[0].mark?.('layer 0 pick / wait');
    if (layer + 1 < this.s.config.numLayers) this.#speculate(seqs, layer + 1, a, steps); // beside this layer's attention and MLP
    if (whole) this.#attendHotAll(seqs, layer, a, steps, q0);
    else steps.forEach((step, i) => seqs[i].#attendHot(layer, a, step));
    steps[0].mark?.('hot attention');
  }

  /**
   * Whether one launch a kernel can run these sequences: the batch in order (its buffers then read as one), within
   * the batched kernels' bounds (64 tokens a write, 256 heads an attention or top-k call); else a launch a sequence.
   */
  #whole(seqs: readonly InfinigenResident[], steps: readonly StepRows[]): boolean {
    return this.batchedKernels && seqs.length === steps.length && oneLaunchFits(seqs.length, this.s.config.numKvHeads) && seqs.every((x, i) => x.seq === i);
  }

  /** The batch step's launch arguments (BatchArgs), for sequences 0 .. B - 1 in order (#whole). */
  #batchArgs(steps: readonly StepRows[]): BatchArgs {
    const H = this.s.config.numKvHeads;
    const { sinks, window, topK } = this.k;
    const seqs = this.#shared.members;
    const blockSize = this.host.region(0).blockSize;
    const ns = steps.map((st) => st.pos + 1);
    const ranked = ns.map((n) => n - window - sinks); // tokens each sequence ranks
    const maxRanked = Math.max(...ranked);
    const perHead = (f: (i: number) => number) => Int32Array.from({ length: steps.length * H }, (_, r) => f(Math.floor(r / H)));
    return {
      fullTopK: ranked.every((r) => r >= topK),
      maxRanked,
      topKCounts: ranked.every((r) => r === maxRanked) ? undefined : perHead((i) => ranked[i]),
      groups: Math.max(...ns.map((n) => this.#groups(n))),
      blocks: Int32Array.from(steps, (st, i) => {
        const b = seqs[i].host.blockIds[Math.floor(st.pos / blockSize)];
        if (b === undefined) throw new KvoffArgumentError('infinigen position', `a position inside sequence ${i}'s ${seqs[i].host.blockIds.length} blocks of ${blockSize}`, st.pos);
        return b;
      }),
      offsets: Int32Array.from(steps, (st) => st.pos % blockSize),
      slots: Int32Array.from(steps, (st) => sinks + (st.pos % window)),
      hotCounts: perHead((i) => sinks + window + this.#ranked(ns[i])),
    };
  }

  /** Layer 0's queries, [B, nH, D] one after another (the fused qkv rows hold k and v between them): copied into specQ. */
  #ownQueries(a: DeviceArena, steps: readonly StepRows[]): DevRef {
    const c = this.s.config;
    const qBytes = c.numHeads * c.headDim * 4;
    steps.forEach((step, i) => native().cudaCopyD2D({ src: qkvRefs(c, a, step.row0 ?? 0).q, dst: this.ref('specQ', i * qBytes), bytes: qBytes, stream: this.s.stream }));
    return this.ref('specQ');
  }

  /** The step's token: home to the pinned host cache, into the window ring, and a completed key group quantized. */
  #store(layer: number, a: DeviceArena, step: StepRows): void {
    const { config: c, dtype, stream } = this.s;
    const { sinks, window } = this.k;
    const hot = this.#ref(`hot${layer}`);
    const { k, v } = qkvRefs(c, a, step.row0 ?? 0);
    native().cudaKvStoreHost({ ...this.host.region(layer), k, v, tokens: 1, blockIds: this.host.blockIds, start: step.pos, stream });
    native().cudaKvWrite({ numKvHeads: c.numKvHeads, headDim: c.headDim, dtype, stream, k, v, tokens: 1, dst: hot, capacity: this.#hotCap, slot: sinks + (step.pos % window) });
    this.#quantizeGroup(layer, step.pos);
  }

  /** When position pos completes a key group: that group (in the window ring) into the low-bit keys. */
  #quantizeGroup(layer: number, pos: number): void {
    const n = pos + 1;
    if (n % INFINIGEN_KEY_GROUP !== 0) return;
    const first = n - INFINIGEN_KEY_GROUP;
    native().cudaKiviQuantize({ ...this.#keys(layer), kv: this.#ref(`hot${layer}`), dtype: this.s.dtype, kvCapacity: this.#hotCap, kvFirstRow: this.k.sinks + (first % this.k.window), first, tokens: INFINIGEN_KEY_GROUP });
  }

  /** #store for the whole batch: one host store and one window write for every sequence's token. */
  #storeAll(seqs: InfinigenResident[], layer: number, a: DeviceArena, steps: readonly StepRows[]): void {
    const { config: c, dtype, stream } = this.s;
    const { blocks, offsets, slots } = this.#batch.at(steps);
    const { k, v } = qkvRefs(c, a, steps[0].row0 ?? 0);
    const srcRowStride = qkvWidth(c); // the sequences' rows are consecutive rows of the fused qkv
    const src = { k, v, srcRowStride, tokens: steps.length, stream };
    native().cudaKvStoreHost({ ...this.host.region(layer), ...src, blocks, offsets });
    native().cudaKvWrite({ ...src, numKvHeads: c.numKvHeads, headDim: c.headDim, dtype, dst: this.ref(`hot${layer}`), capacity: this.#hotCap, slots });
    steps.forEach((st, i) => seqs[i].#quantizeGroup(layer, st.pos));
  }

  /** Attention of the step's row over the hot set: sinks, window ring and the fetched top-k. */
  #attendHot(layer: number, a: DeviceArena, step: StepRows): void {
    const { config: c, dtype, stream } = this.s;
    const { sinks, window } = this.k;
    const hot = sinks + window + this.#ranked(step.pos + 1);
    if (this.#counts[0] !== hot) this.#counts.fill(hot); // [Hkv] hot rows attended
    const row0 = step.row0 ?? 0;
    native().cudaAttendDecode({
      numKvHeads: c.numKvHeads, headDim: c.headDim, dtype, stream, kv: this.#ref(`hot${layer}`), capacity: this.#hotCap, groupSize: c.numHeads / c.numKvHeads,
      counts: this.#counts, q: qkvRefs(c, a, row0).q, scale: scaleOf(c), out: attnRef(c, a, row0), lse: this.ref('lse'),
      scratch: this.ref('attnScratch'), scratchBytes: this.#shared.arena.bytesOf('attnScratch'),
    });
  }

  /** #attendHot for the whole batch: one launch over every sequence's hot set, each head attending its sequence's. */
  #attendHotAll(seqs: InfinigenResident[], layer: number, a: DeviceArena, steps: readonly StepRows[], q0: DevRef): void {
    const { config: c, dtype, stream } = this.s;
    const counts = this.#batch.at(steps).hotCounts;
    native().cudaAttendDecode({
      numKvHeads: c.numKvHeads, seqs: seqs.length, qSeqStride: qkvWidth(c), headDim: c.headDim, dtype, stream, kv: this.ref(`hot${layer}`), capacity: this.#hotCap,
      groupSize: c.numHeads / c.numKvHeads, counts, q: q0, scale: scaleOf(c), out: attnRef(c, a, steps[0].row0 ?? 0), lse: this.ref('lse'),
      scratch: this.ref('attnScratch'), scratchBytes: this.#shared.arena.bytesOf('attnScratch'),
    });
  }

  drainCopyMs(): { copyMs: number; stallMs: number } {
    if (this.seq !== 0) return { copyMs: 0, stallMs: 0 }; // the leader's events are the batch's
    const sh = this.#shared;
    const exposed = drainPairs(sh.exposedEvents);
    return { copyMs: drainPairs(sh.copyEvents) + exposed, stallMs: drainPairs(sh.stallEvents) + exposed };
  }

  /** The leader frees the batch's buffers and events (after its members: dispose them first or together). */
  dispose(): void {
    if (this.seq !== 0) return;
    const sh = this.#shared;
    for (const pairs of [sh.copyEvents, sh.stallEvents, sh.exposedEvents]) freePairs(pairs);
    for (const [l, e] of sh.fetched.entries()) {
      if (e !== 0) native().cudaEventFree({ event: e });
      sh.fetched[l] = 0;
    }
    sh.arena.free();
  }
}
