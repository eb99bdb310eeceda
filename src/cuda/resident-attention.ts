// Device-resident decode attention for the CUDA step: q, k, v come from the fused qkv activations on the device and
// the output goes to `attn` there, with no host round trip (the CPU parts aside). Four policies:
//   dense:    the whole KV of every layer in device memory, flash-decoding over it;
//   specache: a KIVI low-bit copy of the whole KV plus a hot set (sinks, recent window, top-k) on the device, the
//             full-precision KV in pinned host memory; the speculative row's low-bit scores pick the next step's
//             top-k, which the copy stream selects and fetches (zero-copy gather) while the rest of this step computes;
//   tiered:   specache's device part picked by the step's own query, plus the next cpuK tokens by score attended
//             exactly by the CPU workers (tiered-cpu-part.ts);
//   exact:    sinks and window on the device, every other token attended exactly by the CPU workers over the host
//             KV, merged by LSE: only q goes down and (o, lse) comes back per layer.
import { HostArena } from '../arena.js';
import type { CpuAttentionPool } from '../cpu-attention.js';
import { KvoffArgumentError } from '../errors.js';
import { cudaAttendScratchBytes } from '../kernels/device-attention-ref.js';
import { cudaKiviAttendScratchBytes, deviceLowBitLayout } from '../kernels/device-lowbit-layout.js';
import type { ModelConfig } from '../model/types.js';
import { native, type DevRef, type KvRegion } from '../native.js';
import { DeviceArena, DeviceLayout } from './device-arena.js';
import { qkvWidth } from './layer-kernels.js';
import { fillSinksAndWindow, type StagedLayer } from './resident-context.js';
import { attendCpuPicks, type CpuPicksRequest } from './tiered-cpu-part.js';

/** The host-resident full-precision KV: one pinned arena, paged as kvoff's host cache lays it out, one sequence. */
export interface HostKv {
  region: (layer: number) => KvRegion;
  blockIds: Int32Array; // the sequence's blocks, logical order
}

export interface StepRows {
  pos: number; // position of row 0 (the real token); row 1, when present, is the speculative token at pos + 1
  rows: 1 | 2;
  row0?: number; // the sequence's first row in the step's activations (a batch's sequences lie one after another); default 0
  mark?: (phase: string) => void; // profiling: the GPU time since the last mark is booked to `phase`
  signal?: AbortSignal; // stops exact's CPU part mid-layer
}

export interface ResidentAttention {
  readonly deviceBytes: number; // KV-side device memory, the part a vramBudget caps
  readonly speculative: boolean; // wants a second (speculative) row each step
  readonly waitsForHost: boolean; // each layer waits for a CPU part (exact, cpu, tiered): a step cannot run ahead
  /** The full-precision KV's home in pinned host memory, which prefill fills too; null when it lives on the device (dense). */
  readonly host: HostKv | null;
  /** Where prefill writes a layer's KV when the policy keeps it whole on the device (dense); absent: a staging buffer. */
  prefillKv?(layer: number): { kv: DevRef; capacity: number };
  /** Takes a prefilled layer; lastQ is the last prompt token's query [nH, D] f32 (specache picks its first hot set with it). */
  load(layer: number, staged: StagedLayer, lastQ: DevRef): void;
  /** Enqueues (or, for exact, runs) layer `layer`'s attention of the step: reads a.qkv, writes a.attn. */
  attend(layer: number, a: DeviceArena, step: StepRows): Promise<void> | void;
  /**
   * Present where a batch's layer is better run for all sequences at once: called on the first sequence's attention
   * with every sequence's rows (steps[s]) and attention (peers[s]), instead of each one's attend.
   */
  attendBatch?(layer: number, a: DeviceArena, steps: readonly StepRows[], peers: readonly ResidentAttention[]): Promise<void> | void;
  /**
   * Copy time of the prefetches so far and the part of it the compute stream waited for (ms), freeing their timing
   * events; absent when the policy fetches nothing. Call after a synchronize.
   */
  drainCopyMs?(): { copyMs: number; stallMs: number };
  dispose(): void;
}

export interface ResidentShape {
  config: ModelConfig;
  capacity: number; // tokens the run may reach
  dtype: 'bf16' | 'f16';
  stream: number; // compute stream
}

export const scaleOf = (c: ModelConfig): number => 1 / Math.sqrt(c.headDim);

/** Row r's q ([nH, D] = [Hkv, G, D]), k and v ([Hkv, D]) inside the fused qkv activations. */
export function qkvRefs(c: ModelConfig, a: DeviceArena, r: number): { q: DevRef; k: DevRef; v: DevRef } {
  const row = r * qkvWidth(c) * 4;
  const { numHeads: nH, numKvHeads: nKv, headDim: D } = c;
  return { q: a.ref('qkv', row), k: a.ref('qkv', row + nH * D * 4), v: a.ref('qkv', row + (nH + nKv) * D * 4) };
}

