// Which prompts of a batch can share another's prompt prefix (its host blocks), and how many tokens of it.

export interface PrefixShare {
  from: number; // index of an earlier prompt to share with, or -1
  shared: number; // tokens shared; the rest of the prompt is prefilled
}

/**
 * For each prompt, the earlier prompt with the longest common prefix. Sharing starts at one full block (less
 * saves nothing: a shared partial block is copied on the first write), and always leaves the last prompt
 * token to prefill, since its logits are needed.
 */
export function planPrefixSharing(prompts: ReadonlyArray<Int32Array>, blockSize: number): PrefixShare[] {
  return prompts.map((p, i) => {
    let best = { from: -1, shared: 0 };
    for (let j = 0; j < i; j++) {
      const q = prompts[j];
      const limit = Math.min(p.length - 1, q.length);
      let n = 0;
      while (n < limit && p[n] === q[n]) n++;
      if (n > best.shared) best = { from: j, shared: n };
    }
    return best.shared >= blockSize ? best : { from: -1, shared: 0 };
  });
}
