// The engine: owns the attention workers, and turns prompts into streamed tokens over the paged host KV cache.
import { setMaxListeners } from 'node:events';
import { CpuAttentionPool } from '../cpu-attention.js';
import { KvoffArgumentError, KvoffDisposedError, KvoffRangeError } from '../errors.js';
import { HostKvCache, type HostKvShape } from '../kv/host-cache.js';
import type { Model } from '../model/model.js';
import { decodeStep, forward, type DecodeRow, type ForwardContext } from './forward.js';
import { POLICY_SPECS, type Knobs } from './policies.js';
import { planPrefixSharing } from './prefix-sharing.js';
import { residentLoop } from './resident-loop.js';
import { ResidentRun } from './resident-run.js';
import { RunKv, type SeqKv } from './run-kv.js';
import { resolveEngineOptions, type EngineOptions, type ResolvedEngineOptions } from './options.js';
import { argmax, sample, seededRandom, validateSampling, type SamplingOptions } from './sampling.js';
import { emptyStats, type EngineStats } from './stats.js';

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens?: number; // default 64
  signal?: AbortSignal;
  stopAtEos?: boolean; // default true
  /** Called during prefill with tokens done and total. */
  onPrefill?: (done: number, total: number) => void;
}

export interface GeneratedToken {
  token: number;
  text: string; // the new text this token completes (may be '' inside a multi-byte character)
  logits: Float32Array; // [vocab] the distribution this token was drawn from
}

export interface BatchToken extends GeneratedToken {
  seq: number; // index of the prompt in the batch
}

/** A sequence being decoded. */
interface Live {
  seq: SeqKv;
  logits: Float32Array; // [vocab] of the next token
  pos: number; // where the next token goes
  total: number; // capacity: the last position a token may take
  random: () => number;
  generated: number[];
  text: string;
  fedGuess: number | null; // specache: the guess fed beside the last real token
  nextGuess: number | null; // argmax of the last step's second logits row
}

export class Engine {
  readonly options: ResolvedEngineOptions;
  readonly #model: Model;
  readonly #pool: CpuAttentionPool;
  #stats: EngineStats;
  #lastKnobs: Knobs | null = null;
  #live = true;

  constructor(model: Model, options: EngineOptions = {}) {
    model.check();
    this.options = resolveEngineOptions(options);
    this.#model = model;
    this.#stats = emptyStats(model.weightBytes);
    this.#pool = new CpuAttentionPool({ threads: this.options.cpuThreads });
  }

