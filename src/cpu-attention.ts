// CpuAttentionPool: exact attention over paged host KV, sharded across piscina worker threads and merged by log-sum-exp.
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import type { AttendTask, CausalTask, WorkerResult, WorkerTask } from '../workers/attention-worker.js';
import { excludeBounds, planShards, shardsPerThread } from './cpu-attention-plan.js';
import {
  KvoffArgumentError,
  KvoffDisposedError,
  KvoffError,
  KvoffNativeError,
  KvoffRangeError,
  fromNativeError,
} from './errors.js';
import { HostArena } from './arena.js';
import { unitBytes } from './kernels/paged-kv.js';
import { native, type KvRegion } from './native.js';

/** A worker thread died or failed outside a kernel; the pool replaces the thread and stays usable. */
export class KvoffWorkerError extends KvoffError {
  readonly exitCode: number | undefined;
  constructor(message: string, options?: { cause?: unknown; exitCode?: number }) {
    super('KVOFF_E_WORKER', message, options);
    this.exitCode = options?.exitCode;
  }
}

/**
 * What an aborted attend() rejects with: name 'AbortError' and code 'ABORT_ERR' like Node's own, with the
 * signal's reason as cause (not a KvoffError, whose name is always its class name).
 */
export class KvoffAbortError extends Error {
  readonly code = 'ABORT_ERR';
  constructor(reason: unknown) {
    super('Expected the CPU attention request to run but it was aborted', { cause: reason });
    this.name = 'AbortError';
  }
}

export interface CpuAttentionPoolOptions {
  threads?: number; // default: os.availableParallelism()
  maxQueue?: number | 'auto'; // queued shards beyond the running ones (piscina's maxQueue)
  minBlocksPerShard?: number; // smallest block range given its own shard (default 1)
  shardsPerThread?: number | 'auto'; // shards planned a thread; 'auto' (default): more for large requests (shardsPerThread())
}

/** One layer's CPU-side attention. */
export interface CpuAttentionRequest {
  region: KvRegion;
  blockIds: Int32Array; // [>= ceil(numTokens / blockSize)] physical ids in logical order
  numTokens: number;
  kvHeads: Int32Array; // [nh]
  groupSize: number;
  q: Float32Array; // [nh, groupSize, headDim]
  scale: number;
  out: Float32Array; // [nh, groupSize, headDim], written only when the whole request succeeds
  lse: Float32Array; // [nh, groupSize]
  exclude?: Int32Array; // sorted positions in [0, numTokens) attended elsewhere
}

/** A prefill chunk of T queries at positions [start, start + T), each attending causally to all before it. */
export interface CausalAttentionRequest {
  region: KvRegion;
  blockIds: Int32Array; // the sequence's blocks, covering start + T tokens
  start: number;
  kvHeads: Int32Array; // [nh]
  groupSize: number;
  q: Float32Array; // [T, nh, groupSize, headDim]
  scale: number;
  out: Float32Array; // [T, nh, groupSize, headDim]
  lse: Float32Array; // [T, nh, groupSize]
}

const here = dirname(fileURLToPath(import.meta.url));

/**
 * The worker's CommonJS entry (attention-worker-entry.cts: why CommonJS is there). dist/src/cpu-attention.js finds
 * dist/workers; src/cpu-attention.ts (vitest) finds the tsc output in dist/workers.
 */
export function resolveWorkerFile(): string {
  const file = 'attention-worker-entry.cjs';
  const tried = [join(here, '..', 'workers', file), join(here, '..', 'dist', 'workers', file)];
  for (const path of tried) if (existsSync(path)) return path;
  throw new KvoffNativeError(
    `Expected the CPU attention worker at one of ${tried.join(', ')} but found none. ` +
      `Fix: run \`npm run build\` (tsc) so dist/workers/${file} exists.`,
  );
}

const isShared = (a: ArrayBufferView): boolean => a.buffer instanceof SharedArrayBuffer;
const SPARE_SCRATCH = 8;

export class CpuAttentionPool {
  readonly threads: number;
  readonly #minBlocks: number;
  readonly #shardsPerThread: number | 'auto';
  readonly #queueRoom: number; // shards a request may queue beyond the running ones (piscina rejects past maxQueue)
  readonly #piscina: Piscina<WorkerTask, WorkerResult>;
  // Scratch arenas of finished requests, reused. Scratch lives in a host arena, not on a
  // SharedArrayBuffer: every thread reaches an arena by handle, and the addon (node-addon-api's
  // TypedArray::ArrayBuffer) rejects typed arrays on SharedArrayBuffers with "Invalid argument".
  readonly #spare: HostArena[] = [];
  #minusInf = new Float32Array(0); // [rows] all -inf: the lse of an empty partial
  #disposed = false;

