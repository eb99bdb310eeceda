// What a model shape costs a bench run on the CPU backend: disk for its random weights, and host memory to run it.
import { parameterCount } from '../model/random-model.js';
import type { ModelConfig } from '../model/types.js';
import { formatBytes } from '../units.js';
import { kvBytesPerToken } from './kv-traffic.js';

export interface Footprint {
  diskBytes: number; // the bf16 safetensors
  hostBytes: number; // peak while it runs
}

/**
 * The CPU backend reads the bf16 files whole, then builds f32 ONNX graphs from them (bf16 2 + f32 4 bytes per
 * parameter at the peak of loading), and holds the full-precision KV of the longest run in host memory.
 */
export function shapeFootprint(c: ModelConfig, maxTokens: number, maxBatch: number): Footprint {
  const params = parameterCount(c);
  return { diskBytes: params * 2, hostBytes: params * 6 + kvBytesPerToken(c) * maxTokens * maxBatch };
}

export interface Room {
  totalMem: number;
  freeMem: number;
  freeDisk: number; // where the weights are written
  tmp: string;
}

/** A line saying what the shape needs, when that is a lot (>= 1 GiB) or more than is free; null otherwise. */
export function footprintWarning(fp: Footprint, room: Room): string | null {
  const short = fp.hostBytes > room.freeMem || fp.diskBytes > room.freeDisk;
  if (!short && fp.hostBytes < 2 ** 30) return null;
  return (
    `needs about ${formatBytes(fp.hostBytes)} of host memory (${formatBytes(room.freeMem)} free of ${formatBytes(room.totalMem)}) ` +
    `and ${formatBytes(fp.diskBytes)} of disk in ${room.tmp} (${formatBytes(room.freeDisk)} free) for its random weights` +
    (short ? '; that is more than this machine has free, so the run may fail or swap' : '')
  );
}
