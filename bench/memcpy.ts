// Host memcpy bandwidth (one thread, and N worker threads started together), plus the barrier-started worker team the kernel bench reuses.
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

export const MiB = 1 << 20;

export interface Timing {
  medianMs: number;
  minMs: number;
  maxMs: number;
  reps: number;
}

/** One memcpy measurement. copyGBs counts bytes copied; readWriteGBs counts each byte read and written (2x). */
export interface CopyBandwidth {
  method: string;
  threads: number;
  bytes: number; // bytes copied per rep, all threads together
  copyGBs: number;
  readWriteGBs: number;
  timing: Timing;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function summarize(ms: readonly number[]): Timing {
  return { medianMs: median(ms), minMs: Math.min(...ms), maxMs: Math.max(...ms), reps: ms.length };
}

/** Median of `reps` timings of fn after `warmup` untimed calls (the first call pays page faults and cache misses). */
export function timeReps(fn: () => void, reps: number, warmup = 1): Timing {
  for (let i = 0; i < warmup; i++) fn();
  const ms: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    ms.push(performance.now() - t0);
  }
  return summarize(ms);
}

export function gbPerS(bytes: number, ms: number): number {
  return bytes / (ms * 1e6);
}

export function copyResult(method: string, threads: number, bytes: number, timing: Timing): CopyBandwidth {
  const copyGBs = gbPerS(bytes, timing.medianMs);
  return { method, threads, bytes, copyGBs, readWriteGBs: 2 * copyGBs, timing };
}

/**
 * A reusable single-thread copier: allocating 2 x bytes once lets a caller re-measure memcpy right
 * next to each kernel measurement, so every ratio compares figures taken seconds apart.
 */
export function singleThreadCopier(bytes: number): (reps: number) => CopyBandwidth {
  const src = Buffer.alloc(bytes, 1); // alloc + fill touches every page of src
  const dst = Buffer.alloc(bytes);
  return (reps) => copyResult('Buffer.copy, main thread', 1, bytes, timeReps(() => src.copy(dst), reps));
}

/** Single-thread memcpy bandwidth over `bytes` (>= 256 MiB so it streams from DRAM, not cache). */
export function memcpySingleThread(bytes = 256 * MiB, reps = 7): CopyBandwidth {
  return singleThreadCopier(bytes)(reps);
}

// ---- Worker team: T threads released together through an Atomics barrier ----

const GEN = 0; // generation: bumped by the main thread to release one rep; -1 stops the team
const ARRIVED = 1; // workers waiting at the barrier
const DONE = 2; // workers finished with the current generation
const FAILED = 3; // set by a worker whose work threw
const WAIT_LIMIT_MS = 300_000; // a wedged worker turns into an error, not a hung bench

interface TeamData {
  ctl: SharedArrayBuffer;
  rank: number;
  threads: number;
  role: string;
}

/**
 * Threads that wait at one barrier and are released together by a single Atomics.notify, so the
 * timed interval (release .. last finisher) is the aggregate bandwidth of all of them at once.
 */
export class Team {
  readonly #ctl: Int32Array;
  readonly #workers: Worker[];
  #gen = 0;

  private constructor(ctl: Int32Array, workers: Worker[]) {
    this.#ctl = ctl;
    this.#workers = workers;
  }