  stats(): EngineStats {
    return { ...this.#stats };
  }

  /** Prompt text (needs a tokenizer) or token ids, validated against the vocabulary. */
  encode(prompt: string | ArrayLike<number>, name = 'prompt'): Int32Array {
    const c = this.#model.config;
    if (typeof prompt === 'string') {
      const tok = this.#model.tokenizer;
      if (!tok) throw new KvoffArgumentError(name, 'token ids (this model has no tokenizer.json)', prompt);
      const ids = tok.encode(prompt);
      if (c.bosTokenId !== null && (ids.length === 0 || ids[0] !== c.bosTokenId)) return Int32Array.from([c.bosTokenId, ...ids]);
      return ids;
    }
    const ids = Int32Array.from(prompt as ArrayLike<number>);
    for (let i = 0; i < ids.length; i++) {
      const id = (prompt as ArrayLike<number>)[i];
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new KvoffRangeError(`${name} token ids[${i}]`, id, 0, c.vocabSize - 1);
    }
    return ids;
  }

  /** Bytes of the full-precision KV of `tokens` tokens (what `dense` keeps on the device). */
  kvBytesFor(tokens: number): number {
    return HostKvCache.bytesFor(this.#cacheShape(tokens));
  }

  /** One prompt: its tokens as they come, each with the logits it was drawn from. */
  async *generate(prompt: string | ArrayLike<number>, opts: GenerateOptions = {}): AsyncGenerator<GeneratedToken> {
    for await (const t of this.#run([prompt], opts, 'prompt')) yield { token: t.token, text: t.text, logits: t.logits };
  }

  /**
   * Several prompts decoded together: each step runs the dense graphs over every live sequence at once, and
   * attention per sequence. Prompts that share a prefix share its host blocks (the prefix is computed once).
   * All sequences share the device budget. Tokens come step by step, in prompt order within a step.
   */
  async *generateBatch(prompts: ReadonlyArray<string | ArrayLike<number>>, opts: GenerateOptions = {}): AsyncGenerator<BatchToken> {
    if (!Array.isArray(prompts) || prompts.length === 0) throw new KvoffArgumentError('prompts', 'a non-empty array of prompts', prompts);
    yield* this.#run(prompts, opts, 'prompts');
  }

  async *#run(prompts: ReadonlyArray<string | ArrayLike<number>>, opts: GenerateOptions, what: string): AsyncGenerator<BatchToken> {
    this.#check();
    this.#model.check();
    const c = this.#model.config;
    const B = prompts.length;
    const ids = prompts.map((p, i) => {
      const name = B === 1 && what === 'prompt' ? 'prompt' : `${what}[${i}]`;
      const t = this.encode(p, name);
      if (t.length === 0) throw new KvoffArgumentError(name, 'at least one token', 'an empty prompt');
      if (t.length > c.maxPositionEmbeddings) throw new KvoffRangeError(`${name} length in tokens`, t.length, 1, c.maxPositionEmbeddings);
      return t;
    });
    const maxNew = opts.maxNewTokens ?? 64;
    if (!Number.isSafeInteger(maxNew) || maxNew < 0) throw new KvoffArgumentError('maxNewTokens', 'an integer >= 0', maxNew);
    const sampling = validateSampling(opts);
    const totals = ids.map((t) => Math.min(t.length + maxNew, c.maxPositionEmbeddings));
    const sharing = planPrefixSharing(ids, this.options.blockSize);
    const bs = this.options.blockSize;
    // Each sequence owns the blocks past the full ones it shares (a shared partial block is copied on write).
    const numBlocks = totals.reduce((n, total, i) => n + Math.ceil(total / bs) - Math.floor(sharing[i].shared / bs), 0);
    const spec = POLICY_SPECS[this.options.policy]!;
    const shape = this.#cacheShape(numBlocks * bs);
    // A share of the run's own full-precision KV (what dense would hold), e.g. "10%".
    const pct = this.options.vramBudgetPercent;
    const budget = pct === null ? this.options.vramBudget : Math.floor((HostKvCache.bytesFor(shape) * pct) / 100);
    if (this.options.residentStep) {
      // On the device each sequence owns its blocks (no shared prefix): the budget's share is of that KV.
      const own = this.#cacheShape(totals.reduce((n, total) => n + Math.ceil(total / bs), 0) * bs);
      const ownBudget = pct === null ? budget : Math.floor((HostKvCache.bytesFor(own) * pct) / 100);
      const promptTokens = Math.min(...ids.map((t) => t.length));
      const run = ResidentRun.open({ model: this.#model, spec, given: this.options.knobs, budget: ownBudget, shape: own, capacities: totals, promptTokens, pool: this.#pool });
      if (run) {
        yield* this.#runResident(run, ids, totals, maxNew, sampling, opts);
        return;
      }
    }
    const kv = RunKv.open(spec, shape, c.numHeads / c.numKvHeads, totals, budget, this.options.knobs, { model: this.#model });
    this.#lastKnobs = kv.knobs;
    const { signal, release } = followSignal(opts.signal);
    const ctx: ForwardContext = { model: this.#model, kv, pool: this.#pool, stats: this.#stats, signal };
    this.#stats.deviceBytes = kv.deviceBytes;
    this.#stats.deviceBytesPeak = Math.max(this.#stats.deviceBytesPeak, kv.deviceBytes);
    this.#stats.hostBytes = kv.hostBytes;
    try {
      const live: Live[] = [];
      for (let i = 0; i < B; i++) {
        const { from, shared } = sharing[i];
        const seq = kv.openSeq(i, from >= 0 ? { from: kv.seqs[from], shared } : undefined);
        seq.attn?.onTokens?.(ids[i], 0);
        let logits: Float32Array = new Float32Array(0);
        const chunk = this.options.prefillChunk;
        for (let p = shared; p < ids[i].length; p += chunk) {
          logits = await forward(ctx, seq, ids[i].subarray(p, Math.min(p + chunk, ids[i].length)), p);
          this.#stats.prefillTokens += Math.min(chunk, ids[i].length - p);
          opts.onPrefill?.(Math.min(p + chunk, ids[i].length), ids[i].length);
        }
        this.#stats.sharedPrefixTokens += shared;
        seq.attn?.onPrefillEnd?.(kv.cache, seq.id);
        live.push({ seq, logits, pos: ids[i].length, total: totals[i], random: seededRandom(sampling.seed + i), generated: [], text: '', fedGuess: null, nextGuess: null });
      }
      let active = live;
      while (active.length > 0) {
        opts.signal?.throwIfAborted();
        const next: Live[] = [];
        for (const s of active) {
          const token = sample(s.logits, sampling, s.random);
          s.generated.push(token);
          const { full, piece } = this.#piece(s.generated, s.text);
          s.text = full;
          yield { seq: s.seq.index, token, text: piece, logits: s.logits };
          const eos = opts.stopAtEos !== false && c.eosTokenIds.includes(token);
          // The token sampled at step i takes position pos; it is fed back only if it fits the cache.
          if (!(eos || s.generated.length >= maxNew || s.pos >= s.total)) next.push(s);
        }
        active = next;
        if (active.length === 0) break;
        opts.signal?.throwIfAborted();
        const rows: DecodeRow[] = [];
        for (const s of active) {
          const token = s.generated[s.generated.length - 1];
          rows.push({ seq: s.seq, token, pos: s.pos, speculative: false });
          s.seq.attn?.onTokens?.(Int32Array.of(token), s.pos);
          if (spec.speculative) {
            if (s.fedGuess !== null) this.#stats[s.fedGuess === token ? 'specUsed' : 'specWasted'] += 1;
            // No guess yet on the first step: repeating the token is as good as any, and a wrong guess costs
            // only the quality of the next hot set, never a stall.
            s.fedGuess = s.nextGuess ?? token;
            rows.push({ seq: s.seq, token: s.fedGuess, pos: s.pos + 1, speculative: true });
          }
        }
        const logits = await decodeStep(ctx, rows); // [rows, vocab]
        const V = c.vocabSize;
        for (let r = 0, a = 0; r < rows.length; r++) {
          const row = logits.subarray(r * V, (r + 1) * V);
          if (rows[r].speculative) active[a - 1].nextGuess = argmax(row);
          else {
            active[a].logits = row;
            active[a].pos += 1;
            a++;
          }
        }
        this.#stats.decodeTokens += active.length;
      }
    } finally {
      release();
      await kv.settle();
      kv.dispose();
      this.#stats.deviceBytes = 0;
      this.#stats.hostBytes = 0;
    }
  }

  /** The text of the generated tokens so far, and the part of it past `before` (what the last token added). */
  #piece(generated: number[], before: string): { full: string; piece: string } {
    const full = this.#model.tokenizer?.decode(generated) ?? '';
    return { full, piece: full.startsWith(before) ? full.slice(before.length) : full };
  }

  /** Prompts with prefill and every decode step on the device (resident-run.ts, resident-loop.ts). */
  async *#runResident(run: ResidentRun, ids: Int32Array[], totals: number[], maxNew: number, sampling: Required<SamplingOptions>, opts: GenerateOptions): AsyncGenerator<BatchToken> {
    const stats = this.#stats;
    this.#lastKnobs = run.knobs;
    stats.deviceBytes = run.deviceBytes;
    stats.deviceBytesPeak = Math.max(stats.deviceBytesPeak, run.deviceBytes);
    stats.hostBytes = run.hostBytes;
    const { signal, release } = followSignal(opts.signal);
    run.decoder.signal = signal;
    try {
      const generated: number[][] = ids.map(() => []);
      const texts = ids.map(() => '');
      const ctx = {
        config: this.#model.config, stats, prefillChunk: this.options.residentPrefillChunk, kvDtype: this.options.kvDtype, signal,
        stopAtEos: opts.stopAtEos !== false, onPrefill: opts.onPrefill,
      };
      for await (const { seq, token, logits } of residentLoop(run, ids, totals, maxNew, sampling, ctx)) {
        generated[seq].push(token);
        const { full, piece } = this.#piece(generated[seq], texts[seq]);
        texts[seq] = full;
        yield { seq, token, text: piece, logits };
      }
    } finally {
      release();
      const { copyMs, stallMs } = await run.close();
      stats.copyMs += copyMs;
      if (copyMs > 0) stats.overlapRatio = 1 - stallMs / copyMs;
      stats.deviceBytes = 0;
      stats.hostBytes = 0;
    }
  }

  /** The knob setting the last run used (the policy's defaults, or what was fitted to the budget). */
  get lastKnobs(): Knobs | null {
    return this.#lastKnobs;
  }

  async dispose(): Promise<void> {
    if (!this.#live) return;
    this.#live = false;
    await this.#pool.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  #cacheShape(tokens: number): HostKvShape {
    const c = this.#model.config;
    const bs = this.options.blockSize;
    return { numLayers: c.numLayers, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: bs, numBlocks: Math.max(1, Math.ceil(tokens / bs)), dtype: this.options.kvDtype };
  }

  #check(): void {
    if (!this.#live) throw new KvoffDisposedError('Engine');
  }
}

/**
 * An internal signal following the caller's: one listener per in-flight attention shard would trip Node's
 * MaxListeners warning on the caller's signal, so this one carries them all.
 */
function followSignal(outer: AbortSignal | undefined): { signal: AbortSignal; release: () => void } {
  const inner = new AbortController();
  setMaxListeners(0, inner.signal);
  const follow = () => inner.abort(outer?.reason);
  if (outer?.aborted) follow();
  outer?.addEventListener('abort', follow, { once: true });
  return { signal: inner.signal, release: () => outer?.removeEventListener('abort', follow) };
}

export async function createEngine(model: Model, options: EngineOptions = {}): Promise<Engine> {
  return new Engine(model, options);
}