/** Row r's attention output [nH, D] f32 inside the activations' attn. */
export const attnRef = (c: ModelConfig, a: DeviceArena, r: number): DevRef => a.ref('attn', r * c.numHeads * c.headDim * 4);

/** [Hkv, rows, 2, D] 16-bit. */
export const kvRegionBytes = (c: ModelConfig, rows: number): number => c.numKvHeads * rows * 2 * c.headDim * 2;

/** Buffers every resident policy needs besides its KV: partial outputs and kernel scratch. */
export function partialsLayout(c: ModelConfig, maxRows: number, layout = new DeviceLayout()): DeviceLayout {
  const G = c.numHeads / c.numKvHeads;
  return layout
    .add('oPart', c.numHeads * c.headDim * 4) // [nH, D] a second partial to merge
    .add('lse', 2 * c.numHeads * 4) // [2 rows, nH]
    .add('lsePart', c.numHeads * 4) // [nH]
    .add('attnScratch', cudaAttendScratchBytes({ numKvHeads: c.numKvHeads, groupSize: G, headDim: c.headDim, maxRows }));
}

/**
 * What every layer of one step shares (e.g. per-head counts), made once a step rather than once a layer: keyed by the
 * step's position, or by its rows (the decoder hands every layer of a step the same StepRows array).
 */
export class PerStep<T, K = number> {
  #key: K | undefined = undefined;
  #value: T | null = null;
  constructor(readonly make: (key: K) => T) {}
  at(key: K): T {
    if (key !== this.#key || this.#value === null) {
      this.#value = this.make(key);
      this.#key = key;
    }
    return this.#value;
  }
}

/** Milliseconds between each (start, end) pair of timing events, summed; empties `pairs` and frees the events. */
export function drainPairs(pairs: Array<[number, number]>): number {
  let ms = 0;
  for (const [t0, t1] of pairs.splice(0)) {
    ms += native().cudaEventElapsedMs({ start: t0, end: t1 });
    native().cudaEventFree({ event: t0 });
    native().cudaEventFree({ event: t1 });
  }
  return ms;
}

/** Frees both events of every pair unread (after a failed step some may never complete) and empties `pairs`. */
export function freePairs(pairs: Array<[number, number]>): void {
  for (const pair of pairs.splice(0)) for (const e of pair) native().cudaEventFree({ event: e });
}

/**
 * Makes `stream` wait for `event` (then freed), between two timing events pushed onto `stalls`: their distance is
 * the time the stream stalled on it (zero when it had completed first).
 */
export function waitTimed(stream: number, event: number, stalls: Array<[number, number]>): void {
  const before = native().cudaEventRecord({ stream, timing: true });
  native().cudaStreamWaitEvent({ stream, event });
  stalls.push([before, native().cudaEventRecord({ stream, timing: true })]);
  native().cudaEventFree({ event });
}

/** Makes `stream` wait for the work enqueued on `after` so far. */
export function waitFor(stream: number, after: number): void {
  const e = native().cudaEventRecord({ stream: after });
  native().cudaStreamWaitEvent({ stream, event: e });
  native().cudaEventFree({ event: e }); // legal once waited on: CUDA releases it when it completes
}

/** [numLayers][seqs, Hkv, capacity, 2, D]: a batch's KV of each layer, sequence-major so one launch covers it. */
function denseLayout(c: ModelConfig, capacity: number, seqs: number): DeviceLayout {
  const layout = new DeviceLayout()
    .add('lse', seqs * c.numHeads * 4) // f32 [seqs, nH]
    .add('attnScratch', cudaAttendScratchBytes({ numKvHeads: seqs * c.numKvHeads, groupSize: c.numHeads / c.numKvHeads, headDim: c.headDim, maxRows: capacity }));
  for (let l = 0; l < c.numLayers; l++) layout.add(`kv${l}`, seqs * kvRegionBytes(c, capacity));
  return layout;
}

/** Bytes of dense's KV on the device for a run of `capacity` tokens (its partials and scratch aside, as the host-side plan counts it). */
export const denseKvBytes = (c: ModelConfig, capacity: number): number => c.numLayers * kvRegionBytes(c, capacity);

/**
 * Whether one batched launch covers `seqs` sequences of numKvHeads heads (native kBatchMaxSeqs, and kAttendMaxHeads =
 * kTopKMaxRowCounts); larger batches take a launch a sequence.
 */
export const oneLaunchFits = (seqs: number, numKvHeads: number): boolean => seqs <= 64 && seqs * numKvHeads <= 256;

