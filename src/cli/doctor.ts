// `kvoff doctor`: prints the hardware report as aligned text, or as one JSON object with --json.
import type { BackendName } from '../model/model.js';
import { doctor, type DoctorReport } from '../hardware/doctor.js';
import type { Limit } from '../hardware/pinned-memory.js';
import { formatBytes } from '../units.js';

export interface DoctorFlags {
  backend: BackendName;
  json?: boolean;
  quick?: boolean;
}

const gb = (x: number): string => `${x.toFixed(1)} GB/s`;
const limit = (l: Limit): string => (l === 'unlimited' ? 'unlimited' : formatBytes(l));
const yes = (b: boolean): string => (b ? 'yes' : 'no');

export function formatDoctor(r: DoctorReport): string {
  const lines: string[] = [];
  const row = (label: string, text: string) => lines.push(`${label.padEnd(11)}${text}`);
  row('backend', `${r.backend.picked} (${r.backend.why})`);

  const g = r.gpu;
  row('GPU', g.usable ? `${g.name ?? 'device 0'}${g.devices > 1 ? ` (+${g.devices - 1} more)` : ''}` : `none usable: ${g.reason}`);
  row('  driver', [g.driver.kernelModule && `NVIDIA ${g.driver.kernelModule}`, g.driver.cudaVersion && `supports CUDA ${g.driver.cudaVersion}`].filter(Boolean).join(', ') || 'not found');
  row('  runtime', g.runtime.version ? `CUDA ${g.runtime.version} (cudart, linked statically)` : 'not built in');
  row('  memory', g.memory.ok ? `${formatBytes(g.memory.freeBytes)} free of ${formatBytes(g.memory.totalBytes)}` : g.memory.reason);
  row('  link', r.transfer.ok
    ? `H2D ${gb(r.transfer.h2dGbPerS)}, D2H ${gb(r.transfer.d2hGbPerS)} (pinned, ${formatBytes(r.transfer.bytes)} cudaMemcpyAsync, best of ${r.transfer.iterations})`
    : r.transfer.reason);

  const p = r.pinned;
  row('pinned', p.memlock.ok ? `RLIMIT_MEMLOCK soft ${limit(p.memlock.soft)}, hard ${limit(p.memlock.hard)}` : `RLIMIT_MEMLOCK ${p.memlock.reason}`);
  row('', p.test.pinned ? `${formatBytes(p.test.bytes)} test buffer: page-locked with ${p.test.method}` : `${formatBytes(p.test.bytes)} test buffer: NOT page-locked (${p.test.reason}); host KV copies will be slower`);
  if (p.note) row('', p.note);

  row('memcpy', `host, bytes copied per second (read + write is twice that), ${r.memcpy.cores} cores:`);
  for (const m of r.memcpy.rows) row('', `${String(m.threads).padStart(4)} thread${m.threads === 1 ? ' ' : 's'}  ${gb(m.gbPerS).padStart(11)}  (${formatBytes(m.bytes)}, best of ${m.iterations})`);

  const c = r.cpu;
  row('CPU', `${c.model}, ${c.cores} logical cores; kernels use ${c.simd}`);
  row('', `AVX2 ${yes(c.features.avx2)}, FMA ${yes(c.features.fma)}, F16C ${yes(c.features.f16c)}, AVX-512F ${yes(c.features.avx512f)}, AVX-512BW ${yes(c.features.avx512bw)}, ` +
    `AMX-TILE ${yes(c.features['amx-tile'])}, AMX-BF16 ${yes(c.features['amx-bf16'])} (from ${c.source})`);
  return lines.join('\n');
}

export async function runDoctor(f: DoctorFlags): Promise<void> {
  const report = await doctor({ backend: f.backend, quick: f.quick });
  console.log(f.json ? JSON.stringify(report) : formatDoctor(report));
}
