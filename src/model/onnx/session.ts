// onnxruntime-node sessions for kvoff's graphs, run on the calling thread or on a worker thread, with typed run helpers.
//
// Finding: onnxruntime-node 1.30's session.run() BLOCKS the event loop for the whole inference. Its backend.js
// defers the binding's run() with setImmediate and then calls it synchronously; the Promise only moves the block to
// the next loop turn. InferenceSession.create blocks the same way while it optimizes and prepacks the graph.
// Measured (Node 20.20, 2-core x86 VM shared with other jobs, load average 2-3): a setInterval(1 ms) ticker, a Gemm
// [T, 2048] x [2048, 4096]^T run 5-10 times back to back, largest gap between ticks. Idle, the ticker alone: max 2.3-3.8 ms.
//   on the calling thread, 1 intra-op thread: T=1 1.7-2.5 ms/run -> max gap 2.7-5.8 ms; T=64 8.6 ms -> 9.0 ms;
//     T=256 29.6 ms -> 30.2 ms; T=512 (the ~50 ms graph) 57-61 ms -> 64-66 ms. The gap is the run time.
//   on the calling thread, 2 intra-op threads: T=512 47-89 ms/run -> max gap 78-109 ms.
//   WorkerRunner (sessions on a worker thread), T=512, 63 ms/run: 530 ticks instead of 20, p90 gap 1.1 ms,
//     max 9-11 ms. --trace-gc shows no pause above 1.5 ms, so the spikes are the scheduler on 2 shared cores.
// Per call, blocking is too long to call harmless: an 8B layer holds ~0.9 GB of f32 weights, so even a T = 1 graph
// pair streams ~0.9 GB (>= 18 ms at 50 GB/s), and prefill chunks are compute-bound at tens of ms and more. Use WorkerRunner
// (the default of createRunner) wherever the main thread must stay live (CLI progress, abort signals, the
// attention workers' messages). InlineRunner remains for tests and one-shot tools: no thread hop, no copy.
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { KvoffArgumentError, KvoffDisposedError, KvoffError } from '../../errors.js';
import type { ModelConfig } from '../types.js';

export interface SessionOptions {
  /** Threads one run() may use; onnxruntime's default is one per physical core. */
  intraOpNumThreads?: number;
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
}

/** One session on the CPU execution provider from ModelProto bytes (builder.ts). */
export async function createSession(model: Uint8Array, opts: SessionOptions = {}): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(model, sessionOptions(opts));
}

function sessionOptions(opts: SessionOptions): ort.InferenceSession.SessionOptions {
  const o: ort.InferenceSession.SessionOptions = {
    executionProviders: ['cpu'],
    graphOptimizationLevel: opts.graphOptimizationLevel ?? 'all',
  };
  if (opts.intraOpNumThreads !== undefined) o.intraOpNumThreads = opts.intraOpNumThreads;
  return o;
}

/** A float32 tensor as plain data, the form that crosses threads. */
export interface F32Tensor {
  data: Float32Array;
  dims: number[];
}
export type F32Tensors = Record<string, F32Tensor>;

export interface RunOptions {
  /** WorkerRunner only: move input buffers to the worker instead of copying them (the caller's views detach). */
  transfer?: boolean;
}

/** Where kvoff's dense graphs run: named sessions, float32 in and out. */
export interface DenseRunner extends AsyncDisposable {
  load(name: string, model: Uint8Array, opts?: RunOptions): Promise<void>;
  run(name: string, feeds: F32Tensors, opts?: RunOptions): Promise<F32Tensors>;
  dispose(): Promise<void>;
}

/** Sessions on the calling thread: each run() blocks the event loop for its whole duration (see the top of file). */
export class InlineRunner implements DenseRunner {
  readonly #sessions = new Map<string, ort.InferenceSession>();
  #disposed = false;
  constructor(readonly options: SessionOptions = {}) {}

