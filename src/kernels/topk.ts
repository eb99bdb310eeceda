// Reference top-k per row: best first, ties to the lower index, NaN ranks last.

/** scores: [rows, n] -> indices [rows, k]. */
export function topKRef(scores: Float32Array, rows: number, n: number, k: number): Int32Array {
  const out = new Int32Array(rows * k);
  for (let r = 0; r < rows; r++) {
    const idx = Array.from({ length: n }, (_, i) => i);
    const s = (i: number) => scores[r * n + i];
    idx.sort((x, y) => {
      const nx = Number.isNaN(s(x));
      const ny = Number.isNaN(s(y));
      if (nx !== ny) return nx ? 1 : -1;
      if (!nx && s(x) !== s(y)) return s(y) - s(x) > 0 ? 1 : -1;
      return x - y;
    });
    for (let j = 0; j < k; j++) out[r * k + j] = idx[j];
  }
  return out;
}
