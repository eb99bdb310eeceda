// Gathers the `kvoff doctor` report: backend choice, GPU, pinned memory, link and memcpy speeds, CPU features.
import { KvoffBackendError, type BackendName } from '../model/model.js';
import { native } from '../native.js';
import { cpuReport, type CpuReport } from './cpu-features.js';
import type { Finding } from './finding.js';
import { gpuReport, type GpuReport } from './gpu.js';
import { measureMemcpyThreads, type MemcpyRow } from './memcpy-threads.js';
import { pinnedReport, type PinnedReport } from './pinned-memory.js';

export interface DoctorOptions {
  backend?: BackendName;
  /** Small buffers and few repetitions: seconds become milliseconds, and the numbers get noisy (tests). */
  quick?: boolean;
}

export interface BackendChoice {
  asked: BackendName;
  picked: 'cpu' | 'cuda';
  why: string;
}

export interface TransferReport {
  device: number;
  bytes: number;
  iterations: number;
  h2dGbPerS: number;
  d2hGbPerS: number;
}

export interface DoctorReport {
  backend: BackendChoice;
  gpu: GpuReport;
  transfer: Finding<TransferReport>; // pinned bulk H2D/D2H
  pinned: PinnedReport;
  memcpy: { cores: number; rows: MemcpyRow[] };
  cpu: CpuReport;
}

// Full sizes follow DESIGN §7's yardsticks: 256 MiB copies stream from DRAM and over PCIe at steady state.
const SIZES = {
  full: { transferBytes: 256 << 20, transferIterations: 5, pinTestBytes: 64 << 20, memcpyPerThread: 16 << 20, memcpyTotal: 256 << 20, memcpyIterations: 5 },
  quick: { transferBytes: 8 << 20, transferIterations: 2, pinTestBytes: 1 << 20, memcpyPerThread: 1 << 20, memcpyTotal: 4 << 20, memcpyIterations: 2 },
};

/** What a backend request resolves to on this machine; `cuda` without a usable GPU is an error that says why, never a fallback. */
export function pickBackend(asked: BackendName, gpu: Pick<GpuReport, 'usable' | 'name' | 'reason'>): BackendChoice {
  if (asked === 'cpu') return { asked, picked: 'cpu', why: 'asked for with --backend cpu' };
  if (gpu.usable) return { asked, picked: 'cuda', why: asked === 'auto' ? `auto: a GPU is usable (${gpu.name ?? 'device 0'})` : 'asked for with --backend cuda' };
  if (asked === 'cuda') throw new KvoffBackendError(asked, gpu.reason ?? 'no usable GPU');
  return { asked, picked: 'cpu', why: 'auto: no usable GPU' };
}

async function measureTransfer(backend: BackendChoice, gpu: GpuReport, bytes: number, iterations: number): Promise<Finding<TransferReport>> {
  if (!gpu.usable) return { ok: false, reason: 'not measured: no usable GPU' };
  if (backend.picked !== 'cuda') return { ok: false, reason: 'not measured: --backend cpu was asked for' };
  const r = await native().cudaBandwidth({ device: 0, bytes, iterations });
  return r.ok
    ? { ok: true, device: r.device, bytes: r.bytes, iterations: r.iterations, h2dGbPerS: r.h2dGbPerS, d2hGbPerS: r.d2hGbPerS }
    : { ok: false, reason: `measurement failed: ${r.reason}` };
}

export async function doctor(o: DoctorOptions = {}): Promise<DoctorReport> {
  const size = o.quick ? SIZES.quick : SIZES.full;
  const gpu = gpuReport();
  const backend = pickBackend(o.backend ?? 'auto', gpu); // throws before any measurement
  const pinned = pinnedReport(size.pinTestBytes);
  const transfer = await measureTransfer(backend, gpu, size.transferBytes, size.transferIterations);
  const cpu = cpuReport();
  const rows = await measureMemcpyThreads({ cores: cpu.cores, minBytesPerThread: size.memcpyPerThread, minTotalBytes: size.memcpyTotal, iterations: size.memcpyIterations });
  return { backend, gpu, transfer, pinned, memcpy: { cores: cpu.cores, rows }, cpu };
}