/** Whether a batch's rows are one a sequence, consecutive: the layout the batched launches read. */
export const rowsConsecutive = (steps: readonly StepRows[]): boolean => steps.every((st, i) => st.rows === 1 && (st.row0 ?? 0) === (steps[0].row0 ?? 0) + i);

/**
 * dense: every layer's KV in device memory. The first sequence of a batch (the leader, made with `seqs`) allocates
 * every sequence's, [numLayers][seqs, Hkv, capacity, 2, D]; the others join it. A batch's layer is one KV write and
 * one attention launch for all sequences (attendBatch).
 */
export class DenseResident implements ResidentAttention {
  readonly speculative = false;
  readonly waitsForHost = false;
  readonly host = null;
  /** One launch per kernel for the whole batch (false: a launch per sequence, the reference the tests hold it to). */
  batchedKernels = true;
  readonly seq: number; // index in the batch (0: the leader)
  readonly #arena: DeviceArena;
  readonly #seqs: number;
  readonly #members: DenseResident[]; // the batch's sequences in order, shared with the leader
  readonly #counts: PerStep<Int32Array>; // [Hkv] rows attended: every token up to the step's own
  // A batch's per-step arguments: each sequence's slot (its position) and its heads' counts [B * Hkv].
  readonly #batch: PerStep<{ slots: Int32Array; counts: Int32Array }, readonly StepRows[]>;
  constructor(readonly s: ResidentShape, seqs: number | { leader: DenseResident } = 1) {
    if (typeof seqs === 'number') {
      if (!Number.isSafeInteger(seqs) || seqs < 1) throw new KvoffArgumentError('dense batch', 'an integer >= 1', seqs);
      this.#arena = DeviceArena.create(denseLayout(s.config, s.capacity, seqs));
      this.#seqs = seqs;
      this.seq = 0;
      this.#members = [this];
    } else {
      const lead = seqs.leader;
      if (s.capacity !== lead.s.capacity) throw new Error(`dense: a sequence of capacity ${s.capacity} joins a batch sized for ${lead.s.capacity}`);
      if (lead.#members.length >= lead.#seqs) throw new Error(`dense: a batch of ${lead.#seqs} is full`);
      this.#arena = lead.#arena;
      this.#seqs = lead.#seqs;
      this.seq = lead.#members.length;
      this.#members = lead.#members;
      this.#members.push(this);
    }
    this.#counts = new PerStep((pos) => new Int32Array(s.config.numKvHeads).fill(pos + 1));
    const H = s.config.numKvHeads;
    this.#batch = new PerStep((steps) => ({
      slots: Int32Array.from(steps, (st) => st.pos),
      counts: Int32Array.from({ length: steps.length * H }, (_, i) => steps[Math.floor(i / H)].pos + 1),
    }));
  }

  /** A batch's leader holds every sequence's device memory; the others none. */
  get deviceBytes(): number {
    return this.seq === 0 ? this.#arena.bytes : 0;
  }
  /** This sequence's KV of a layer, [Hkv, capacity, 2, D]. */
  kv(layer: number): DevRef {
    return this.#arena.ref(`kv${layer}`, this.seq * kvRegionBytes(this.s.config, this.s.capacity));
  }
  prefillKv(layer: number): { kv: DevRef; capacity: number } {
    return { kv: this.kv(layer), capacity: this.s.capacity };
  }
  load(): void {} // prefill wrote the KV in place (prefillKv)

  attend(layer: number, a: DeviceArena, step: StepRows): void {
    const { config: c, capacity, dtype, stream } = this.s;
    const row0 = step.row0 ?? 0;
    const { q, k, v } = qkvRefs(c, a, row0);
    const shape = { numKvHeads: c.numKvHeads, headDim: c.headDim, dtype, capacity, stream };
    native().cudaKvWrite({ ...shape, k, v, tokens: 1, dst: this.kv(layer), slot: step.pos });
    native().cudaAttendDecode({
      ...shape, kv: this.kv(layer), groupSize: c.numHeads / c.numKvHeads, counts: this.#counts.at(step.pos),
      q, scale: scaleOf(c), out: attnRef(c, a, row0), lse: this.#arena.ref('lse'),
      scratch: this.#arena.ref('attnScratch'), scratchBytes: this.#arena.bytesOf('attnScratch'),
    });
  }

  /**
   * A layer of every sequence (this one the leader): each sequence's row into its own KV, then one attention over
   * all, each sequence's heads attending its rows up to its own position. Rows are one a sequence, consecutive.
   */
  attendBatch(layer: number, a: DeviceArena, steps: readonly StepRows[], peers: readonly ResidentAttention[]): void {
    const { config: c, capacity, dtype, stream } = this.s;
    const B = steps.length;
    const inOrder = peers.every((p, i) => p === this.#members[i]) && rowsConsecutive(steps);
    if (!this.batchedKernels || !inOrder || !oneLaunchFits(B, c.numKvHeads)) {
      steps.forEach((st, i) => (peers[i] as DenseResident).attend(layer, a, st));
      return;
    }
    const row0 = steps[0].row0 ?? 0;
    const { q, k, v } = qkvRefs(c, a, row0);
    const shape = { numKvHeads: c.numKvHeads, headDim: c.headDim, dtype, capacity, stream };
    const kv = this.#arena.ref(`kv${layer}`);
    const { slots, counts } = this.#batch.at(steps);
    native().cudaKvWrite({ ...shape, k, v, srcRowStride: qkvWidth(c), tokens: B, dst: kv, slots });
    native().cudaAttendDecode({
      ...shape, seqs: B, qSeqStride: qkvWidth(c), kv, groupSize: c.numHeads / c.numKvHeads, counts,
      q, scale: scaleOf(c), out: attnRef(c, a, row0), lse: this.#arena.ref('lse'),
      scratch: this.#arena.ref('attnScratch'), scratchBytes: this.#arena.bytesOf('attnScratch'),
    });
  }

  /** The leader frees the batch's memory (after its members: dispose them first or together). */
  dispose(): void {
    if (this.seq === 0) this.#arena.free();
  }
}

