// The SIMD levels this CPU can run, so that every native test covers each kernel path.
import { native, type SimdLevel } from '../src/native.js';

export function simdLevels(): SimdLevel[] {
  return native().buildInfo().simdLevels;
}
