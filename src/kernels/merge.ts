// Reference log-sum-exp merge of two attention partials over disjoint token sets.

/** oA, oB: [rows, headDim]; lseA, lseB: [rows]. Over disjoint sets this equals attention over the union. */
export function lseMergeRef(
  rows: number,
  headDim: number,
  oA: Float32Array,
  lseA: Float32Array,
  oB: Float32Array,
  lseB: Float32Array,
): { o: Float32Array; lse: Float32Array } {
  const o = new Float32Array(rows * headDim);
  const lse = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const a = lseA[r];
    const b = lseB[r];
    const m = Math.max(a, b);
    if (m === -Infinity) {
      lse[r] = -Infinity;
      continue;
    }
    const wa = a === -Infinity ? 0 : Math.exp(a - m);
    const wb = b === -Infinity ? 0 : Math.exp(b - m);
    for (let i = 0; i < headDim; i++) o[r * headDim + i] = (wa * oA[r * headDim + i] + wb * oB[r * headDim + i]) / (wa + wb);
    lse[r] = m + Math.log(wa + wb);
  }
  return { o, lse };
}
