// The machine a bench ran on, and the bandwidths its lower bound divides by, measured once per bench run.
import { availableParallelism, cpus, totalmem } from 'node:os';
import { Worker } from 'node:worker_threads';
import { KvoffBackendError } from '../model/model.js';
import { native } from '../native.js';

/** Bandwidths in GB/s (1e9 bytes/s) of the three resources a decode step draws on (DESIGN.md §7). */
export interface Bandwidths {
  deviceGBs: number; // device memory: weights and device-tier KV are read at this rate
  pcieGBs: number; // host -> device copies (bytes moved)
  hostGBs: number; // host memory read by the CPU attention workers
}

export interface Machine extends Bandwidths {
  backend: 'cpu' | 'cuda';
  cpuModel: string;
  cpuCount: number;
  totalMemBytes: number;
  simd: string;
  memcpy: { threads: number; bytesPerThread: number; copyGBs: number; readWriteGBs: number };
  sources: Record<keyof Bandwidths, string>; // where each figure came from
}

/** Measures device and PCIe bandwidth on a backend whose device is not host memory. */
export type DeviceProbe = () => Promise<{ deviceGBs: number; pcieGBs: number; source: string }>;

// Each worker copies its own pair of buffers (per-thread ArrayBuffers, not shared memory, which V8 copies word
// by word); all are released together through an Atomics barrier, and the span from the first start to the last
// end is the wall time. CommonJS, because eval'd worker code is a script.
const WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const { ctl, bytes, reps } = workerData;
const flags = new Int32Array(ctl); // [go, ready]
const src = Buffer.alloc(bytes, 1);
const dst = Buffer.alloc(bytes, 2);
src.copy(dst); // page faults stay out of the timing
Atomics.add(flags, 1, 1);
Atomics.wait(flags, 0, 0);
const t0 = performance.timeOrigin + performance.now();
for (let i = 0; i < reps; i++) src.copy(dst);
parentPort.postMessage({ t0, t1: performance.timeOrigin + performance.now() });
`;

/** Host memcpy over `threads` threads at once: copy GB/s counts bytes copied, read+write GB/s twice that. */
export async function measureHostMemcpy(threads = Math.min(availableParallelism(), 16), totalBytes = 512 << 20, reps = 4) {
  // 2 x 512 MiB in all streams from DRAM on any machine's last-level cache, and takes well under a second.
  const bytesPerThread = Math.max(16 << 20, Math.floor(totalBytes / threads / 4096) * 4096);
  const ctl = new SharedArrayBuffer(8);
  const flags = new Int32Array(ctl);
  const workers = Array.from({ length: threads }, () => new Worker(WORKER, { eval: true, workerData: { ctl, bytes: bytesPerThread, reps } }));
  try {
    const results = workers.map((w) => new Promise<{ t0: number; t1: number }>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    }));
    while (Atomics.load(flags, 1) < threads) await new Promise((r) => setTimeout(r, 1));
    Atomics.store(flags, 0, 1);
    Atomics.notify(flags, 0);
    const spans = await Promise.all(results);
    const ms = Math.max(...spans.map((s) => s.t1)) - Math.min(...spans.map((s) => s.t0));
    const copyGBs = (threads * bytesPerThread * reps) / (ms * 1e6);
    return { threads, bytesPerThread, copyGBs, readWriteGBs: 2 * copyGBs };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/**
 * The bench's machine. On the CPU backend the "device" is a capped host arena, so every resource is host memory:
 * reads (device tier, weights, CPU attention) run at the read+write memcpy figure, the DRAM traffic a stream can
 * reach, which keeps the bound a lower bound; an H2D "copy" reads and writes each byte, so it runs at the copy
 * figure. A CUDA backend passes `probe` with its measured device and PCIe figures (e.g. from `kvoff doctor`).
 */
export async function measureMachine(backend: 'cpu' | 'cuda', probe?: DeviceProbe): Promise<Machine> {
  const memcpy = await measureHostMemcpy();
  const base = {
    backend, cpuModel: cpus()[0]?.model.trim() ?? 'unknown', cpuCount: availableParallelism(), totalMemBytes: totalmem(),
    simd: native().buildInfo().simd, memcpy, hostGBs: memcpy.readWriteGBs,
  };
  if (backend === 'cpu') {
    return {
      ...base, deviceGBs: memcpy.readWriteGBs, pcieGBs: memcpy.copyGBs,
      sources: { deviceGBs: 'host memcpy r+w (cpu backend: the device tier is host memory)', pcieGBs: 'host memcpy copy (cpu backend)', hostGBs: 'host memcpy r+w' },
    };
  }
  if (!probe) throw new KvoffBackendError(backend, 'kvoff bench has no probe of CUDA device and PCIe bandwidth yet');
  const d = await probe();
  return { ...base, deviceGBs: d.deviceGBs, pcieGBs: d.pcieGBs, sources: { deviceGBs: d.source, pcieGBs: d.source, hostGBs: 'host memcpy r+w' } };
}