  /** Starts `threads` workers of `moduleUrl` (which must call serveTeam for `role`) and waits until each has set up. */
  static async start(moduleUrl: URL, role: string, threads: number, payload: (rank: number) => object): Promise<Team> {
    const ctl = new SharedArrayBuffer(4 * Int32Array.BYTES_PER_ELEMENT);
    const workers = Array.from({ length: threads }, (_, rank) => {
      const data: TeamData = { ...payload(rank), ctl, rank, threads, role };
      return new Worker(moduleUrl, { workerData: data });
    });
    try {
      await Promise.all(workers.map((w) => once(w, 'message'))); // rejects on a worker's setup error
    } catch (err) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw err;
    }
    return new Team(new Int32Array(ctl), workers);
  }

  get threads(): number {
    return this.#workers.length;
  }

  /** One rep: wait for all at the barrier, release them together, wait for the last; returns wall ms. */
  run(): number {
    const c = this.#ctl;
    this.#waitCount(ARRIVED);
    Atomics.store(c, ARRIVED, 0);
    Atomics.store(c, DONE, 0);
    const t0 = performance.now();
    Atomics.store(c, GEN, ++this.#gen);
    Atomics.notify(c, GEN);
    this.#waitCount(DONE);
    const ms = performance.now() - t0;
    if (Atomics.load(c, FAILED)) throw new Error('Expected every bench worker to finish its work but one threw (its error is on stderr)');
    return ms;
  }

  /** Median of reps after warm-up reps. */
  time(reps: number, warmup = 1): Timing {
    for (let i = 0; i < warmup; i++) this.run();
    return summarize(Array.from({ length: reps }, () => this.run()));
  }

  async stop(): Promise<void> {
    Atomics.store(this.#ctl, GEN, -1);
    Atomics.notify(this.#ctl, GEN);
    await Promise.all(this.#workers.map((w) => w.terminate()));
  }

  #waitCount(slot: number): void {
    const n = this.#workers.length;
    for (let v = Atomics.load(this.#ctl, slot); v < n; v = Atomics.load(this.#ctl, slot)) {
      if (Atomics.wait(this.#ctl, slot, v, WAIT_LIMIT_MS) === 'timed-out')
        throw new Error(`Expected ${n} bench workers at the barrier within ${WAIT_LIMIT_MS} ms but only ${v} came`);
    }
  }
}

/** Worker side: set up once, then do one unit of work per released generation until told to stop. */
export function serveTeam(setup: (data: TeamData & Record<string, unknown>) => () => void): void {
  const data = workerData as TeamData & Record<string, unknown>;
  const c = new Int32Array(data.ctl);
  const work = setup(data);
  parentPort!.postMessage('ready');
  let gen = 0;
  for (;;) {
    Atomics.add(c, ARRIVED, 1);
    Atomics.notify(c, ARRIVED);
    Atomics.wait(c, GEN, gen); // returns at once if GEN already moved on
    gen = Atomics.load(c, GEN);
    if (gen < 0) return;
    try {
      work();
    } catch (err) {
      Atomics.store(c, FAILED, 1);
      console.error(err);
    }
    Atomics.add(c, DONE, 1);
    Atomics.notify(c, DONE);
  }
}

export function isTeamWorker(role: string): boolean {
  return !isMainThread && (workerData as Partial<TeamData> | null)?.role === role;
}

// ---- Multi-thread memcpy ----

/**
 * 'shared': every thread copies its slice of two SharedArrayBuffers. V8 copies shared memory with
 * relaxed-atomic word moves rather than libc memcpy, which on some machines halves the speed, so
 * 'private' (each thread copies between its own ArrayBuffers) is measured too; the faster of the two
 * is the fair yardstick for a native kernel.
 */
export type CopyBuffers = 'private' | 'shared';

interface CopyPayload {
  buffers: CopyBuffers;
  sliceBytes: number;
  src?: SharedArrayBuffer;
  dst?: SharedArrayBuffer;
}

function copyWork(d: CopyPayload & { rank: number }): () => void {
  if (d.buffers === 'shared') {
    const at = d.rank * d.sliceBytes;
    const src = new Uint8Array(d.src!, at, d.sliceBytes);
    const dst = new Uint8Array(d.dst!, at, d.sliceBytes);
    return () => dst.set(src);
  }
  const src = new Uint8Array(d.sliceBytes).fill(1); // fill touches the pages in this thread
  const dst = new Uint8Array(d.sliceBytes);
  return () => dst.set(src);
}

/** Bytes copied per rep at T threads: >= 256 MiB in all and >= 32 MiB per thread, so each slice outgrows any cache. */
export function multiThreadBytes(threads: number, minTotal = 256 * MiB, minPerThread = 32 * MiB): number {
  const per = Math.max(minPerThread, Math.ceil(minTotal / threads / 4096) * 4096);
  return per * threads;
}

/** Aggregate memcpy bandwidth of `threads` workers copying disjoint slices concurrently, released together. */
export async function memcpyMultiThread(threads: number, buffers: CopyBuffers, totalBytes = multiThreadBytes(threads), reps = 7): Promise<CopyBandwidth> {
  const sliceBytes = Math.floor(totalBytes / threads);
  const shared = buffers === 'shared' ? { src: new SharedArrayBuffer(sliceBytes * threads), dst: new SharedArrayBuffer(sliceBytes * threads) } : {};
  if (shared.src) new Uint8Array(shared.src).fill(1);
  const team = await Team.start(new URL(import.meta.url), 'memcpy', threads, () => ({ buffers, sliceBytes, ...shared }));
  try {
    const method = buffers === 'shared' ? 'TypedArray.set, SharedArrayBuffer slices' : 'TypedArray.set, per-thread ArrayBuffers';
    return copyResult(method, threads, sliceBytes * threads, team.time(reps));
  } finally {
    await team.stop();
  }
}

if (isTeamWorker('memcpy')) serveTeam((d) => copyWork(d as unknown as CopyPayload & { rank: number }));
