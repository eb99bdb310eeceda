// The CUDA backend's figures for the bench's bound: device-memory copy speed (read + write) and pinned H2D speed,
// measured on this GPU at the start of a bench run.
import { DeviceArena, DeviceLayout } from '../cuda/device-arena.js';
import { KvoffBackendError } from '../model/model.js';
import { native } from '../native.js';
import type { DeviceProbe } from './machine.js';

/** Best device-to-device copy of `bytes` over `reps` timed copies, as read + write GB/s (what a kernel streaming reads reaches at best). */
export async function deviceCopyGBs(bytes: number, reps: number): Promise<number> {
  const arena = DeviceArena.create(new DeviceLayout().add('src', bytes).add('dst', bytes));
  const stream = native().cudaStreamCreate();
  try {
    const copy = () => native().cudaCopyD2D({ src: arena.ref('src'), dst: arena.ref('dst'), bytes, stream });
    copy(); // warm-up: first touch, clocks up
    let best = Infinity;
    for (let i = 0; i < reps; i++) {
      const t0 = native().cudaEventRecord({ stream, timing: true });
      copy();
      const t1 = native().cudaEventRecord({ stream, timing: true });
      await native().cudaStreamSynchronize({ stream });
      best = Math.min(best, native().cudaEventElapsedMs({ start: t0, end: t1 }));
      native().cudaEventFree({ event: t0 });
      native().cudaEventFree({ event: t1 });
    }
    return (2 * bytes) / (best * 1e6);
  } finally {
    native().cudaStreamDestroy({ stream });
    arena.free();
  }
}

export const cudaProbe: DeviceProbe = async () => {
  const link = await native().cudaBandwidth({ device: 0, bytes: 256 << 20, iterations: 5 });
  if (!link.ok) throw new KvoffBackendError('cuda', `the pinned H2D bandwidth could not be measured: ${link.reason}`);
  const deviceGBs = await deviceCopyGBs(512 << 20, 5);
  return { deviceGBs, pcieGBs: link.h2dGbPerS, source: `measured at bench start: device copy of 512 MiB (read + write), pinned H2D of 256 MiB` };
};
