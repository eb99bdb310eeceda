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
import { deviceLowBitLayout } from '../kernels/device-lowbit-layout.js';
import type { ModelConfig } from '../model/types.js';
import { native, type DevRef } from '../native.js';
import { DeviceArena, DeviceLayout } from './device-arena.js';
import { fillSinksAndWindow, type StagedLayer } from './resident-context.js';
import {
  attnRef, drainPairs, freePairs, kvRegionBytes, partialsLayout, qkvRefs, scaleOf, waitFor, waitTimed,
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

function keysShape(c: ModelConfig, capacity: number, k: InfinigenResidentKnobs) {
  return {
    numKvHeads: c.numKvHeads, headDim: c.headDim, bits: infinigenKeyBits(k.partialRatio), keyGroupSize: INFINIGEN_KEY_GROUP as 64,
    valueGroupSize: c.headDim, capacityTokens: capacity, keysOnly: true,
  };
}

function infinigenLayout(c: ModelConfig, capacity: number, k: InfinigenResidentKnobs, specRows = 1): DeviceLayout {
  const layout = partialsLayout(c, hotCapacity(k));
  const keys = deviceLowBitLayout(keysShape(c, capacity, k));
  for (let l = 0; l < c.numLayers; l++) {
    layout.add(`keys${l}`, keys.layerBytes);
    layout.add(`hot${l}`, kvRegionBytes(c, hotCapacity(k))); // [Hkv, hotCap, 2, D]
    layout.add(`picks${l}`, c.numKvHeads * k.topK * 4); // int32 [Hkv, topK], best first
  }
  if (specRows > 0) {
    layout
      .add('specX', specRows * c.hiddenSize * 4) // f32 [rows, H]: layer l's input, set aside for the copy stream
      .add('specN', specRows * c.hiddenSize * 4) // f32 [rows, H]: normed with layer l + 1's input norm
      .add('specQ', specRows * c.numHeads * c.headDim * 4); // f32 [rows, nH, D]: layer l + 1's speculated queries, rotated
  }
  return layout
    .add('scores', c.numKvHeads * capacity * 4) // f32 [Hkv, capacity]
    .add('gatherTable', c.numKvHeads * k.topK * 8) // uint32 [Hkv * topK, 2]
    .add('blockTable', capacity * 4); // int32 [<= capacity blocks]
}

/**
 * Bytes infinigen keeps on the device for a run of `capacity` tokens (the part the budget caps), with the speculation
 * buffers of `specRows` sequences (a batch's leader holds them for all; the others none).
 */
export function infinigenDeviceBytes(c: ModelConfig, capacity: number, k: InfinigenResidentKnobs, specRows = 1): number {
  return infinigenLayout(c, capacity, k, specRows).bytes;
}

/**
 * One sequence's infinigen. In a batch, the first sequence's (the leader's) attendBatch runs the layer for all: the
 * speculation's norm, projection and RoPE once over every row, then each sequence's scores and top-k, all its gathers
 * between one pair of timing events, and one event the next layer waits for; the leader holds those buffers and events.
 */
export class InfinigenResident implements ResidentAttention {
  readonly speculative = false;
  readonly waitsForHost = false;
  readonly #arena: DeviceArena;
  readonly #hotCap: number;
  readonly #w: Array<{ inNorm: DevRef; qkv: DevRef; qkvBias: DevRef | null }>; // each layer's query-side weights
  readonly #counts: Int32Array;
  readonly #keyShape: ReturnType<typeof keysShape>; // the low-bit keys' shape fields, which every key kernel takes
  readonly #fetched: number[]; // [numLayers] event after the copy stream's pick and fetch for that layer, 0 when none
  copyEvents: Array<[number, number]> = []; // (start, end) of each gather: the copy time
  stallEvents: Array<[number, number]> = []; // (before, after) each compute-stream wait for a layer's fetch
  exposedEvents: Array<[number, number]> = []; // layer 0's pick and gather, on the compute stream: copy time never hidden

  constructor(
    readonly s: ResidentShape,
    readonly k: InfinigenResidentKnobs,
    readonly host: HostKv,
    readonly copyStream: number,
    weights: DeviceArena, // weightLayout(c) (cuda-weights.ts)
    readonly specRows = 1, // sequences whose speculation this one runs: the batch size for the leader, 0 for the others
  ) {
    const c = s.config;
    if (k.window < INFINIGEN_KEY_GROUP || k.window % INFINIGEN_KEY_GROUP !== 0) throw new KvoffArgumentError('infinigen window', `a positive multiple of ${INFINIGEN_KEY_GROUP}`, k.window);
    if (!Number.isSafeInteger(k.topK) || k.topK < 1) throw new KvoffArgumentError('infinigen topK', 'an integer >= 1', k.topK);
    this.#hotCap = hotCapacity(k);
    this.#w = Array.from({ length: c.numLayers }, (_, l) => ({
      inNorm: weights.ref(`${l}.inNorm`), qkv: weights.ref(`${l}.qkv`), qkvBias: c.attentionBias ? weights.ref(`${l}.qkvBias`) : null,
    }));
    this.#fetched = new Array<number>(c.numLayers).fill(0);
    this.#counts = new Int32Array(c.numKvHeads);
    this.#keyShape = keysShape(c, s.capacity, k);
    this.#arena = DeviceArena.create(infinigenLayout(c, s.capacity, k, specRows));
    try {
      const bt = host.blockIds;
      native().cudaArenaWrite({ handle: this.#arena.handle, offset: this.#arena.ref('blockTable').devOffset, data: new Uint8Array(bt.buffer, bt.byteOffset, bt.byteLength) });
    } catch (err) {
      this.#arena.free();
      throw err;
    }
  }

  get deviceBytes(): number {
    return this.#arena.bytes;
  }
  ref(name: string, byteOffset = 0): DevRef {
    return this.#arena.ref(name, byteOffset);
  }

  #keys(layer: number, stream = this.s.stream) {
    return { ...this.#keyShape, lowBit: this.ref(`keys${layer}`), stream };
  }

  /** Tokens ranked for the top-k among n stored: those between the sinks and the window (all of them when fewer than topK). */
  #ranked(n: number): number {
    const { sinks, window, topK } = this.k;
    if (n < sinks + window + 1) throw new KvoffArgumentError('infinigen context', `at least sinks + window + 1 = ${sinks + window + 1} tokens`, n);
    return Math.min(topK, n - sinks - window);
  }

  /** Scores layer `layer`'s quantized keys with q ([nH, D]) and takes each head's best, on `on`; returns the picks per head. */
  #pick(layer: number, q: DevRef, n: number, on: number): number {
    const c = this.s.config;
    const { sinks, window } = this.k;
    const ranked = this.#ranked(n);
    // The groups covering [0, n - window): quantized already, since the window holds at least one group and a group
    // is quantized as soon as its last token is stored.
    const numGroups = Math.ceil((n - window) / INFINIGEN_KEY_GROUP);
    native().cudaKiviScores({ ...this.#keys(layer, on), groupSize: c.numHeads / c.numKvHeads, q, numGroups, out: this.ref('scores'), ldOut: this.s.capacity });
    native().cudaTopK({ scores: this.ref('scores'), rows: c.numKvHeads, ld: this.s.capacity, first: sinks, n: n - window - sinks, k: ranked, out: this.ref(`picks${layer}`), stream: on });
    return ranked;
  }

  /** Gathers the `ranked` picks of each head from the pinned host KV into the hot set's top-k slots, on `on`. */
  #fetch(layer: number, ranked: number, on: number): void {
    const { sinks, window } = this.k;
    native().cudaKvGatherDevice({
      ...this.host.region(layer), blockTable: this.ref('blockTable'), tableLen: this.host.blockIds.length, positions: this.ref(`picks${layer}`),
      ldPositions: ranked, n: ranked, dst: this.ref(`hot${layer}`), dstCapacity: this.#hotCap, dstSlot: sinks + window, table: this.ref('gatherTable'), stream: on,
    });
  }

  /** Every sequence's pick of `layer` with its query (q(i)), then all the gathers, between one pair of timing events. */
  #pickAndFetchAll(seqs: InfinigenResident[], layer: number, q: (i: number) => DevRef, steps: readonly StepRows[], on: number): [number, number] {
    const ranked = seqs.map((x, i) => x.#pick(layer, q(i), steps[i].pos + 1, on));
    const t0 = native().cudaEventRecord({ stream: on, timing: true });
    seqs.forEach((x, i) => x.#fetch(layer, ranked[i], on));
    return [t0, native().cudaEventRecord({ stream: on, timing: true })];
  }

  /**
   * Layer l + 1's picks, enqueued on the copy stream from layer l's input (a.x before layer l's MLP changes it): its
   * RMSNorm and query projection (bias, RoPE at each sequence's position) over every sequence's row at once, then
   * each sequence's scores, top-k and gather. The sequences' rows are consecutive (one row each: no speculative row).
   */
  #speculate(seqs: InfinigenResident[], next: number, a: DeviceArena, steps: readonly StepRows[]): void {
    const c = this.s.config;
    const on = this.copyStream;
    const B = seqs.length;
    const row0 = steps[0].row0 ?? 0;
    const qWidth = c.numHeads * c.headDim;
    const w = this.#w[next];
    native().cudaCopyD2D({ src: a.ref('x', row0 * c.hiddenSize * 4), dst: this.ref('specX'), bytes: B * c.hiddenSize * 4, stream: this.s.stream });
    waitFor(on, this.s.stream);
    native().cudaRmsNorm({ x: this.ref('specX'), weight: w.inNorm, out: this.ref('specN'), rows: B, n: c.hiddenSize, eps: c.rmsNormEps, stream: on });
    // The fused q|k|v weight is [width, H] row-major: its first nH * D rows are the query projection.
    native().cudaGemm({ w: w.qkv, x: this.ref('specN'), y: this.ref('specQ'), m: B, n: qWidth, k: c.hiddenSize, stream: on });
    if (w.qkvBias) native().cudaAddBias({ x: this.ref('specQ'), bias: w.qkvBias, rows: B, n: qWidth, stream: on });
    // The rows' cos/sin (each sequence's position) stay put until the compute stream has waited for this layer's fetch.
    const rope = { rows: B, heads: c.numHeads, headDim: c.headDim, cos: a.ref('cos', row0 * c.headDim * 4), sin: a.ref('sin', row0 * c.headDim * 4), stream: on };
    native().cudaRope({ ...rope, x: this.ref('specQ') });
    this.copyEvents.push(this.#pickAndFetchAll(seqs, next, (i) => this.ref('specQ', i * qWidth * 4), steps, on));
    if (this.#fetched[next] !== 0) native().cudaEventFree({ event: this.#fetched[next] });
    this.#fetched[next] = native().cudaEventRecord({ stream: on });
  }

  /** Makes the compute stream wait for a layer's fetch, timed (waitTimed: the stall is zero when it came first). */
  #awaitFetch(layer: number): void {
    waitTimed(this.s.stream, this.#fetched[layer], this.stallEvents);
    this.#fetched[layer] = 0;
  }

  /** A prefilled layer (staged on the device): its low-bit keys (complete groups) and the hot sinks and window. */
  load(layer: number, staged: StagedLayer): void {
    const groups = Math.floor(staged.n / INFINIGEN_KEY_GROUP) * INFINIGEN_KEY_GROUP;
    native().cudaKiviQuantize({ ...this.#keys(layer), kv: staged.kv(0), dtype: this.s.dtype, kvCapacity: staged.capacity, kvFirstRow: 0, first: 0, tokens: groups });
    fillSinksAndWindow(this.s.config, staged, (off) => this.ref(`hot${layer}`, off), this.#hotCap, this.k.sinks, this.k.window, this.s.stream);
  }

  attend(layer: number, a: DeviceArena, step: StepRows): void {
    this.attendBatch(layer, a, [step], [this]);
  }

  /** A layer of every sequence of the batch (this one the leader, peers[0]); see the class comment. */
  attendBatch(layer: number, a: DeviceArena, steps: readonly StepRows[], peers: readonly ResidentAttention[]): void {
    const seqs = peers as InfinigenResident[];
    if (seqs[0] !== this || seqs.length > this.specRows) throw new Error(`infinigen: a batch of ${seqs.length} led by a sequence sized for ${this.specRows}`);
    // The speculation reads every sequence's row at once: one row each, one after another.
    if (steps.some((st, i) => st.rows !== 1 || (st.row0 ?? 0) !== (steps[0].row0 ?? 0) + i)) throw new Error('infinigen: a batch\'s rows must be one a sequence, consecutive');
    steps.forEach((step, i) => seqs[i].#ranked(step.pos + 1)); // a context too short is refused before anything is enqueued
    steps.forEach((step, i) => seqs[i].#store(layer, a, step));
    steps[0].mark?.('store');
    const own = (i: number) => qkvRefs(this.s.config, a, steps[i].row0 ?? 0).q;
    if (layer === 0) this.exposedEvents.push(this.#pickAndFetchAll(seqs, 0, own, steps, this.s.stream));
    else if (this.#fetched[layer] !== 0) this.#awaitFetch(layer);
    else throw new Error(`infinigen: layer ${layer} attended with no fetch speculated for it`);
    steps[0].mark?.('layer 0 pick / wait');
    if (layer + 1 < this.s.config.numLayers) this.#speculate(seqs, layer + 1, a, steps); // beside this layer's attention and MLP
    steps.forEach((step, i) => seqs[i].#attendHot(layer, a, step));
    steps[0].mark?.('hot attention');
  }

  /** The step's token: home to the pinned host cache, into the window ring, and a completed key group quantized. */
  #store(layer: number, a: DeviceArena, step: StepRows): void {
    const { config: c, dtype, stream } = this.s;
    const { sinks, window } = this.k;
    const hot = this.ref(`hot${layer}`);
    const n = step.pos + 1; // tokens stored once this row is written
    const { k, v } = qkvRefs(c, a, step.row0 ?? 0);
    native().cudaKvStoreHost({ ...this.host.region(layer), k, v, tokens: 1, blockIds: this.host.blockIds, start: step.pos, stream });
    native().cudaKvWrite({ numKvHeads: c.numKvHeads, headDim: c.headDim, dtype, stream, k, v, tokens: 1, dst: hot, capacity: this.#hotCap, slot: sinks + (step.pos % window) });
    if (n % INFINIGEN_KEY_GROUP === 0) {
      const first = n - INFINIGEN_KEY_GROUP;
      native().cudaKiviQuantize({ ...this.#keys(layer), kv: hot, dtype, kvCapacity: this.#hotCap, kvFirstRow: sinks + (first % window), first, tokens: INFINIGEN_KEY_GROUP });
    }
  }

  /** Attention of the step's row over the hot set: sinks, window ring and the fetched top-k. */
  #attendHot(layer: number, a: DeviceArena, step: StepRows): void {
    const { config: c, dtype, stream } = this.s;
    const { sinks, window } = this.k;
    const hot = sinks + window + this.#ranked(step.pos + 1);
    if (this.#counts[0] !== hot) this.#counts.fill(hot); // [Hkv] hot rows attended
    const row0 = step.row0 ?? 0;
    native().cudaAttendDecode({
      numKvHeads: c.numKvHeads, headDim: c.headDim, dtype, stream, kv: this.ref(`hot${layer}`), capacity: this.#hotCap, groupSize: c.numHeads / c.numKvHeads,
      counts: this.#counts, q: qkvRefs(c, a, row0).q, scale: scaleOf(c), out: attnRef(c, a, row0), lse: this.ref('lse'),
      scratch: this.ref('attnScratch'), scratchBytes: this.#arena.bytesOf('attnScratch'),
    });
  }

  drainCopyMs(): { copyMs: number; stallMs: number } {
    const exposed = drainPairs(this.exposedEvents);
    return { copyMs: drainPairs(this.copyEvents) + exposed, stallMs: drainPairs(this.stallEvents) + exposed };
  }

  dispose(): void {
    for (const pairs of [this.copyEvents, this.stallEvents, this.exposedEvents]) freePairs(pairs);
    for (const e of this.#fetched) if (e !== 0) native().cudaEventFree({ event: e });
    this.#arena.free();
  }
}
