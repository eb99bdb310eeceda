// Next-token choice from logits: greedy at temperature 0, else temperature + top-k + top-p with a seeded RNG.
import { KvoffArgumentError } from '../errors.js';

export interface SamplingOptions {
  temperature?: number; // 0 (default) = greedy
  topK?: number; // 0 = off
  topP?: number; // 1 = off
  seed?: number;
}

/** mulberry32: small, fast and reproducible across platforms. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function validateSampling(o: SamplingOptions): Required<SamplingOptions> {
  const temperature = o.temperature ?? 0;
  const topK = o.topK ?? 0;
  const topP = o.topP ?? 1;
  const seed = o.seed ?? 0;
  if (!Number.isFinite(temperature) || temperature < 0) throw new KvoffArgumentError('temperature', 'a number >= 0', temperature);
  if (!Number.isInteger(topK) || topK < 0) throw new KvoffArgumentError('topK', 'an integer >= 0', topK);
  if (!Number.isFinite(topP) || topP <= 0 || topP > 1) throw new KvoffArgumentError('topP', 'a number in (0, 1]', topP);
  if (!Number.isInteger(seed)) throw new KvoffArgumentError('seed', 'an integer', seed);
  return { temperature, topK, topP, seed };
}

export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** Picks a token id from one row of logits [vocab]. */
export function sample(logits: Float32Array, o: Required<SamplingOptions>, random: () => number): number {
  if (o.temperature === 0) return argmax(logits);
  let ids = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
  if (o.topK > 0) ids = ids.slice(0, o.topK);
  const m = logits[ids[0]];
  const w = ids.map((i) => Math.exp((logits[i] - m) / o.temperature));
  const total = w.reduce((s, x) => s + x, 0);
  // top-p: the smallest prefix whose probability mass reaches p
  let keep = ids.length;
  if (o.topP < 1) {
    let acc = 0;
    for (let j = 0; j < ids.length; j++) {
      acc += w[j] / total;
      if (acc >= o.topP) {
        keep = j + 1;
        break;
      }
    }
  }
  const mass = w.slice(0, keep).reduce((s, x) => s + x, 0);
  let u = random() * mass;
  for (let j = 0; j < keep; j++) {
    u -= w[j];
    if (u <= 0) return ids[j];
  }
  return ids[keep - 1];
}