export interface SpecacheKnobs {
  topK: number;
  cpuK?: number; // tiered: the next cpuK tokens by score are attended exactly by the CPU workers (default 0: specache)
  sinks: number;
  window: number; // a multiple of keyGroupSize: a completed key group is contiguous in the window ring
  bits: 1 | 2 | 4;
  keyGroupSize: 32 | 64;
}

/** Bytes specache keeps on the device for a run of `capacity` tokens (the part the budget caps). */
export function specacheDeviceBytes(c: ModelConfig, capacity: number, k: SpecacheKnobs): number {
  return specacheLayout(c, capacity, k).bytes;
}

/** Hot slots per KV head: [sinks][window ring][top-k][the speculative token itself]. */
const hotCapacity = (k: SpecacheKnobs): number => k.sinks + k.window + k.topK + 1;

function lowBitShape(c: ModelConfig, capacity: number, k: SpecacheKnobs) {
  return { numKvHeads: c.numKvHeads, headDim: c.headDim, bits: k.bits, keyGroupSize: k.keyGroupSize, valueGroupSize: c.headDim, capacityTokens: capacity };
}

function specacheLayout(c: ModelConfig, capacity: number, k: SpecacheKnobs): DeviceLayout {
  const G = c.numHeads / c.numKvHeads;
  const layout = partialsLayout(c, hotCapacity(k));
  const lb = deviceLowBitLayout(lowBitShape(c, capacity, k));
  for (let l = 0; l < c.numLayers; l++) {
    layout.add(`lowBit${l}`, lb.layerBytes);
    layout.add(`hot${l}`, kvRegionBytes(c, hotCapacity(k))); // [Hkv, hotCap, 2, D]
    layout.add(`picks${l}`, c.numKvHeads * (k.topK + (k.cpuK ?? 0)) * 4); // int32 [Hkv, topK + cpuK], best first
    layout.add(`mask${l}`, c.numKvHeads * capacity); // u8 [Hkv, capacity]: 1 = a pick, attended in full precision
  }
  return layout
    .add('oTail', 2 * c.numHeads * c.headDim * 4) // [2 rows, nH, D]
    .add('lseTail', 2 * c.numHeads * 4) // [2 rows, nH]
    .add('scores', c.numKvHeads * capacity * 4) // f32 [Hkv, capacity]
    .add('selectQ', c.numLayers * c.numHeads * c.headDim * 4) // f32 [numLayers, nH, D]: each layer's selecting query, aside
    .add('gatherTable', c.numKvHeads * k.topK * 8) // uint32 [Hkv * topK, 2]
    .add('blockTable', capacity * 4) // int32 [<= capacity blocks]
    .add('tailScratch', cudaKiviAttendScratchBytes({ numKvHeads: c.numKvHeads, groupSize: G, headDim: c.headDim, maxTokens: capacity, rows: 2 }));
}

/**
 * specache, and tiered with cpuK > 0. tiered selects with the step's own query (no speculative row): the best topK
 * go to the device hot set, the next cpuK to the CPU workers (exact, over the host KV), the rest to the low-bit tail.
 */
