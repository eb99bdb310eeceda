// Piscina worker: exact attention of one shard (head group × block range) over the shared host arena.
import { threadId } from 'node:worker_threads';
import { native, type ArenaRef, type KvAttendOptions, type KvRegion } from '../src/native.js';

/**
 * One shard. The KV region and the q/out/lse scratch are addressed by arena handle + offset, which
 * every thread of the process shares: no KV byte is copied, native code writes (o, lse) in place,
 * and only the timing object travels back.
 */
export interface AttendTask extends KvAttendOptions {
  kind?: 'attend';
  blockIds: Int32Array; // [block1 - block0] this shard's physical ids, in logical order
  kvHeads: Int32Array; // [nh] this shard's heads
  q: ArenaRef; // [nh, groupSize, headDim] f32
  out: ArenaRef; // [nh, groupSize, headDim] f32
  lse: ArenaRef; // [nh, groupSize] f32
  exclude?: Int32Array; // sorted positions relative to this shard's first token
}

/** Round-trip measurement; `holdMs` blocks the thread that long, so tests can pin tasks to distinct threads. */
export interface NoopTask {
  kind: 'noop';
  holdMs?: number;
}

/** Test-only: ends this worker thread (process.exit in a worker stops just that thread). */
export interface CrashTask {
  kind: 'crash';
}

/**
 * Causal prefill rows [t0, t1) of a chunk: query t sees positions [0, start + t]. q/out/lse are views
 * of SharedArrayBuffers, so every thread writes its rows in place.
 */
export interface CausalTask extends KvRegion {
  kind: 'causal';
  blockIds: Int32Array; // the sequence's physical ids, logical order
  start: number; // position of query row 0
  t0: number;
  t1: number;
  kvHeads: Int32Array; // [nh]
  groupSize: number;
  scale: number;
  q: Float32Array; // [T, nh, groupSize, headDim] on a SharedArrayBuffer
  out: Float32Array; // [T, nh, groupSize, headDim] on a SharedArrayBuffer
  lse: Float32Array; // [T, nh, groupSize] on a SharedArrayBuffer
}

export type WorkerTask = AttendTask | CausalTask | NoopTask | CrashTask;

export interface WorkerResult {
  startedAt: number; // epoch ms (timeOrigin + now), comparable across threads
  endedAt: number;
  threadId: number;
  /** Errors travel as data: structured clone would drop the typed class and its `code`. */
  error?: { code?: string; name: string; message: string };
}

const now = (): number => performance.timeOrigin + performance.now();

export default function run(task: WorkerTask): WorkerResult {
  const startedAt = now();
  if (task.kind === 'crash') process.exit(1);
  if (task.kind === 'noop') {
    if (task.holdMs) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, task.holdMs);
    return { startedAt, endedAt: now(), threadId };
  }
  try {
    if (task.kind === 'causal') runCausal(task);
    else native().kvAttend(task);
    return { startedAt, endedAt: now(), threadId };
  } catch (err) {
    const e = err as { code?: unknown; name?: unknown; message?: unknown };
    const error = {
      name: typeof e.name === 'string' ? e.name : 'Error',
      message: typeof e.message === 'string' ? e.message : String(err),
      ...(typeof e.code === 'string' ? { code: e.code } : {}),
    };
    return { startedAt, endedAt: now(), threadId, error };
  }
}

function runCausal(t: CausalTask): void {
  const { handle, offset, numBlocks, numKvHeads, headDim, blockSize, dtype, blockIds, kvHeads, groupSize, scale } = t;
  const row = kvHeads.length * groupSize * headDim;
  const lrow = kvHeads.length * groupSize;
  for (let i = t.t0; i < t.t1; i++) {
    native().kvAttend({
      handle, offset, numBlocks, numKvHeads, headDim, blockSize, dtype, blockIds, kvHeads, groupSize, scale,
      numTokens: t.start + i + 1,
      q: t.q.subarray(i * row, (i + 1) * row),
      out: t.out.subarray(i * row, (i + 1) * row),
      lse: t.lse.subarray(i * lrow, (i + 1) * lrow),
    });
  }
}
