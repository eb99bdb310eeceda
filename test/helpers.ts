// Shared test utilities: a seeded RNG and random tensors.
import { seededRandom } from '../src/engine/sampling.js';

export { randn } from '../src/model/random-model.js';

/** The same seeded generator the library samples with. */
export const rng = seededRandom;

export function shuffled(n: number, r: () => number): Int32Array {
  const a = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** Largest |a - b| / (atol + rtol * |b|) over elements; <= 1 means within tolerance. */
export function worstRatio(a: ArrayLike<number>, b: ArrayLike<number>, atol: number, rtol: number): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let w = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue;
    const d = Math.abs(a[i] - b[i]) / (atol + rtol * Math.abs(b[i]));
    w = Math.max(w, Number.isNaN(d) ? Infinity : d);
  }
  return w;
}

/** max |a - ref| divided by the range of `ref`: how logits are compared across implementations. */
export function errOverRange(a: ArrayLike<number>, ref: ArrayLike<number>): number {
  let lo = Infinity, hi = -Infinity, err = 0;
  for (let i = 0; i < ref.length; i++) {
    lo = Math.min(lo, ref[i]);
    hi = Math.max(hi, ref[i]);
    err = Math.max(err, Math.abs(a[i] - ref[i]));
  }
  return err / (hi - lo);
}