  constructor(opts: CpuAttentionPoolOptions = {}) {
    const threads = opts.threads ?? availableParallelism();
    if (!Number.isInteger(threads) || threads < 1 || threads > 1024)
      throw new KvoffArgumentError('CpuAttentionPool threads', 'an integer in [1, 1024]', threads);
    this.threads = threads;
    this.#minBlocks = opts.minBlocksPerShard ?? 1;
    const spt = opts.shardsPerThread ?? 'auto';
    if (spt !== 'auto' && !(Number.isInteger(spt) && spt >= 1 && spt <= 64))
      throw new KvoffArgumentError('CpuAttentionPool shardsPerThread', "'auto' or an integer in [1, 64]", spt);
    this.#shardsPerThread = spt;
    // Piscina's 'auto' queue is threads squared.
    this.#queueRoom = opts.maxQueue === 'auto' ? threads * threads : (opts.maxQueue ?? Infinity);
    this.#piscina = new Piscina<WorkerTask, WorkerResult>({
      filename: resolveWorkerFile(),
      minThreads: threads, // all threads start now and stay: a decode step cannot wait for a cold start
      maxThreads: threads,
      idleTimeout: Infinity,
      maxQueue: opts.maxQueue ?? Infinity,
      recordTiming: false,
    });
    // Piscina emits 'error' for a worker that fails with no task on it; unhandled, that would end the process.
    this.#piscina.on('error', () => {});
  }

  /**
   * Runs one worker task and maps every failure to a typed error. attend() sends its shards
   * through here; bench and tests use it for noop and crash tasks.
   */
  async runTask(task: WorkerTask, opts: { signal?: AbortSignal } = {}): Promise<WorkerResult> {
    if (this.#disposed) throw new KvoffDisposedError('CpuAttentionPool');
    let r: WorkerResult;
    try {
      r = await this.#piscina.run(task, opts.signal ? { signal: opts.signal } : {});
    } catch (err) {
      throw this.#mapRunError(err, opts.signal);
    }
    if (r.error) throw fromWorkerError(r.error);
    return r;
  }

  /**
   * Exact attention of `req`; out and lse are written only once every shard has succeeded.
   * An abort drops queued shards and ends the threads of running ones (piscina's only way to stop
   * native work); the pool starts replacements, so aborting is for cancellation, not flow control.
   */
  async attend(req: CpuAttentionRequest, opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#disposed) throw new KvoffDisposedError('CpuAttentionPool');
    if (opts.signal?.aborted) throw new KvoffAbortError(opts.signal.reason);
    checkRequest(req);
    const { region, groupSize: G } = req;
    const D = region.headDim;
    const nh = req.kvHeads.length;
    if (nh === 0) return;
    if (req.numTokens === 0) {
      // Attention over an empty set, without a round trip: o = 0, lse = -inf (what the kernel returns).
      req.out.fill(0);
      req.lse.fill(-Infinity);
      return;
    }
    const bytes = req.numTokens * nh * unitBytes(D);
    const perThread = this.#shardsPerThread === 'auto' ? shardsPerThread(bytes, this.threads) : this.#shardsPerThread;
    // Never more shards than run at once plus what the queue takes: a capped queue would reject the rest.
    const slots = Math.max(this.threads, Math.min(this.threads * perThread, this.threads + this.#queueRoom));
    const plan = planShards({ heads: nh, numTokens: req.numTokens, blockSize: region.blockSize, threads: slots, minBlocksPerRange: this.#minBlocks });
    const rows = nh * G;
    const ranges = plan.ranges.length;
    const exclude = req.exclude ?? new Int32Array(0);

    // Scratch arena: q [nh, G, D], then per range o [nh, G, D] and lse [nh, G].
    const oBytes = 4 * rows * D;
    const partBytes = oBytes + 4 * rows;
    const scratch = this.#takeScratch(oBytes + ranges * partBytes);
    const h = scratch.handle;
    scratch.write(0, isShared(req.q) ? req.q.slice() : req.q);
    const oAt = (r: number): number => oBytes + r * partBytes;
    const lseAt = (r: number): number => oAt(r) + oBytes;

    const { handle, offset, numBlocks, numKvHeads, headDim, blockSize, dtype } = region;
    let ok = false;
    try {
      const runs = plan.shards.map((s) => {
        const [lo, hi] = excludeBounds(exclude, s.token0, s.token1);
        const task: AttendTask = {
          handle, offset, numBlocks, numKvHeads, headDim, blockSize, dtype,
          // slice(), not subarray(): structured clone copies a view's whole buffer, so send only the shard's ids.
          blockIds: req.blockIds.slice(s.block0, s.block1),
          numTokens: s.token1 - s.token0,
          kvHeads: req.kvHeads.slice(s.head0, s.head1),
          groupSize: G,
          scale: req.scale,
          q: { handle: h, offset: 4 * s.head0 * G * D },
          out: { handle: h, offset: oAt(s.range) + 4 * s.head0 * G * D },
          lse: { handle: h, offset: lseAt(s.range) + 4 * s.head0 * G },
          ...(hi > lo ? { exclude: exclude.slice(lo, hi).map((p) => p - s.token0) } : {}),
        };
        return this.runTask(task, opts);
      });
      // Promise.all rejects on the first failure (a crash or abort never waits on the other shards)
      // and still observes the later rejections, so none goes unhandled.
      await Promise.all(runs);
      this.#finish(req, scratch, ranges, rows, oAt, lseAt);
      ok = true;
    } finally {
      // A failed request's arena is freed rather than reused: a shard still running in a thread
      // being torn down may write to it (the native side keeps the memory alive until it returns).
      if (ok && !this.#disposed && this.#spare.length < SPARE_SCRATCH) this.#spare.push(scratch);
      else scratch.dispose();
    }
  }

  /**
   * Causal attention of a prefill chunk: query rows are split into contiguous ranges of about equal
   * work (row t costs start + t + 1 tokens), one task each, written in place through SharedArrayBuffers.
   */
  async attendCausal(req: CausalAttentionRequest, opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#disposed) throw new KvoffDisposedError('CpuAttentionPool');
    const { region, groupSize: G, kvHeads } = req;
    const row = kvHeads.length * G * region.headDim;
    const T = row > 0 ? req.q.length / row : 0;
    if (!Number.isInteger(T) || T < 1) throw new KvoffArgumentError('attendCausal q', `a Float32Array of T x ${row} floats`, req.q);
    if (req.out.length !== T * row) throw new KvoffArgumentError('attendCausal out', `Float32Array(${T * row})`, req.out);
    if (req.lse.length !== T * kvHeads.length * G) throw new KvoffArgumentError('attendCausal lse', `Float32Array(${T * kvHeads.length * G})`, req.lse);
    if (req.start + T > req.blockIds.length * region.blockSize)
      throw new KvoffRangeError('attendCausal start + T', req.start + T, 1, req.blockIds.length * region.blockSize);
    const shared = (n: number) => new Float32Array(new SharedArrayBuffer(4 * n));
    const q = shared(req.q.length);
    q.set(req.q);
    const out = shared(req.out.length);
    const lse = shared(req.lse.length);
    const cuts = splitByWork(req.start, T, Math.min(T, this.threads * 2));
    const runs = [];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const task: CausalTask = { kind: 'causal', ...region, blockIds: req.blockIds, start: req.start, t0: cuts[i]!, t1: cuts[i + 1]!, kvHeads, groupSize: G, scale: req.scale, q, out, lse };
      runs.push(this.runTask(task, opts));
    }
    await Promise.all(runs);
    req.out.set(out);
    req.lse.set(lse);
  }

  /** Disjoint token ranges merge exactly by LSE; the last merge lands in the caller's buffers. */
  #finish(req: CpuAttentionRequest, scratch: HostArena, ranges: number, rows: number, oAt: (r: number) => number, lseAt: (r: number) => number): void {
    const D = req.region.headDim;
    // The addon takes no SharedArrayBuffer-backed arrays, so shared outputs get a private staging copy.
    const out = isShared(req.out) ? new Float32Array(rows * D) : req.out;
    const lse = isShared(req.lse) ? new Float32Array(rows) : req.lse;
    const h = scratch.handle;
    const o0 = { handle: h, offset: oAt(0) };
    const l0 = { handle: h, offset: lseAt(0) };
    if (ranges === 1) {
      // Merging with an empty partial (lse = -inf, weight exactly 0) is an exact copy out of the
      // arena, and cheaper than arenaRead, which allocates a fresh buffer per call.
      native().lseMerge({ rows, headDim: D, oA: o0, lseA: l0, oB: o0, lseB: this.#emptyLse(rows), out, lseOut: lse });
    }
    for (let r = 1; r < ranges; r++) {
      const last = r === ranges - 1;
      native().lseMerge({
        rows, headDim: D,
        oA: o0, lseA: l0, oB: { handle: h, offset: oAt(r) }, lseB: { handle: h, offset: lseAt(r) },
        out: last ? out : o0, lseOut: last ? lse : l0,
      });
    }
    if (out !== req.out) req.out.set(out);
    if (lse !== req.lse) req.lse.set(lse);
  }

  #emptyLse(rows: number): Float32Array {
    if (this.#minusInf.length < rows) this.#minusInf = new Float32Array(rows).fill(-Infinity);
    return this.#minusInf.subarray(0, rows);
  }

  /** Destroys the worker threads; in-flight requests reject with KvoffDisposedError. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const a of this.#spare.splice(0)) a.dispose();
    await this.#piscina.destroy();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  #takeScratch(bytes: number): HostArena {
    const i = this.#spare.findIndex((a) => a.bytes >= bytes);
    if (i >= 0) return this.#spare.splice(i, 1)[0]!;
    // Not page-locked: only CPU threads touch it, and mlock limits are better spent on the KV tier.
    return new HostArena(Math.max(bytes, 4096), { pin: false });
  }

  #mapRunError(err: unknown, signal: AbortSignal | undefined): Error {
    if (this.#disposed) return new KvoffDisposedError('CpuAttentionPool');
    const e = err as Error;
    if (e?.name === 'AbortError' || signal?.aborted) return new KvoffAbortError(signal?.reason ?? e);
    const code = /exited with code: (-?\d+)/.exec(String(e?.message));
    if (code)
      return new KvoffWorkerError(
        `Expected the CPU attention worker thread to finish its task but it exited with code ${code[1]}; the pool has started a replacement`,
        { cause: err, exitCode: Number(code[1]) },
      );
    return new KvoffWorkerError(`Expected the CPU attention worker to run its task but it failed: ${String(e?.message ?? err)}`, { cause: err });
  }
}

/** Cut points 0 = c0 < c1 < ... = T giving `parts` row ranges of about equal causal work (row t costs start + t + 1). */
export function splitByWork(start: number, T: number, parts: number): number[] {
  const work = (t: number) => t * start + (t * (t + 1)) / 2; // total cost of rows [0, t)
  const total = work(T);
  const cuts = [0];
  for (let p = 1; p < parts; p++) {
    let t = cuts[cuts.length - 1]! + 1;
    while (t < T && work(t) < (total * p) / parts) t++;
    if (t < T) cuts.push(t);
  }
  cuts.push(T);
  return cuts;
}

/** Rebuilds the typed error a worker's kernel threw (it crossed the thread as {code, message}). */
function fromWorkerError(e: NonNullable<WorkerResult['error']>): Error {
  if (e.code === 'KVOFF_E_NATIVE') return new KvoffNativeError(e.message);
  const typed = fromNativeError(Object.assign(new Error(e.message), { code: e.code }));
  if (typed instanceof KvoffError) return typed;
  return new KvoffWorkerError(`Expected the CPU attention worker's kernel to succeed but it threw ${e.name}: ${e.message}`);
}

/** Checks what sharding would otherwise hide: lengths (subarrays would silently truncate) and exclude order/range. */
function checkRequest(req: CpuAttentionRequest): void {
  const { region, groupSize: G } = req;
  if (typeof region !== 'object' || region === null) throw new KvoffArgumentError('attend region', 'a KvRegion object', region);
  if (!(req.kvHeads instanceof Int32Array)) throw new KvoffArgumentError('attend kvHeads', 'an Int32Array', req.kvHeads);
  if (!(req.blockIds instanceof Int32Array)) throw new KvoffArgumentError('attend blockIds', 'an Int32Array', req.blockIds);
  if (!Number.isInteger(G) || G < 1 || G > 256) throw new KvoffArgumentError('attend groupSize', 'an integer in [1, 256]', G);
  if (!Number.isInteger(region.headDim) || region.headDim < 1) throw new KvoffArgumentError('attend region.headDim', 'a positive integer', region.headDim);
  if (!Number.isInteger(region.blockSize) || region.blockSize < 1) throw new KvoffArgumentError('attend region.blockSize', 'a positive integer', region.blockSize);
  const nh = req.kvHeads.length;
  const want = nh * G * region.headDim;
  for (const [name, a, n] of [['q', req.q, want], ['out', req.out, want], ['lse', req.lse, nh * G]] as const)
    if (!(a instanceof Float32Array) || a.length !== n) throw new KvoffArgumentError(`attend ${name}`, `Float32Array(${n})`, a);
  const maxTokens = req.blockIds.length * region.blockSize;
  if (!Number.isInteger(req.numTokens) || req.numTokens < 0 || req.numTokens > maxTokens)
    throw new KvoffRangeError('attend numTokens', req.numTokens, 0, maxTokens);
  const ex = req.exclude;
  if (ex === undefined) return;
  if (!(ex instanceof Int32Array)) throw new KvoffArgumentError('attend exclude', 'an Int32Array', ex);
  for (let i = 0; i < ex.length; i++) {
    if (ex[i]! < 0 || ex[i]! >= req.numTokens) throw new KvoffRangeError('attend exclude', ex[i]!, 0, req.numTokens - 1);
    if (i > 0 && ex[i]! <= ex[i - 1]!)
      throw new KvoffArgumentError('attend exclude', 'strictly increasing positions', `${ex[i - 1]} then ${ex[i]}`);
  }
}
