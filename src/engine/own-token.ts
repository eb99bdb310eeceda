// A decode query's attention to a token not (yet) in any attended store, e.g. its own: with one key the softmax
// is 1, so the partial is o = v and lse = the scaled score, ready to merge by LSE with the other parts.

/** q [G, D]; k, v [D]; fills oOut [G, D] and lseOut [G]. */
export function ownTokenPart(q: Float32Array, k: Float32Array, v: Float32Array, G: number, D: number, scale: number, oOut: Float32Array, lseOut: Float32Array): void {
  for (let g = 0; g < G; g++) {
    let dot = 0;
    for (let c = 0; c < D; c++) dot += q[g * D + c] * k[c];
    lseOut[g] = dot * scale;
    oOut.set(v, g * D);
  }
}
