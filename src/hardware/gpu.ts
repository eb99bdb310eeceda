// What CUDA this build has and what the machine offers: driver, runtime, GPU, free memory, and in words why a GPU is not usable.
import { readFileSync } from 'node:fs';
import { native, type BuildInfo } from '../native.js';
import type { Finding } from './finding.js';

export interface GpuReport {
  usable: boolean;
  cudaBuilt: boolean; // nvcc was found at install time, so cudart is linked in
  devices: number;
  name: string | null; // device 0, the one kvoff uses
  driver: {
    cudaVersion: string | null; // the newest CUDA the driver supports, e.g. "13.0"; null without libcuda
    kernelModule: string | null; // e.g. "550.54.15", from /proc/driver/nvidia/version
  };
  runtime: { version: string | null }; // the cudart built in; null when CUDA is not built
  memory: Finding<{ device: number; freeBytes: number; totalBytes: number }>;
  reason: string | null; // why the GPU is not usable, in words; null when it is
}

/** 13000 -> "13.0", 12040 -> "12.4"; null for 0 (absent). */
export function cudaVersionString(v: number): string | null {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : null;
}

/** The driver version from /proc/driver/nvidia/version text ("... Kernel Module  550.54.15  ..." or "... Open Kernel Module for x86_64  570.86.10 ..."). */
export function parseNvidiaModuleVersion(text: string): string | null {
  return /Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)/.exec(text)?.[1] ?? null;
}

function readNvidiaModule(): string | null {
  try {
    return parseNvidiaModuleVersion(readFileSync('/proc/driver/nvidia/version', 'utf8'));
  } catch {
    return null; // no module loaded, not Linux, or /proc hidden
  }
}

/**
 * Why no GPU is usable, in words a user can act on; null when one is. The kernel module is looked at
 * separately from libcuda because a container often has one without the other.
 */
export function explainGpu(cuda: BuildInfo['cuda'], kernelModule: string | null): string | null {
  if (cuda.built && cuda.deviceCount > 0) return null;
  const module = kernelModule ? `the NVIDIA driver ${kernelModule} is loaded` : null;
  if (!cuda.built) {
    return `CUDA not built: nvcc was not found at install time (or KVOFF_NO_CUDA=1 was set), so there is no CUDA runtime${module ? `, although ${module}` : ''}; ` +
      'install the CUDA toolkit, set CUDA_HOME and run `npm rebuild kvoff`';
  }
  const runtime = cudaVersionString(cuda.runtimeVersion) ?? '?';
  if (cuda.driverVersion === 0) {
    return module
      ? `${module}, but its CUDA library (libcuda.so.1) could not be loaded; in a container, expose the driver (e.g. docker run --gpus all)`
      : `no NVIDIA driver: neither libcuda.so.1 nor the NVIDIA kernel module was found (CUDA runtime ${runtime} is built in)`;
  }
  if (cuda.driverVersion < cuda.runtimeVersion) {
    return `driver found (supports CUDA ${cudaVersionString(cuda.driverVersion)}), but kvoff's CUDA runtime is ${runtime} and needs a newer driver: update the NVIDIA driver`;
  }
  return cuda.reason || 'driver found, but it reports no GPU';
}

export function gpuReport(kernelModule: string | null = readNvidiaModule()): GpuReport {
  const cuda = native().buildInfo().cuda;
  const reason = explainGpu(cuda, kernelModule);
  const usable = reason === null;
  const mem = native().cudaMemInfo({ device: 0 });
  return {
    usable,
    cudaBuilt: cuda.built,
    devices: cuda.deviceCount,
    name: cuda.deviceName || null,
    driver: { cudaVersion: cudaVersionString(cuda.driverVersion), kernelModule },
    runtime: { version: cuda.built ? cudaVersionString(cuda.runtimeVersion) : null },
    memory: mem.ok
      ? { ok: true, device: 0, freeBytes: mem.freeBytes, totalBytes: mem.totalBytes }
      : { ok: false, reason: usable ? `not read: ${mem.reason}` : 'not read: no usable GPU' },
    reason,
  };
}