export class SpecacheResident implements ResidentAttention {
  readonly speculative: boolean;
  readonly waitsForHost: boolean;
  readonly #cpuK: number;
  readonly #compact: HostArena | null;
  #ranked = 0; // picks per head of the last selection (the row stride of picks): topK, or for tiered up to topK + cpuK
  readonly #arena: DeviceArena;
  readonly #hotCap: number;
  readonly #counts: [Int32Array, Int32Array]; // hot rows each row attends, per KV head: the speculative row also sees its own slot
  #fetched = 0; // event after the copy stream's last selection and fetch, 0 when none is pending
  copyEvents: Array<[number, number]> = []; // (start, end) timing events of the prefetches, for the copy time
  stallEvents: Array<[number, number]> = []; // (before, after) the compute stream's wait for a prefetch
  /** 'overlap' (the design: selection and gather on the copy stream), 'serial' (both on the compute stream) or 'none' (selection on the copy stream, no fetch: a lower bound). */
  prefetch: 'overlap' | 'serial' | 'none' = 'overlap';

  constructor(
    readonly s: ResidentShape,
    readonly k: SpecacheKnobs,
    readonly host: HostKv,
    readonly copyStream: number,
    readonly pool: CpuAttentionPool | null = null, // tiered's CPU part
  ) {
    const c = s.config;
    this.#cpuK = k.cpuK ?? 0;
    this.speculative = this.#cpuK === 0;
    this.waitsForHost = this.#cpuK > 0;
    if (this.#cpuK > 0 && !pool) throw new KvoffArgumentError('tiered pool', 'a CpuAttentionPool for the CPU part (cpuK > 0)', pool);
    if (k.window % k.keyGroupSize !== 0) throw new KvoffArgumentError('specache window', `a multiple of keyGroupSize (${k.keyGroupSize})`, k.window);
    this.#hotCap = hotCapacity(k);
    this.#counts = [new Int32Array(c.numKvHeads).fill(this.#hotCap - 1), new Int32Array(c.numKvHeads).fill(this.#hotCap)];
    this.#arena = DeviceArena.create(specacheLayout(c, s.capacity, k));
    try {
      const bt = host.blockIds;
      native().cudaArenaWrite({ handle: this.#arena.handle, offset: this.#arena.ref('blockTable').devOffset, data: new Uint8Array(bt.buffer, bt.byteOffset, bt.byteLength) });
      // [Hkv, cpuK, 2, D] 16-bit: the CPU part's picks, gathered compact each layer (layers run one after another)
      this.#compact = this.#cpuK > 0 ? new HostArena(c.numKvHeads * this.#cpuK * 4 * c.headDim, { pin: true }) : null;
    } catch (err) {
      this.#arena.free();
      throw err;
    }
  }

  get deviceBytes(): number {
    return this.#arena.bytes;
  }
  get hotCap(): number {
    return this.#hotCap;
  }
  ref(name: string, byteOffset = 0): DevRef {
    return this.#arena.ref(name, byteOffset);
  }

  #lowBit(layer: number) {
    return { ...lowBitShape(this.s.config, this.s.capacity, this.k), lowBit: this.#arena.ref(`lowBit${layer}`), stream: this.s.stream };
  }

  /** Quantizes tokens [first, first + tokens) of a layer from a device KV region [Hkv, kvCapacity, 2, D] whose row kvFirstRow is token `first`. */
  quantize(layer: number, kv: DevRef, kvCapacity: number, kvFirstRow: number, first: number, tokens: number): void {
    native().cudaKiviQuantize({ ...this.#lowBit(layer), kv, dtype: this.s.dtype, kvCapacity, kvFirstRow, first, tokens });
  }

  /**
   * Picks the next step's top-k of this layer from query q ([nH, D]) and fetches it. Nothing in this step needs the
   * result, so with prefetch 'overlap' or 'none' it all runs on the copy stream, beside the rest of the step: q is
   * first copied aside (the next layer reuses its buffer), then scores, top-k (picks and the tail's exclusion mask)
   * and the gather follow there. 'serial' does the same on the compute stream.
   */
  select(layer: number, q: DevRef, n: number): void {
    const { config: c, stream, capacity } = this.s;
    const { sinks, window, topK, keyGroupSize } = this.k;
    // tiered's picks serve this very step: they are made on the compute stream.
    const on = this.prefetch === 'serial' || this.#cpuK > 0 ? stream : this.copyStream;
    // The top-k ranks the quantized tokens between the sinks and the window: at least topK of them must be there
    // for the device hot set; tiered's CPU takes the next cpuK, or all the rest when there are fewer.
    if (n - window - sinks < topK) throw new KvoffArgumentError(this.#cpuK > 0 ? 'tiered context' : 'specache context', `at least sinks + window + topK = ${sinks + window + topK} tokens`, n);
    const ranked = Math.min(topK + this.#cpuK, n - window - sinks);
    this.#ranked = ranked;
    const qAside = this.ref('selectQ', layer * c.numHeads * c.headDim * 4); // per layer: the copy stream may lag a few layers
    native().cudaCopyD2D({ src: q, dst: qAside, bytes: c.numHeads * c.headDim * 4, stream });
    if (on !== stream) waitFor(on, stream); // after this layer's tail has read the old mask, and q is aside
    native().cudaKiviScores({ ...this.#lowBit(layer), stream: on, groupSize: c.numHeads / c.numKvHeads, q: qAside, numGroups: Math.floor(n / keyGroupSize), out: this.ref('scores'), ldOut: capacity });
    native().cudaTopK({ scores: this.ref('scores'), rows: c.numKvHeads, ld: capacity, first: sinks, n: n - window - sinks, k: ranked, out: this.ref(`picks${layer}`), mask: this.ref(`mask${layer}`), stream: on });
    if (this.prefetch !== 'none') {
      const t0 = native().cudaEventRecord({ stream: on, timing: true });
      native().cudaKvGatherDevice({
        ...this.host.region(layer), blockTable: this.ref('blockTable'), tableLen: this.host.blockIds.length, positions: this.ref(`picks${layer}`),
        ldPositions: ranked, n: topK, dst: this.ref(`hot${layer}`), dstCapacity: this.#hotCap, dstSlot: sinks + window, table: this.ref('gatherTable'), stream: on,
      });
      this.copyEvents.push([t0, native().cudaEventRecord({ stream: on, timing: true })]);
    }
    // The next step waits for the copy stream once, before its first layer: the copy stream works in layer order,
    // so its last event covers every layer's hot rows and exclusion mask (one wait a step, not one a layer).
    if (on !== stream) {
      if (this.#fetched !== 0) native().cudaEventFree({ event: this.#fetched }); // superseded (freeing a pending event is fine)
      this.#fetched = native().cudaEventRecord({ stream: on });
    }
  }

  /**
   * A prefilled layer (staged on the device): its low-bit copy (complete key groups) and the hot sinks and window;
   * with the last prompt token's query, also the first step's top-k (else prime() picks it).
   */
  load(layer: number, staged: StagedLayer, lastQ?: DevRef): void {
    const { sinks, window, keyGroupSize } = this.k;
    const groups = Math.floor(staged.n / keyGroupSize) * keyGroupSize;
    this.quantize(layer, staged.kv(0), staged.capacity, 0, 0, groups);
    fillSinksAndWindow(this.s.config, staged, (off) => this.ref(`hot${layer}`, off), this.#hotCap, sinks, window, this.s.stream);
    if (lastQ && this.speculative) this.select(layer, lastQ, staged.n); // tiered selects within each step
  }

  /**
   * Makes the compute stream wait for the copy stream's selections and fetches, between two timing events: their
   * distance is the time the step stalled on them (zero when they finished first), i.e. the copy time left exposed.
   */
  #awaitFetch(): void {
    waitTimed(this.s.stream, this.#fetched, this.stallEvents);
    this.#fetched = 0;
  }

  /** Scores with a zero query (every score ties, so the first topK positions win) and fetches: the state after a prefill. */
  prime(n: number): void {
    const c = this.s.config;
    native().cudaUpload({ dst: this.ref('oPart'), data: new Float32Array(c.numHeads * c.headDim), stream: this.s.stream });
    for (let l = 0; l < c.numLayers; l++) this.select(l, this.ref('oPart'), n);
  }

  attend(layer: number, a: DeviceArena, step: StepRows): Promise<void> | void {
    const { config: c, dtype, stream } = this.s;
    const { sinks, window, keyGroupSize } = this.k;
    const G = c.numHeads / c.numKvHeads;
    const hot = this.ref(`hot${layer}`);
    const p = step.pos;
    const n = p + 1; // tokens stored once the real row is written
    const shape = { numKvHeads: c.numKvHeads, headDim: c.headDim, dtype, stream };
    const row0 = step.row0 ?? 0;
    // The real token: home to the pinned host cache (zero-copy store), and into the window ring.
    const real = qkvRefs(c, a, row0);
    native().cudaKvStoreHost({ ...this.host.region(layer), k: real.k, v: real.v, tokens: 1, blockIds: this.host.blockIds, start: p, stream });
    native().cudaKvWrite({ ...shape, k: real.k, v: real.v, tokens: 1, dst: hot, capacity: this.#hotCap, slot: sinks + (p % window) });
    if (n % keyGroupSize === 0) this.quantize(layer, hot, this.#hotCap, sinks + ((n - keyGroupSize) % window), n - keyGroupSize, keyGroupSize);
    step.mark?.('store');
    if (layer === 0 && this.#fetched !== 0) this.#awaitFetch(); // the previous step's selections and fetches, all layers
    if (this.#cpuK > 0) this.select(layer, real.q, n); // tiered: this step's own picks, fetched before they are attended
    const scratch = { scratch: this.ref('attnScratch'), scratchBytes: this.#arena.bytesOf('attnScratch') };
    const tail = { scratch: this.ref('tailScratch'), scratchBytes: this.#arena.bytesOf('tailScratch') };
    const out = (row: number) => attnRef(c, a, row0 + row);
    const lse = (row: number) => this.ref('lse', row * c.numHeads * 4);
    for (let row = 0; row < step.rows; row++) {
      const { q, k, v } = qkvRefs(c, a, row0 + row);
      // The speculative row's KV is never stored: it joins through the last hot slot, which only it attends.
      if (row === 1) native().cudaKvWrite({ ...shape, k, v, tokens: 1, dst: hot, capacity: this.#hotCap, slot: this.#hotCap - 1 });
      native().cudaAttendDecode({ ...shape, kv: hot, capacity: this.#hotCap, groupSize: G, counts: this.#counts[row], q, scale: scaleOf(c), out: out(row), lse: lse(row), ...scratch });
    }
    step.mark?.('hot attention');
    // Both rows attend the same low-bit tail minus the same exclusions: one pass over the codes serves them
    // (outputs [rows, nH, D] and [rows, nH]); then each row merges with its hot part.
    native().cudaKiviAttend({
      ...this.#lowBit(layer), groupSize: G, rows: step.rows, q: real.q, qRowStride: qkvWidth(c), scale: scaleOf(c), first: sinks, end: Math.max(sinks, n - window),
      exclude: this.ref(`mask${layer}`), ldExclude: this.s.capacity, out: this.ref('oTail'), lse: this.ref('lseTail'), ...tail,
    });
    // Both rows' hot and tail parts are [rows, nH, D] and [rows, nH], contiguous: one merge.
    const merged = step.rows * c.numHeads;
    native().cudaLseMerge({ rows: merged, headDim: c.headDim, oA: out(0), lseA: lse(0), oB: this.ref('oTail'), lseB: this.ref('lseTail'), out: out(0), lseOut: lse(0), stream });
    step.mark?.('low-bit tail');
    if (this.#cpuK > 0) return attendCpuPicks(this.#cpuPart(layer, a, n, step));
    // The speculative row (the real one when there is none) picks the next step's top-k and starts its fetch.
    this.select(layer, qkvRefs(c, a, row0 + step.rows - 1).q, n);
    step.mark?.('select');
  }

  /** What tiered's CPU part of a layer needs: picks ranked topK .. topK + cpuK - 1 of each head, attended over the host KV. */
  #cpuPart(layer: number, a: DeviceArena, n: number, step: StepRows): CpuPicksRequest {
    const c = this.s.config;
    return {
      config: c, stream: this.s.stream, pool: this.pool!, region: this.host.region(layer), blockIds: this.host.blockIds, n, scale: scaleOf(c),
      compact: { handle: this.#compact!.handle, offset: 0 },
      picks: this.ref(`picks${layer}`), ranked: this.#ranked, skip: this.k.topK, q: qkvRefs(c, a, step.row0 ?? 0).q,
      out: attnRef(c, a, step.row0 ?? 0), lse: this.ref('lse'), oPart: this.ref('oPart'), lsePart: this.ref('lsePart'), signal: step.signal,
    };
  }

  /**
   * Copy time of the prefetches so far and the part of it the compute stream waited for (ms, from their events),
   * freeing those events. Call after a synchronize.
   */
  drainCopyMs(): { copyMs: number; stallMs: number } {
    const copyMs = drainPairs(this.copyEvents);
    const stallMs = drainPairs(this.stallEvents);
    // tiered fetches what the step itself attends: never hidden
    return { copyMs, stallMs: this.#cpuK > 0 ? copyMs : stallMs };
  }

  dispose(): void {
    freePairs(this.copyEvents);
    freePairs(this.stallEvents);
    if (this.#fetched !== 0) native().cudaEventFree({ event: this.#fetched });
    this.#compact?.dispose();
    this.#arena.free();
  }
}

function exactLayout(c: ModelConfig, k: { sinks: number; window: number }): DeviceLayout {
  const hotCap = k.sinks + k.window;
  const layout = partialsLayout(c, hotCap);
  for (let l = 0; l < c.numLayers; l++) layout.add(`hot${l}`, kvRegionBytes(c, hotCap));
  return layout;
}

/** Bytes exact (or cpu, with no sinks and no window) keeps on the device: the hot rows and the partials. */
export const exactDeviceBytes = (c: ModelConfig, k: { sinks: number; window: number }): number => exactLayout(c, k).bytes;

/**
 * exact: sinks and the recent window on the device (a ring, as specache's), the rest on the CPU workers over the host
 * KV. Per layer q comes down, the workers attend while the device does its part, (o, lse) goes up and merges.
 * With no sinks and no window it is the cpu policy: every token on the workers, nothing on the device.
 */
export class ExactResident implements ResidentAttention {
  readonly speculative = false;
  readonly waitsForHost = true;
  readonly #arena: DeviceArena;
  readonly #hotCap: number;
  readonly #kvHeads: Int32Array; // every KV head, for the CPU part
  readonly #step: PerStep<{ counts: Int32Array; exclude: Int32Array }>;

  constructor(
    readonly s: ResidentShape,
    readonly k: { sinks: number; window: number },
    readonly host: HostKv,
    readonly pool: CpuAttentionPool,
  ) {
    const c = s.config;
    if (k.sinks > 0 && k.window < 1) throw new KvoffArgumentError('exact window', 'at least 1 token beside sinks', k.window);
    this.#hotCap = k.sinks + k.window;
    this.#kvHeads = Int32Array.from({ length: c.numKvHeads }, (_, h) => h);
    this.#arena = DeviceArena.create(exactLayout(c, k));
    this.#step = new PerStep((pos) => ({
      counts: new Int32Array(c.numKvHeads).fill(Math.min(pos + 1, this.#hotCap)), // [Hkv] hot rows filled
      exclude: Int32Array.from(hotPositions(pos + 1, k.sinks, k.window)), // the device's tokens, left out on the CPU
    }));
  }
  get deviceBytes(): number {
    return this.#arena.bytes;
  }
  get hotCap(): number {
    return this.#hotCap;
  }
  hot(layer: number, byteOffset = 0): DevRef {
    return this.#arena.ref(`hot${layer}`, byteOffset);
  }

  /** A prefilled layer (staged on the device): the hot sinks and window. */
  load(layer: number, staged: StagedLayer): void {
    if (this.#hotCap > 0) fillSinksAndWindow(this.s.config, staged, (off) => this.hot(layer, off), this.#hotCap, this.k.sinks, this.k.window, this.s.stream);
  }

  async attend(layer: number, a: DeviceArena, step: StepRows): Promise<void> {
    const { config: c, dtype, stream } = this.s;
    const { sinks, window } = this.k;
    const G = c.numHeads / c.numKvHeads;
    const D = c.headDim;
    const p = step.pos;
    const n = p + 1;
    const { q, k, v } = qkvRefs(c, a, step.row0 ?? 0);
    const shape = { numKvHeads: c.numKvHeads, headDim: D, dtype, stream };
    const r = this.host.region(layer);
    native().cudaKvStoreHost({ ...r, k, v, tokens: 1, blockIds: this.host.blockIds, start: p, stream });
    const out = attnRef(c, a, step.row0 ?? 0);
    const lse = this.#arena.ref('lse');
    const onDevice = this.#hotCap > 0;
    if (onDevice) {
      native().cudaKvWrite({ ...shape, k, v, tokens: 1, dst: this.hot(layer), capacity: this.#hotCap, slot: sinks + (p % window) });
      native().cudaAttendDecode({
        ...shape, kv: this.hot(layer), capacity: this.#hotCap, groupSize: G, counts: this.#step.at(p).counts,
        q, scale: scaleOf(c), out, lse, scratch: this.#arena.ref('attnScratch'), scratchBytes: this.#arena.bytesOf('attnScratch'),
      });
    }
    // The CPU part: every token but the sinks and the window, read where it lives.
    const qBytes = await native().cudaDownload({ src: q, bytes: c.numHeads * D * 4, stream });
    const oCpu = new Float32Array(c.numHeads * D); // [Hkv, G, D]
    const lCpu = new Float32Array(c.numHeads); // [Hkv, G]
    await this.pool.attend({
      region: r, blockIds: this.host.blockIds, numTokens: n, kvHeads: this.#kvHeads, groupSize: G,
      q: new Float32Array(qBytes.buffer, qBytes.byteOffset, c.numHeads * D), scale: scaleOf(c), exclude: this.#step.at(p).exclude, out: oCpu, lse: lCpu,
    }, { signal: step.signal });
    if (!onDevice) {
      native().cudaUpload({ dst: out, data: oCpu, stream });
      return;
    }
    native().cudaUpload({ dst: this.#arena.ref('oPart'), data: oCpu, stream });
    native().cudaUpload({ dst: this.#arena.ref('lsePart'), data: lCpu, stream });
    native().cudaLseMerge({ rows: c.numHeads, headDim: D, oA: out, lseA: lse, oB: this.#arena.ref('oPart'), lseB: this.#arena.ref('lsePart'), out, lseOut: lse, stream });
  }

  dispose(): void {
    this.#arena.free();
  }
}

/** Sorted positions of the sinks and the recent window among n tokens. */
export function hotPositions(n: number, sinks: number, window: number): number[] {
  const out: number[] = [];
  for (let p = 0; p < Math.min(sinks, n); p++) out.push(p);
  for (let p = Math.max(sinks, n - window); p < n; p++) out.push(p);
  return out;
}
