// KVMerger's rules (Wang et al. 2024), free of memory plumbing: merging sets of consecutive similar keys, the
// pivotal state of a set, Gaussian-kernel weights, and the merged state of a set.

/** Cosine similarity of rows a and b of a [n, D] matrix (0 when either row is all zeros). */
export function cosineAt(x: Float32Array, D: number, a: number, b: number): number {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < D; i++) {
    const u = x[a * D + i];
    const v = x[b * D + i];
    dot += u * v;
    na += u * u;
    nb += v * v;
  }
  return na > 0 && nb > 0 ? dot / Math.sqrt(na * nb) : 0;
}

/**
 * Merging sets among tokens [0, limit) of one head, keys: [n, D]. A set is a run of consecutive tokens whose keys
 * all have cosine similarity >= threshold with the run's first key (anchoring on the first key keeps a slowly
 * drifting run from chaining dissimilar ends together). Greedy, left to right: a token that breaks the run starts
 * the next one. Returns the runs [start, end) of two or more tokens; every other token stays on its own.
 */
export function mergingSets(keys: Float32Array, D: number, limit: number, threshold: number): Array<[number, number]> {
  const sets: Array<[number, number]> = [];
  let start = 0;
  while (start < limit) {
    let end = start + 1;
    while (end < limit && cosineAt(keys, D, start, end) >= threshold) end++;
    if (end - start >= 2) sets.push([start, end]);
    start = end;
  }
  return sets;
}

/** The pivotal state of a set: its token with the most attention (ties to the earlier token). attn: [n]. */
export function pivotOf(attn: ArrayLike<number>, start: number, end: number): number {
  let best = start;
  for (let t = start + 1; t < end; t++) if (attn[t] > attn[best]) best = t;
  return best;
}

/**
 * Gaussian-kernel weights of a set's members toward its pivot: g_t = exp(-||k_t - k_p||^2 / (2 sigma^2)), with
 * sigma^2 the mean squared distance of the other members to the pivot (so the kernel's width adapts to how tight
 * the set is; the pivot itself weighs 1), normalized to sum 1. Returns [end - start].
 */
export function gaussianWeights(keys: Float32Array, D: number, start: number, end: number, pivot: number): Float64Array {
  const w = new Float64Array(end - start);
  let sum2 = 0;
  for (let t = start; t < end; t++) {
    let d2 = 0;
    for (let i = 0; i < D; i++) d2 += (keys[t * D + i] - keys[pivot * D + i]) ** 2;
    w[t - start] = d2;
    if (t !== pivot) sum2 += d2;
  }
  const sigma2 = end - start > 1 ? sum2 / (end - start - 1) : 0;
  let total = 0;
  for (let i = 0; i < w.length; i++) total += w[i] = sigma2 > 0 ? Math.exp(-w[i] / (2 * sigma2)) : 1;
  for (let i = 0; i < w.length; i++) w[i] /= total;
  return w;
}

/** Weighted sum of rows [start, end) of x: [n, D] with weights [end - start] -> [D]. Keys and values alike. */
export function mergeRows(x: Float32Array, D: number, start: number, weights: Float64Array): Float32Array {
  const out = new Float64Array(D);
  for (let j = 0; j < weights.length; j++) for (let i = 0; i < D; i++) out[i] += weights[j] * x[(start + j) * D + i];
  return Float32Array.from(out);
}

/** One kept state after merging: at its pivot's position, with the attention of all it absorbed. */
export interface MergedState {
  position: number;
  k: Float32Array; // [D]
  v: Float32Array; // [D]
  score: number; // summed attention of the members
  mass: number; // summed (unnormalized) kernel weights of the members: how much a later merge moves it
}

/**
 * The prompt of one head compressed to states: merging sets among [0, limit) collapse into their pivots; every
 * other token is its own state. keys, values: [n, D]; attn: [n]. Sorted by position.
 */
