// The engine: owns the attention workers, and turns prompts into streamed tokens over the paged host KV cache.
import { setMaxListeners } from 'node:events';
import { CpuAttentionPool } from '../cpu-attention.js';
import { KvoffArgumentError, KvoffDisposedError, KvoffRangeError } from '../errors.js';
import { HostKvCache, type HostKvShape } from '../kv/host-cache.js';
import type { Model } from '../model/model.js';
import { forward, forwardSpeculative, type ForwardContext } from './forward.js';
import { POLICY_SPECS } from './policies.js';
import { RunKv } from './run-kv.js';
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

export class Engine {
  readonly options: ResolvedEngineOptions;
  readonly #model: Model;
  readonly #pool: CpuAttentionPool;
  #stats: EngineStats;
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
  encode(prompt: string | ArrayLike<number>): Int32Array {
    const c = this.#model.config;
    if (typeof prompt === 'string') {
      const tok = this.#model.tokenizer;
      if (!tok) throw new KvoffArgumentError('prompt', 'token ids (this model has no tokenizer.json)', prompt);
      const ids = tok.encode(prompt);
      if (c.bosTokenId !== null && (ids.length === 0 || ids[0] !== c.bosTokenId)) return Int32Array.from([c.bosTokenId, ...ids]);
      return ids;
    }
    const ids = Int32Array.from(prompt as ArrayLike<number>);
    for (let i = 0; i < ids.length; i++) {
      const id = (prompt as ArrayLike<number>)[i];
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new KvoffRangeError(`prompt token ids[${i}]`, id, 0, c.vocabSize - 1);
    }
    return ids;
  }

  /** Bytes of the full-precision KV of `tokens` tokens (what `dense` keeps on the device). */
  kvBytesFor(tokens: number): number {
    return HostKvCache.bytesFor(this.#cacheShape(tokens));
  }

  async *generate(prompt: string | ArrayLike<number>, opts: GenerateOptions = {}): AsyncGenerator<GeneratedToken> {
    this.#check();
    this.#model.check();
    const c = this.#model.config;
    const ids = this.encode(prompt);
    if (ids.length === 0) throw new KvoffArgumentError('prompt', 'at least one token', 'an empty prompt');
    if (ids.length > c.maxPositionEmbeddings) throw new KvoffRangeError('prompt length in tokens', ids.length, 1, c.maxPositionEmbeddings);
    const maxNew = opts.maxNewTokens ?? 64;
    if (!Number.isSafeInteger(maxNew) || maxNew < 0) throw new KvoffArgumentError('maxNewTokens', 'an integer >= 0', maxNew);
    const sampling = validateSampling(opts);
    const random = seededRandom(sampling.seed);
    const total = Math.min(ids.length + maxNew, c.maxPositionEmbeddings);
    const kv = RunKv.open(POLICY_SPECS[this.options.policy], this.#cacheShape(total), this.options.vramBudget);
    const cache = kv.cache;
    // One listener per in-flight attention shard would trip Node's MaxListeners warning on the caller's
    // signal; an internal controller, following the caller's, carries them all.
    const inner = new AbortController();
    setMaxListeners(0, inner.signal);
    const follow = () => inner.abort(opts.signal?.reason);
    if (opts.signal?.aborted) follow();
    opts.signal?.addEventListener('abort', follow, { once: true });
    const ctx: ForwardContext = { model: this.#model, kv, pool: this.#pool, stats: this.#stats, signal: inner.signal };
    this.#stats.deviceBytes = kv.deviceBytes;
    this.#stats.deviceBytesPeak = Math.max(this.#stats.deviceBytesPeak, kv.deviceBytes);
    this.#stats.hostBytes = kv.hostBytes;
    try {
      const seq = cache.store.createSequence();
      let logits: Float32Array = new Float32Array(0);
      const chunk = this.options.prefillChunk;
      for (let p = 0; p < ids.length; p += chunk) {
        logits = await forward(ctx, seq, ids.subarray(p, Math.min(p + chunk, ids.length)), p);
        this.#stats.prefillTokens += Math.min(chunk, ids.length - p);
        opts.onPrefill?.(Math.min(p + chunk, ids.length), ids.length);
      }
      const generated: number[] = [];
      const speculative = this.options.policy === 'specache';
      let fedGuess: number | null = null; // the guess fed beside the last real token
      let nextGuess: number | null = null; // argmax of the last step's second logits row
      let text = '';
      // The token sampled at step i takes position pos; it is fed back only if it fits the cache.
      for (let pos = ids.length; generated.length < maxNew; pos++) {
        opts.signal?.throwIfAborted();
        const token = sample(logits, sampling, random);
        generated.push(token);
        const full = this.#model.tokenizer?.decode(generated) ?? '';
        const piece = full.startsWith(text) ? full.slice(text.length) : full;
        text = full;
        yield { token, text: piece, logits };
        const eos = opts.stopAtEos !== false && c.eosTokenIds.includes(token);
        if (eos || generated.length >= maxNew || pos >= total) break;
        if (speculative) {
          if (fedGuess !== null) this.#stats[fedGuess === token ? 'specUsed' : 'specWasted'] += 1;
          // No guess yet on the first step: repeating the token is as good as any, and a wrong guess costs
          // only the quality of the next hot set, never a stall.
          fedGuess = nextGuess ?? token;
          const both = await forwardSpeculative(ctx, seq, token, fedGuess, pos); // [2, vocab]
          const V = c.vocabSize;
          logits = both.subarray(0, V);
          nextGuess = argmax(both.subarray(V, 2 * V));
        } else {
          logits = await forward(ctx, seq, Int32Array.of(token), pos);
        }
        this.#stats.decodeTokens += 1;
      }
    } finally {
      opts.signal?.removeEventListener('abort', follow);
      await kv.split?.settle();
      kv.dispose();
      this.#stats.deviceBytes = 0;
      this.#stats.hostBytes = 0;
    }
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

export async function createEngine(model: Model, options: EngineOptions = {}): Promise<Engine> {
  return new Engine(model, options);
}
