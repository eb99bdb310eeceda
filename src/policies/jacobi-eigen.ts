// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations (InfiniGen's offline skew, D <= 128).
// Jacobi is slow for big matrices but simple, needs no library, and returns orthonormal eigenvectors to
// working precision, which is what makes the skew change no exact score.

export interface Eigen {
  values: Float64Array; // [n] eigenvalues, descending
  vectors: Float64Array; // [n, n] row-major; column j is the unit eigenvector of values[j]
}

/**
 * Eigenvalues and eigenvectors of the symmetric matrix `a` ([n, n] row-major; only read, never changed), sorted by
 * eigenvalue descending (ties keep the lower index first).
 */
export function symmetricEigen(a: Float64Array, n: number, maxSweeps = 64): Eigen {
  if (a.length !== n * n) throw new RangeError(`symmetricEigen: expected ${n * n} entries for n = ${n} but received ${a.length}`);
  const m = Float64Array.from(a); // [n, n] rotated in place until diagonal
  const v = new Float64Array(n * n); // [n, n] accumulated rotations: the eigenvectors as columns
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  let total = 0;
  for (let i = 0; i < n * n; i++) total += m[i] * m[i];
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += m[p * n + q] * m[p * n + q];
    // Relative to the whole matrix: converged to working precision (a zero matrix stops at once).
    if (off <= 1e-30 * total || off === 0) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = m[p * n + q];
        if (apq === 0) continue;
        // The rotation angle phi zeroes m[p][q]: cot(2 phi) = theta; t = tan(phi), the smaller root.
        const theta = (m[q * n + q] - m[p * n + p]) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          if (k === p || k === q) continue;
          const akp = m[k * n + p];
          const akq = m[k * n + q];
          m[k * n + p] = m[p * n + k] = c * akp - s * akq;
          m[k * n + q] = m[q * n + k] = s * akp + c * akq;
        }
        m[p * n + p] -= t * apq;
        m[q * n + q] += t * apq;
        m[p * n + q] = m[q * n + p] = 0;
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p];
          const vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => m[j * n + j] - m[i * n + i] || i - j);
  const values = Float64Array.from(order, (i) => m[i * n + i]);
  const vectors = new Float64Array(n * n);
  for (let j = 0; j < n; j++) for (let k = 0; k < n; k++) vectors[k * n + j] = v[k * n + order[j]];
  return { values, vectors };
}
