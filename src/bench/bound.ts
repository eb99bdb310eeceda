// The lower bound on a decode step from the bytes it moves (DESIGN.md §7): each resource's bytes over its bandwidth.
import type { Bandwidths } from './machine.js';

/** Bytes one decode step moves, all sequences of the batch together. */
export interface StepTraffic {
  weightBytes: number; // dense weights, read once per step from device memory
  deviceKvBytes: number; // KV read in the device tier: full-precision (dense, staged layers), low-bit copy, hot set
  h2dBytes: number; // host -> device copies
  cpuKvBytes: number; // full-precision KV the CPU workers attend, read from host memory
}

export type Resource = 'device' | 'pcie' | 'host';

export interface Bound {
  ms: number; // the bound: the slowest resource, since the three run at once
  limiter: Resource; // which resource sets it
  perResource: Record<Resource, number>; // ms each would need alone
}

/** ms to move `bytes` at `gbs` GB/s (1e9 bytes/s). Zero bytes cost nothing, even at an unknown (0) bandwidth. */
export function transferMs(bytes: number, gbs: number): number {
  if (bytes === 0) return 0;
  return gbs > 0 ? bytes / (gbs * 1e6) : Infinity;
}

/**
 * The copy stream, the CPU workers and the device run concurrently (DESIGN §1), so a step can be no faster than
 * its busiest resource: max over resources of bytes / bandwidth. On the CPU backend the three share one memory
 * bus, which makes this the looser (still valid) of the two bounds; `sumMs` gives the shared-bus one.
 */
export function stepBound(t: StepTraffic, bw: Bandwidths): Bound {
  const perResource: Record<Resource, number> = {
    device: transferMs(t.weightBytes + t.deviceKvBytes, bw.deviceGBs),
    pcie: transferMs(t.h2dBytes, bw.pcieGBs),
    host: transferMs(t.cpuKvBytes, bw.hostGBs),
  };
  let limiter: Resource = 'device';
  for (const r of ['pcie', 'host'] as const) if (perResource[r] > perResource[limiter]) limiter = r;
  return { ms: perResource[limiter], limiter, perResource };
}

/** The bound when the resources share one bus and cannot overlap (the CPU backend): the sum of their times. */
export function sumMs(b: Bound): number {
  return b.perResource.device + b.perResource.pcie + b.perResource.host;
}
