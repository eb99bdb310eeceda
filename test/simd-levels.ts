// The SIMD levels this CPU can run, so that every native test covers each kernel path.
import { native, type SimdLevel } from '../src/native.js';

export function simdLevels(): SimdLevel[] {
  const f = native().buildInfo().cpuFeatures;
  const levels: SimdLevel[] = ['scalar'];
  if (f.avx2 && f.fma && f.f16c) levels.push('avx2');
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) levels.push('avx512');
  return levels;
}
