// Host memcpy GB/s at 1, 2, 4, ... threads up to the core count: how far CPU attention can scale before DRAM is the limit.
import { native } from '../native.js';

export interface MemcpyRow {
  threads: number;
  bytes: number; // copied per iteration, all threads together
  iterations: number;
  gbPerS: number; // bytes copied per second / 1e9, best iteration
  readWriteGbPerS: number; // each byte is read and written: the figure DESIGN §7 quotes (≈ 58 GB/s, 16 threads, H100 host)
}

export interface MemcpyOptions {
  cores: number;
  /** Bytes per thread at least; the total is also at least `minTotalBytes`, so every run outgrows the last-level cache. */
  minBytesPerThread?: number;
  minTotalBytes?: number;
  iterations?: number;
}

/** Powers of two below `cores`, then `cores` itself: 1, 2, 4, ..., cores. */
export function threadCounts(cores: number): number[] {
  const out: number[] = [];
  for (let t = 1; t < cores; t *= 2) out.push(t);
  out.push(Math.max(1, cores));
  return out;
}

/**
 * One row per thread count, measured one after another (never overlapping, or they would share the
 * bus). Native threads rather than worker_threads: they copy with libc memcpy, the same copy as
 * selfcheck's single-thread Buffer.copy yardstick, without V8's slower copy of SharedArrayBuffers.
 */
export async function measureMemcpyThreads(o: MemcpyOptions): Promise<MemcpyRow[]> {
  const perThread = o.minBytesPerThread ?? 16 << 20;
  const minTotal = o.minTotalBytes ?? 256 << 20;
  const iterations = o.iterations ?? 5;
  const rows: MemcpyRow[] = [];
  for (const threads of threadCounts(o.cores)) {
    const bytes = Math.max(minTotal, perThread * threads);
    const r = await native().hostMemcpyBandwidth({ bytes, threads, iterations });
    rows.push({ threads, bytes: r.bytes, iterations, gbPerS: r.gbPerS, readWriteGbPerS: 2 * r.gbPerS });
  }
  return rows;
}
