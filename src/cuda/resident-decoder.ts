// The device-resident decode step, of one sequence or a batch: embedding, every layer and the head run on one stream,
// with each sequence's attention in between; per step only the token ids go down and the chosen ids come back
// (argmax, or a draw made on the device).
import { performance } from 'node:perf_hooks';
import { ropeInvFreq, ropeTables } from '../model/rope.js';
import type { ModelConfig } from '../model/types.js';
import { KvoffArgumentError } from '../errors.js';
import { native, type DevRef } from '../native.js';
import { DeviceArena, DeviceLayout } from './device-arena.js';
import { GraphCache } from './graph-cache.js';
import { LayerKernels, activationLayout } from './layer-kernels.js';
import type { ResidentAttention } from './resident-attention.js';
import { prefillResident, type ResidentPrefillOptions } from './resident-prefill.js';

/** GPU time per phase, from timing events recorded on the compute stream between phases (profiling only). */
export class PhaseProfile {
  #events: Array<[string, number]> = [];
  constructor(readonly stream: number) {}
  mark(phase: string): void {
    this.#events.push([phase, native().cudaEventRecord({ stream: this.stream, timing: true })]);
  }
  /** Milliseconds per phase since the last drain; call after the stream is synchronized. */
  drain(into: Map<string, number> = new Map()): Map<string, number> {
    for (let i = 1; i < this.#events.length; i++) {
      const [phase, end] = this.#events[i];
      const ms = native().cudaEventElapsedMs({ start: this.#events[i - 1][1], end });
      into.set(phase, (into.get(phase) ?? 0) + ms);
    }
    for (const [, e] of this.#events) native().cudaEventFree({ event: e });
    this.#events = [];
    return into;
  }
}

/**
 * Sampling on the device: each step's real row of sequence s is drawn (cudaSample) with the next number of
 * random[s], in step order.
 */
export interface DeviceSampler {
  temperature: number; // > 0
  topK: number;
  topP: number;
  random: ReadonlyArray<() => number>; // one stream per sequence
}

/** An enqueued step's results, boxed so awaiting the enqueue does not await them. */
interface Enqueued {
  ids: Promise<Int32Array>;
  logits?: Promise<Float32Array>; // [rows, vocab], when asked for
}

/**
 * The step of one sequence, or of a batch: sequence s owns rows [s * rowsPer, (s + 1) * rowsPer) of the activations,
 * every layer's dense kernels run once over all rows (the GEMV reads each weight once for up to 16 rows), and each
 * sequence's attention attends its own rows.
 */
export class ResidentDecoder {
  profile: PhaseProfile | null = null;
  signal: AbortSignal | undefined; // stops a step between layers (and exact's CPU part within one)
  enqueueMs = 0; // host time to enqueue the last step (launch overhead), measured to the argmax download
  readonly #acts: DeviceArena;
  readonly #kernels: LayerKernels;
  readonly #invFreq: Float32Array;

  /** Layer kernels as CUDA graphs (one launch each for the 4 before and the 5 after attention), unless useGraphs is false. */
  readonly #graphs: GraphCache | null;
  readonly #embed: DevRef;
  #sampler: DeviceSampler | null = null;
  #sampleScratch: DeviceArena | null = null;

  readonly attentions: readonly ResidentAttention[]; // one per sequence

  constructor(
    readonly config: ModelConfig,
    readonly weights: DeviceArena,
    attention: ResidentAttention | readonly ResidentAttention[],
    readonly stream = 0,
    opts: { useGraphs?: boolean } = {},
  ) {
    this.attentions = Array.isArray(attention) ? [...attention] : [attention as ResidentAttention];
    this.#graphs = opts.useGraphs === false ? null : new GraphCache(stream);
    this.#embed = weights.ref('embed');
    this.#acts = DeviceArena.create(activationLayout(config, 2 * this.attentions.length)); // up to 2 rows a sequence
    this.#kernels = new LayerKernels(config, weights, stream);
    this.#invFreq = ropeInvFreq(config);
  }

  /** The first sequence's attention (the only one outside a batch). */
  get attention(): ResidentAttention {
    return this.attentions[0];
  }

  /**
   * Prefills `tokens` at positions 0 .. T-1 into sequence `seq`'s KV (see resident-prefill.ts); resolves with the last
   * token's logits [vocab]. Its steps follow at position T.
   */
  prefill(tokens: Int32Array, opts: Omit<ResidentPrefillOptions, 'stream' | 'dtype'> & { dtype?: 'bf16' | 'f16'; seq?: number }): Promise<Float32Array> {
    const { seq = 0, ...rest } = opts;
    const run = () => prefillResident(this.config, this.weights, this.attentions[seq], tokens, this.#invFreq, { dtype: 'bf16', ...rest, stream: this.stream });
    const done = this.#tail.then(run);
    this.#tail = done.then(() => undefined, () => undefined);
    return done;
  }

  /**
   * One step: tokens[0] at position pos (stored), tokens[1] (the speculative guess, only when the policy wants one)
   * at pos + 1 (never stored). Returns the chosen token of each row (argmax, or row 0 drawn: sampleOnDevice).
   */
  async step(tokens: Int32Array, pos: number): Promise<Int32Array> {
    return this.#queued(() => this.#enqueue(tokens, [pos], tokens.length as 1 | 2)).then((r) => r.ids);
  }

  /**
   * A step (fed by `tokens`, or by the last step's tokens on the device when null, as stepOnDevice) that also brings back
   * its logits [rows, vocab]: their download is enqueued with the step, so the next step may be enqueued before
   * they arrive without overwriting them.
   */
  stepWithLogits(tokens: Int32Array | null, pos: number, rows: 1 | 2): Promise<{ ids: Int32Array; logits: Float32Array }> {
    return this.stepBatch(tokens, [pos], rows);
  }

  /**
   * A step of every sequence: sequence s at positions[s] (and its guess at positions[s] + 1 when rowsPer is 2), fed by
   * `tokens` [B * rowsPer] or, when null, by the last step's ids on the device. Brings back the ids [B * rowsPer] and
   * the logits [B * rowsPer, vocab].
   */
  stepBatch(tokens: Int32Array | null, positions: readonly number[], rowsPer: 1 | 2): Promise<{ ids: Int32Array; logits: Float32Array }> {
    return this.#queued(() => this.#enqueue(tokens, positions, rowsPer, true)).then(async (r) => ({ ids: r.ids, logits: await r.logits! }));
  }

  /**
   * A step fed by the last step's tokens where they lie, on the device (row 0: the next token; row 1: the next
   * speculative guess), so it can be enqueued before they reach the host: the host runs a step ahead and
   * the GPU never waits for it. Resolves with this step's chosen ids.
   */
  stepOnDevice(pos: number, rows: 1 | 2): Promise<Int32Array> {
    return this.#queued(() => this.#enqueue(null, [pos], rows)).then((r) => r.ids);
  }

  /** Steps enqueued from now on draw each sequence's real row on the device (cudaSample) instead of taking its argmax. */
  sampleOnDevice(sampler: DeviceSampler): void {
    if (sampler.random.length !== this.attentions.length) throw new KvoffArgumentError('sampler random', `one stream per sequence (${this.attentions.length})`, sampler.random.length);
    this.#sampleScratch ??= DeviceArena.create(new DeviceLayout().add('scratch', native().cudaSampleScratchBytes({ n: this.config.vocabSize })));
    this.#sampler = sampler;
  }

  /** Resolves once every step and prefill asked for so far is enqueued (or failed): nothing more will be launched. */
  idle(): Promise<void> {
    return this.#tail;
  }

  /** Steps enqueue in call order even when one has to wait for its attention (exact's CPU part). */
  async #queued(enqueue: () => Promise<Enqueued>): Promise<{ ids: Int32Array; logits?: Promise<Float32Array> }> {
    const enqueued = this.#tail.then(enqueue);
    this.#tail = enqueued.then(() => undefined, () => undefined); // the next step waits for this one's enqueue only
    const e = await enqueued;
    e.logits?.catch(() => {}); // awaited by the caller after the ids; a failure there must not go unhandled meanwhile
    return { ids: await e.ids, logits: e.logits };
  }
  #tail: Promise<void> = Promise.resolve();

  /** Enqueues a whole step; resolves once it is enqueued, with the promise of its chosen ids (boxed: not awaited). */
  async #enqueue(tokens: Int32Array | null, positions: readonly number[], rowsPer: 1 | 2, withLogits = false): Promise<Enqueued> {
    const c = this.config;
    const a = this.#acts;
    const stream = this.stream;
    const B = positions.length;
    if (B !== this.attentions.length) throw new KvoffArgumentError('step positions', `one per sequence (${this.attentions.length})`, B);
    const rows = B * rowsPer;
    if (tokens && tokens.length !== rows) throw new KvoffArgumentError('step tokens', `${rows} ids (${rowsPer} per sequence)`, tokens.length);
    const t0 = performance.now();
    const mark = this.profile ? (phase: string) => this.profile!.mark(phase) : undefined;
    mark?.('between steps (GPU idle)');
    const embed = { table: this.#embed, vocab: c.vocabSize, hidden: c.hiddenSize, out: a.ref('x'), stream };
    if (tokens) native().cudaEmbed({ ...embed, ids: tokens });
    else native().cudaEmbedDevice({ ...embed, ids: a.ref('ids'), rows });
    const { cos, sin } = ropeTables(this.#invFreq, positions.flatMap((p) => (rowsPer === 1 ? [p] : [p, p + 1])));
    native().cudaUpload({ dst: a.ref('cos'), data: cos, stream });
    native().cudaUpload({ dst: a.ref('sin'), data: sin, stream });
    const k = this.#kernels;
    const steps = positions.map((pos, s) => ({ pos, rows: rowsPer, row0: s * rowsPer, mark, signal: this.signal })); // each sequence's rows
    const lead = this.attentions[0];
    for (let l = 0; l < c.numLayers; l++) {
      if (this.#graphs) this.#graphs.run(`pre ${l} ${rows}`, () => k.pre(a, l, rows));
      else k.pre(a, l, rows);
      mark?.('qkv projection');
      this.signal?.throwIfAborted();
      // Only exact's and tiered's CPU parts yield: the device policies enqueue without waiting. A batch's CPU parts
      // run together; each sequence's device work touches only its own rows and buffers.
      const pending: Promise<void>[] = [];
      if (lead.attendBatch) {
        const p = lead.attendBatch(l, a, steps, this.attentions);
        if (p) pending.push(p);
      } else {
        for (let s = 0; s < B; s++) {
          const p = this.attentions[s].attend(l, a, steps[s]);
          if (p) pending.push(p);
        }
      }
      if (pending.length > 0) {
        const failed = (await Promise.allSettled(pending)).find((r) => r.status === 'rejected');
        if (failed) throw (failed as PromiseRejectedResult).reason;
      }
      mark?.('attention');
      if (this.#graphs) this.#graphs.run(`post ${l} ${rows}`, () => k.post(a, l, rows));
      else k.post(a, l, rows);
      mark?.('o projection + MLP');
    }
    this.#kernels.head(a, rows);
    const sm = this.#sampler;
    const V = c.vocabSize;
    if (sm) {
      // Each sequence's real row is drawn; its guess row keeps its argmax: a guess only steers the prefetch.
      for (let s = 0; s < B; s++) {
        const r = s * rowsPer;
        const draw = { temperature: sm.temperature, topK: sm.topK, topP: sm.topP, u: sm.random[s]() };
        native().cudaSample({ x: a.ref('logits', r * V * 4), n: V, ...draw, out: a.ref('ids', r * 4), scratch: this.#sampleScratch!.ref('scratch'), stream });
        if (rowsPer === 2) native().cudaArgmax({ x: a.ref('logits', (r + 1) * V * 4), m: 1, n: V, out: a.ref('ids', (r + 1) * 4), stream });
      }
    } else {
      native().cudaArgmax({ x: a.ref('logits'), m: rows, n: c.vocabSize, out: a.ref('ids'), stream });
    }
    mark?.('lm head + choice');
    this.enqueueMs = performance.now() - t0;
    const ids = native().cudaDownload({ src: a.ref('ids'), bytes: rows * 4, stream });
    const logits = withLogits ? native().cudaDownload({ src: a.ref('logits'), bytes: rows * V * 4, stream }).then((b) => new Float32Array(b.buffer, b.byteOffset, rows * V)) : undefined;
    return { ids: ids.then((b) => new Int32Array(b.buffer, b.byteOffset, rows).slice()), logits };
  }

  /** The last step's logits, [rows, vocab] (tests; a step itself only brings back the chosen ids). */
  async logits(rows: number): Promise<Float32Array> {
    const b = await native().cudaDownload({ src: this.#acts.ref('logits'), bytes: rows * this.config.vocabSize * 4, stream: this.stream });
    return new Float32Array(b.buffer, b.byteOffset, rows * this.config.vocabSize).slice();
  }

  dispose(): void {
    this.#graphs?.dispose();
    this.#acts.free();
    this.#sampleScratch?.free();
  }
}
