// CPU model, core count and the instruction-set features kvoff's kernels care about, from /proc/cpuinfo or CPUID.
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { native, type SimdLevel } from '../native.js';

export const CPU_FEATURES = ['avx2', 'fma', 'f16c', 'avx512f', 'avx512bw', 'amx-tile', 'amx-bf16'] as const;
export type CpuFeature = (typeof CPU_FEATURES)[number];

export interface CpuReport {
  model: string;
  cores: number; // logical CPUs this process may use
  features: Record<CpuFeature, boolean>;
  // The kernel's flags say what the OS has enabled (AVX-512 and AMX need its consent), so they win where present.
  source: '/proc/cpuinfo' | 'cpuid';
  simd: SimdLevel; // the kernel table the addon picked
}

/** The first processor's `flags` and `model name` from /proc/cpuinfo text; null when the text has no flags line. */
export function parseCpuinfo(text: string): { model: string; flags: Set<string> } | null {
  const flags = /^flags\s*:(.*)$/m.exec(text);
  if (!flags) return null;
  const model = /^model name\s*:\s*(.*)$/m.exec(text)?.[1]?.trim() ?? '';
  return { model, flags: new Set(flags[1].trim().split(/\s+/)) };
}

function readCpuinfo(): string | null {
  if (process.platform !== 'linux') return null;
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return null; // a sandbox may hide /proc; CPUID still answers
  }
}

export function cpuReport(cpuinfoText: string | null = readCpuinfo()): CpuReport {
  const info = native().buildInfo();
  const parsed = cpuinfoText === null ? null : parseCpuinfo(cpuinfoText);
  const features = {} as Record<CpuFeature, boolean>;
  // /proc/cpuinfo spells the AMX flags with underscores.
  for (const f of CPU_FEATURES) features[f] = parsed ? parsed.flags.has(f.replace('-', '_')) : info.cpuFeatures[f];
  return {
    model: parsed?.model || cpus()[0]?.model?.trim() || 'unknown',
    cores: availableParallelism(),
    features,
    source: parsed ? '/proc/cpuinfo' : 'cpuid',
    simd: info.simd,
  };
}
