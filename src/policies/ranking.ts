// Small pure helpers the eviction rules share: top-k by score, lowest score, oldest position.

/**
 * The k best of `candidates` (positions into `scores`) by score, highest first; ties go to the lower position
 * (the older token), NaN ranks last. Returns them sorted by position.
 */
export function topPositions(scores: ArrayLike<number>, candidates: ArrayLike<number>, k: number): number[] {
  const idx = Array.from(candidates);
  const s = (p: number) => (Number.isNaN(scores[p]) ? -Infinity : scores[p]);
  idx.sort((a, b) => s(b) - s(a) || a - b);
  return idx.slice(0, Math.max(0, k)).sort((a, b) => a - b);
}

/** Index (into positions/scores) of the lowest score among indices where `allowed` holds; ties to the oldest; -1 if none. */
export function lowestScore(positions: Int32Array, scores: Float32Array, allowed: (i: number) => boolean): number {
  let best = -1;
  for (let i = 0; i < positions.length; i++) {
    if (!allowed(i)) continue;
    if (best < 0 || scores[i] < scores[best] || (scores[i] === scores[best] && positions[i] < positions[best])) best = i;
  }
  return best;
}

/** Index of the oldest position >= `from`; -1 if none. */
export function oldestFrom(positions: Int32Array, from: number): number {
  let best = -1;
  for (let i = 0; i < positions.length; i++) if (positions[i] >= from && (best < 0 || positions[i] < positions[best])) best = i;
  return best;
}

/** [from, to) as an Int32Array. */
export function range(from: number, to: number): Int32Array {
  return Int32Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}
