// Sizing a policy's capacity knob from a byte budget: the largest value whose device-tier parts fit, counted the
// way planTier counts them (each part rounded up to the tier alignment).
import { DEFAULT_TIER_ALIGNMENT, alignUp, type TierPart } from '../device/tier-allocator.js';

/** Bytes the parts take in a tier: what planTier adds up. */
export function tierBytes(parts: TierPart[]): number {
  return parts.reduce((n, p) => n + alignUp(p.bytes, DEFAULT_TIER_ALIGNMENT), 0);
}

/**
 * The largest x in [lo, hi] with fits(x), assuming fits is monotone (true up to some x, false beyond); null when
 * not even lo fits.
 */
export function largestFitting(lo: number, hi: number, fits: (x: number) => boolean): number | null {
  if (hi < lo || !fits(lo)) return null;
  while (lo < hi) {
    const mid = lo + Math.ceil((hi - lo) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** k, k/2, k/4, ... down to `min` (k itself when smaller): settings to try, best first, ending with the smallest. */
export function halvingsTo(k: number, min: number): number[] {
  const out = [k];
  while (out[out.length - 1] > min) out.push(Math.max(min, out[out.length - 1] >> 1));
  return out;
}