  async load(name: string, model: Uint8Array): Promise<void> {
    if (this.#disposed) throw new KvoffDisposedError('InlineRunner');
    const s = await createSession(model, this.options);
    await this.#sessions.get(name)?.release();
    this.#sessions.set(name, s);
  }

  async run(name: string, feeds: F32Tensors): Promise<F32Tensors> {
    if (this.#disposed) throw new KvoffDisposedError('InlineRunner');
    const s = this.#sessions.get(name);
    if (s === undefined) throw new KvoffArgumentError('graph name', `one of [${[...this.#sessions.keys()].join(', ')}]`, name);
    const inputs: Record<string, ort.Tensor> = {};
    for (const [k, t] of Object.entries(feeds)) inputs[k] = new ort.Tensor('float32', t.data, t.dims);
    const outputs = await s.run(inputs);
    const out: F32Tensors = {};
    for (const [k, t] of Object.entries(outputs)) out[k] = { data: t.data as Float32Array, dims: [...t.dims] };
    return out;
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const s of this.#sessions.values()) await s.release();
    this.#sessions.clear();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

// The worker is plain CommonJS evaluated from a string: it runs unchanged from src under vitest and from dist,
// with no TypeScript loader and no path to a compiled file. It owns the sessions and runs one request at a time.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const ort = require(workerData.ortPath);
const sessions = new Map();
function wholeBuffer(a) {
  return a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && !(a.buffer instanceof SharedArrayBuffer);
}
async function handle(m) {
  if (m.op === 'load') {
    const s = await ort.InferenceSession.create(m.model, workerData.sessionOptions);
    const old = sessions.get(m.name);
    sessions.set(m.name, s);
    if (old) await old.release();
    return [undefined, []];
  }
  if (m.op === 'run') {
    const s = sessions.get(m.name);
    if (!s) throw new Error('Expected one of [' + [...sessions.keys()].join(', ') + '] for graph name but received ' + m.name);
    const feeds = {};
    for (const k of Object.keys(m.feeds)) feeds[k] = new ort.Tensor('float32', m.feeds[k].data, m.feeds[k].dims);
    const outputs = await s.run(feeds);
    const out = {}, transfer = [];
    for (const k of Object.keys(outputs)) {
      let data = outputs[k].data;
      if (!wholeBuffer(data)) data = data.slice();
      out[k] = { data, dims: Array.from(outputs[k].dims) };
      transfer.push(data.buffer);
    }
    return [out, transfer];
  }
  if (m.op === 'dispose') {
    for (const s of sessions.values()) await s.release();
    sessions.clear();
    return [undefined, []];
  }
  throw new Error('Expected load, run or dispose for op but received ' + m.op);
}
parentPort.on('message', async (m) => {
  try {
    const [result, transfer] = await handle(m);
    parentPort.postMessage({ id: m.id, ok: true, result }, transfer);
  } catch (e) {
    parentPort.postMessage({ id: m.id, ok: false, message: String(e && e.message || e), stack: e && e.stack });
  }
});
`;

/** An error thrown inside the session worker, rethrown on the caller's side. */
export class KvoffOnnxWorkerError extends KvoffError {
  constructor(message: string, readonly workerStack?: string) {
    super('KVOFF_E_ONNX_WORKER', message);
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/**
 * Sessions on a worker_threads worker, so run() leaves the event loop free. Outputs come back as transferred
 * buffers (no copy); inputs are copied unless `transfer: true`, and only whole, non-shared buffers are
 * transferred (a subarray of a larger buffer, e.g. an arena, is copied instead of detaching its owner).
 * SharedArrayBuffer-backed inputs cross without a copy either way.
 * Measured at the top of the file: with a 63 ms run in the worker the main loop's p90 tick gap stays 1.1 ms.
 */
export class WorkerRunner implements DenseRunner {
  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  #nextId = 0;
  #disposed = false;
  #failure: Error | null = null;

  constructor(readonly options: SessionOptions = {}) {
    const ortPath = createRequire(import.meta.url).resolve('onnxruntime-node');
    this.#worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { ortPath, sessionOptions: sessionOptions(options) } });
    this.#worker.unref(); // an idle runner does not keep the process alive; #call refs it while requests are out
    this.#worker.on('message', (m: { id: number; ok: boolean; result?: unknown; message?: string; stack?: string }) => {
      const p = this.#pending.get(m.id);
      if (p === undefined) return;
      this.#settled(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(new KvoffOnnxWorkerError(m.message ?? 'unknown error', m.stack));
    });
    const fail = (e: Error) => {
      this.#failure = e;
      for (const [id, p] of this.#pending) {
        this.#settled(id);
        p.reject(new KvoffOnnxWorkerError(`onnx session worker failed: ${e.message}`, e.stack));
      }
    };
    this.#worker.on('error', fail);
    this.#worker.on('exit', (code) => {
      if (!this.#disposed) fail(new Error(`exited with code ${code}`));
    });
  }

  #settled(id: number): void {
    this.#pending.delete(id);
    if (this.#pending.size === 0) this.#worker.unref();
  }

  #call(msg: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<unknown> {
    if (this.#disposed) return Promise.reject(new KvoffDisposedError('WorkerRunner'));
    if (this.#failure) return Promise.reject(new KvoffOnnxWorkerError(`onnx session worker failed: ${this.#failure.message}`));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      if (this.#pending.size === 0) this.#worker.ref();
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...msg, id }, transfer);
    });
  }

  /** With `transfer: true` the model bytes move to the worker (a graph can be most of a GB) when they own their buffer. */
  async load(name: string, model: Uint8Array, opts: RunOptions = {}): Promise<void> {
    await this.#call({ op: 'load', name, model }, opts.transfer ? transferable([model]) : []);
  }

  async run(name: string, feeds: F32Tensors, opts: RunOptions = {}): Promise<F32Tensors> {
    const transfer = opts.transfer ? transferable(Object.values(feeds).map((t) => t.data)) : [];
    return (await this.#call({ op: 'run', name, feeds }, transfer)) as F32Tensors;
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    try {
      if (this.#failure === null) await this.#call({ op: 'dispose' });
    } finally {
      this.#disposed = true;
      await this.#worker.terminate();
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

/** The buffers among `views` that can move without detaching anything else: whole, non-shared, listed once. */
function transferable(views: ArrayBufferView[]): ArrayBuffer[] {
  const out: ArrayBuffer[] = [];
  for (const v of views) {
    const b = v.buffer;
    if (b instanceof ArrayBuffer && v.byteOffset === 0 && v.byteLength === b.byteLength && !out.includes(b)) out.push(b);
  }
  return out;
}

/** A runner of either kind; `offMainThread` defaults to true because run() blocks (see the top of the file). */
export function createRunner(opts: SessionOptions & { offMainThread?: boolean } = {}): DenseRunner {
  const { offMainThread = true, ...session } = opts;
  return offMainThread ? new WorkerRunner(session) : new InlineRunner(session);
}

// ---- Typed helpers over the graphs of builder.ts ----

/** Session names a model's graphs are loaded under. */
export const graphNames = {
  pre: (layer: number) => `layer${layer}.pre`,
  post: (layer: number) => `layer${layer}.post`,
  final: 'final',
} as const;

function rowsOf(field: string, data: Float32Array, width: number): number {
  const T = data.length / width;
  if (!Number.isInteger(T) || T < 1) throw new KvoffArgumentError(field, `a Float32Array of T x ${width} floats`, data);
  return T;
}

function sameRows(field: string, data: Float32Array, T: number, width: number): void {
  if (data.length !== T * width) throw new KvoffArgumentError(field, `Float32Array(${T * width}) ([${T}, ${width}])`, data);
}

export interface QKV {
  q: Float32Array; // [T, numHeads, headDim]
  k: Float32Array; // [T, numKvHeads, headDim]
  v: Float32Array; // [T, numKvHeads, headDim]
}

/** hidden [T, hidden], cos/sin [T, headDim] (rope.ts) -> q, k (rotated), v. */
export async function runPreAttention(
  r: DenseRunner, c: ModelConfig, layer: number, hidden: Float32Array, cos: Float32Array, sin: Float32Array, opts?: RunOptions,
): Promise<QKV> {
  const T = rowsOf('hidden', hidden, c.hiddenSize);
  sameRows('cos', cos, T, c.headDim);
  sameRows('sin', sin, T, c.headDim);
  const out = await r.run(
    graphNames.pre(layer),
    { hidden: { data: hidden, dims: [T, c.hiddenSize] }, cos: { data: cos, dims: [T, c.headDim] }, sin: { data: sin, dims: [T, c.headDim] } },
    opts,
  );
  return { q: out.q.data, k: out.k.data, v: out.v.data };
}

/** attn [T, numHeads * headDim], residual [T, hidden] (the layer's input) -> the layer's output [T, hidden]. */
export async function runPostAttention(
  r: DenseRunner, c: ModelConfig, layer: number, attn: Float32Array, residual: Float32Array, opts?: RunOptions,
): Promise<Float32Array> {
  const T = rowsOf('residual', residual, c.hiddenSize);
  sameRows('attn', attn, T, c.numHeads * c.headDim);
  const out = await r.run(
    graphNames.post(layer),
    { attn: { data: attn, dims: [T, c.numHeads * c.headDim] }, residual: { data: residual, dims: [T, c.hiddenSize] } },
    opts,
  );
  return out.hidden.data;
}

/** hidden [T, hidden] after the last layer -> logits [T, vocab] (one final graph covering the whole vocab). */
export async function runFinal(r: DenseRunner, c: ModelConfig, hidden: Float32Array, opts?: RunOptions): Promise<Float32Array> {
  const T = rowsOf('hidden', hidden, c.hiddenSize);
  const out = await r.run(graphNames.final, { hidden: { data: hidden, dims: [T, c.hiddenSize] } }, opts);
  return out.logits.data;
}