export function mergePrompt(keys: Float32Array, values: Float32Array, D: number, attn: ArrayLike<number>, limit: number, threshold: number): MergedState[] {
  const n = keys.length / D;
  const single = (t: number): MergedState => ({ position: t, k: keys.slice(t * D, (t + 1) * D), v: values.slice(t * D, (t + 1) * D), score: attn[t], mass: 1 });
  const out: MergedState[] = [];
  let next = 0;
  for (const [start, end] of mergingSets(keys, D, limit, threshold)) {
    for (; next < start; next++) out.push(single(next));
    const pivot = pivotOf(attn, start, end);
    const w = gaussianWeights(keys, D, start, end, pivot);
    let score = 0;
    for (let t = start; t < end; t++) score += attn[t];
    out.push({ position: pivot, k: mergeRows(keys, D, start, w), v: mergeRows(values, D, start, w), score, mass: 1 / w[pivot - start] });
    next = end;
  }
  for (; next < n; next++) out.push(single(next));
  return out;
}

/**
 * A decode-time merge of one state into a neighbour, as a set of two whose pivot is the survivor: the victim's
 * kernel weight is exp(-1/2) (sigma^2 of a two-member set is their own squared distance), scaled by the mass it
 * already carries. Returns the survivor's new k, v and mass.
 */
export function mergeInto(survivor: { k: Float32Array; v: Float32Array; mass: number }, victim: { k: Float32Array; v: Float32Array; mass: number }): { k: Float32Array; v: Float32Array; mass: number } {
  const wv = Math.exp(-0.5) * victim.mass;
  const total = survivor.mass + wv;
  const mix = (a: Float32Array, b: Float32Array) => Float32Array.from(a, (x, i) => (survivor.mass * x + wv * b[i]) / total);
  return { k: mix(survivor.k, victim.k), v: mix(survivor.v, victim.v), mass: total };
}

/**
 * The budget after merging, as H2O would meet it: when more than `capacity` states remain, those before
 * `protectFrom` (older than the recent window) with the least attention go (ties: the older first).
 */
export function evictToBudget(states: MergedState[], capacity: number, protectFrom: number): MergedState[] {
  if (states.length <= capacity) return states;
  const older = states.map((s, i) => i).filter((i) => states[i].position < protectFrom);
  older.sort((a, b) => states[a].score - states[b].score || states[a].position - states[b].position);
  const drop = new Set(older.slice(0, states.length - capacity));
  return states.filter((_, i) => !drop.has(i));
}

/**
 * Decode, when the kept set is full: the state with the least accumulated attention among those before
 * `protectFrom` makes room (H2O); it merges into the position-adjacent unprotected state its key is most similar
 * to when that cosine reaches the threshold (KVMerger's rule, applied to a set of two), else it is dropped.
 * positions, scores: [m]; cos(i, j): cosine of the keys of states i and j. Returns indices; into -1: dropped.
 */
export function decodeVictim(
  positions: Int32Array, scores: Float32Array, protectFrom: number, threshold: number, cos: (i: number, j: number) => number,
): { victim: number; into: number } {
  let victim = -1;
  for (let i = 0; i < positions.length; i++) {
    if (positions[i] >= protectFrom) continue;
    if (victim < 0 || scores[i] < scores[victim] || (scores[i] === scores[victim] && positions[i] < positions[victim])) victim = i;
  }
  if (victim < 0) return { victim, into: -1 };
  let prev = -1, next = -1;
  for (let i = 0; i < positions.length; i++) {
    const p = positions[i];
    if (i === victim || p >= protectFrom) continue;
    if (p < positions[victim] && (prev < 0 || p > positions[prev])) prev = i;
    if (p > positions[victim] && (next < 0 || p < positions[next])) next = i;
  }
  let into = -1;
  let best = -Infinity;
  for (const j of [prev, next]) {
    if (j < 0) continue;
    const c = cos(victim, j);
    if (c >= threshold && c > best) {
      best = c;
      into = j; // ties: the older neighbour
    }
  }
  return { victim, into };
}
