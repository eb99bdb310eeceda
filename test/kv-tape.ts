// A tap on a model's pre-attention that records one run's K and V and replays them into another, so that two
// runs compared "to fp32 rounding" also store the same bf16/f16 bytes in their caches (see engine-lossless.test.ts).
import { expect } from 'vitest';
import type { Model } from '../src/index.js';
import { maxAbs, worstRatio } from './helpers.js';

export interface Kv {
  k: Float32Array;
  v: Float32Array;
}

/**
 * Runs `body` with the model's pre-attention tapped: `record` keeps a copy of the K and V of every call in order;
 * `replay` checks each call's own K and V against the recorded ones (fp32 rounding apart, nothing more) and hands
 * the recorded ones on in their place, so the run stores the recorded run's bytes.
 */
export async function withKvTape<T>(model: Model, tape: { record: Kv[] } | { replay: Kv[] }, body: () => Promise<T>): Promise<T> {
  const dense = model.dense as { preAttention: Model['dense']['preAttention'] };
  const original = dense.preAttention;
  let call = 0;
  dense.preAttention = async (...args) => {
    const qkv = await original.apply(model.dense, args);
    if ('record' in tape) tape.record.push({ k: qkv.k.slice(), v: qkv.v.slice() });
    else {
      const want = tape.replay[call++];
      expect(want, 'a pre-attention call the recorded run did not make').toBeDefined();
      for (const key of ['k', 'v'] as const) {
        expect(worstRatio(qkv[key], want[key], 1e-4 * maxAbs(want[key]), 1e-4)).toBeLessThanOrEqual(1);
        qkv[key].set(want[key]);
      }
    }
    return qkv;
  };
  try {
    return await body();
  } finally {
    dense.preAttention = original;
  }
}
