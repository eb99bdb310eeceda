// InfiniGen's offline step, once per model and cached: a fixed sample runs through prefill under the exact `cpu`
// policy; its queries, un-rotated to pre-RoPE, give each (layer, KV head) a skew basis (the eigenvectors of Q^T Q,
// strongest first). The partial query weights for r columns are then read once from the model directory.
import { availableParallelism } from 'node:os';
import { CpuAttentionPool } from '../cpu-attention.js';
import type { DecodeAttention } from '../engine/decode-attention.js';
import { forward, type ForwardContext } from '../engine/forward.js';
import { RunKv } from '../engine/run-kv.js';
import { emptyStats } from '../engine/stats.js';
import { loadModelDir } from '../model/load-dir.js';
import type { Model } from '../model/model.js';
import { layerWeightNames } from '../model/onnx/builder.js';
import { positionRange, ropeTables } from '../model/rope.js';
import { toFloat32 } from '../model/tensor.js';
import { seededRandom } from '../engine/sampling.js';
import { symmetricEigen } from './jacobi-eigen.js';
import { addGram, unrotate } from './infinigen-skew.js';

/** Tokens of the calibration sample. */
export const CALIBRATION_TOKENS = 256;

// Plain prose with no task in it: the skew should follow the model's general query statistics. Byte-level
// tokenizers need about 256 characters of it, BPE ones most of it.
const SAMPLE_TEXT =
  'The river ran slowly past the old mill, where a few boys were fishing from the broken wall. Their mothers had ' +
  'warned them about the current in spring, but by late summer the water was low and warm, and the only danger ' +
  'was the sun. Further down, the valley opened into fields of barley and a road that led, after many turns, to ' +
  'the market town. On Saturdays the road filled with carts, and the carters argued about prices, the weather and ' +
  'the new bridge that the council had promised for ten years. Nobody believed it would be built. The miller kept ' +
  'a ledger of every sack he ground, with the date, the weight and the name of the farmer, and in the evenings he ' +
  'read the numbers aloud to his daughter, who corrected his sums. She wanted to study in the city and become an ' +
  'engineer, and she thought that one day she might build the bridge herself, of stone and iron, with three wide ' +
  'arches so that the boats could pass beneath it even when the river was high.';

/** Per (layer, KV head) skew bases: [numLayers * numKvHeads] each [D, D] row-major, column j = direction j. */
export type SkewBases = Float32Array[];

/** What InfiniGen keeps of the model for one r: the speculation's weights, skewed and cut to r columns. */
export interface PartialWeights {
  r: number;
  bases: SkewBases; // [L * H] each [D, D]; keys use the first r columns
  norm: Float32Array[]; // [L] each [hidden]: the layer's input RMSNorm weight
  wq: Float32Array[]; // [L * H] each [r, hidden]: (A[:, :r])^T W_q of the group's query heads, averaged over G
  bq: (Float32Array | null)[]; // [L * H] each [r]: the q bias, skewed and averaged alike (Qwen2); null without bias
}

interface ModelCache {
  bases: Promise<SkewBases>;
  partial: Map<number, Promise<PartialWeights>>;
}

const cache = new WeakMap<Model, ModelCache>();

/**
 * The partial weights of `model` for r skewed columns, calibrated on first use and cached with the model. Averaging
 * the G query heads' weights is exact for the group's mean raw score, which is linear in q.
 */
export function partialWeights(model: Model, r: number): Promise<PartialWeights> {
  let c = cache.get(model);
  if (!c) {
    c = { bases: calibrate(model), partial: new Map() };
    cache.set(model, c);
  }
  let p = c.partial.get(r);
  if (!p) {
    p = c.bases.then((bases) => readPartialWeights(model, bases, r));
    c.partial.set(r, p);
  }
  return p;
}

/** The calibration sample: the fixed text through the tokenizer, else seeded random ids; BOS first when the model has one. */
export function calibrationTokens(model: Model): Int32Array {
  const c = model.config;
  const n = Math.min(CALIBRATION_TOKENS, c.maxPositionEmbeddings);
  const out: number[] = c.bosTokenId !== null ? [c.bosTokenId] : [];
  const text = model.tokenizer?.encode(SAMPLE_TEXT);
  if (text && text.length > 0) {
    for (let i = 0; out.length < n; i++) out.push(text[i % text.length]);
  } else {
    const random = seededRandom(0x1f1e6e);
    while (out.length < n) out.push(Math.floor(random() * c.vocabSize));
  }
  return Int32Array.from(out.slice(0, n));
}

/** Runs the sample through prefill under `cpu`, capturing each layer's queries, and decomposes them. */
export async function calibrate(model: Model): Promise<SkewBases> {
  const c = model.config;
  const { numLayers: L, numKvHeads: H, numHeads: nH, headDim: D } = c;
  const G = nH / H;
  const tokens = calibrationTokens(model);
  const T = tokens.length;
  const queries: Float32Array[] = new Array(L); // [L] each [T, numHeads, D] post-RoPE
  const capture: DecodeAttention = {
    onWrite() {},
    onPrefillQueries(layer, start, q) {
      queries[layer] = q.slice();
    },
    attend: () => Promise.reject(new Error('infinigen calibration: the sample is one prefill chunk, never a decode step')),
    settle: async () => {},
    dispose() {},
  };
  // Imported here, not at the top: policies.ts imports this policy through the registry.
  const { POLICY_SPECS } = await import('../engine/policies.js');
  const blockSize = 16;
  const shape = { numLayers: L, numKvHeads: H, headDim: D, blockSize, numBlocks: Math.ceil(T / blockSize), dtype: 'bf16' as const };
  const kv = RunKv.open(POLICY_SPECS.cpu!, shape, G, [T], Infinity, {}, { model });
  const pool = new CpuAttentionPool({ threads: Math.min(2, availableParallelism()) });
  try {
    const seq = kv.openSeq(0);
    seq.attn = capture;
    const ctx: ForwardContext = { model, kv, pool, stats: emptyStats(0) };
    await forward(ctx, seq, tokens, 0);
  } finally {
    kv.dispose();
    await pool.dispose();
  }
  const { cos, sin } = ropeTables(model.invFreq, positionRange(0, T)); // [T, D] each
  const bases: SkewBases = [];
  for (let l = 0; l < L; l++) {
    const q = queries[l];
    unrotate(q, cos, sin, nH, D); // pre-RoPE: what the projection weights produce
    for (let h = 0; h < H; h++) {
      const rows: number[] = []; // the group's query rows, [T * G] offsets of D floats
      for (let t = 0; t < T; t++) for (let g = 0; g < G; g++) rows.push((t * nH + h * G + g) * D);
      const gram = new Float64Array(D * D); // [D, D] Q^T Q
      addGram(gram, q, rows, D);
      bases.push(Float32Array.from(symmetricEigen(gram, D).vectors));
    }
  }
  return bases;
}

/** Reads W_q (and its bias) and the input norms from the model directory and keeps only their skewed, cut form. */
async function readPartialWeights(model: Model, bases: SkewBases, r: number): Promise<PartialWeights> {
  const c = model.config;
  const { numLayers: L, numKvHeads: H, numHeads: nH, headDim: D, hiddenSize: hidden } = c;
  const G = nH / H;
  const { weights } = await loadModelDir(model.dir);
  const get = (name: string) => toFloat32(weights.get(name)!);
  const norm: Float32Array[] = [];
  const wq: Float32Array[] = [];
  const bq: (Float32Array | null)[] = [];
  for (let l = 0; l < L; l++) {
    const names = layerWeightNames(l);
    norm.push(get(names.inputLayernorm));
    const w = get(names.qProj); // [nH * D, hidden]
    const b = c.attentionBias ? get(names.qBias) : null; // [nH * D]
    for (let h = 0; h < H; h++) {
      const A = bases[l * H + h];
      const pw = new Float32Array(r * hidden); // [r, hidden]
      const pb = b ? new Float32Array(r) : null; // [r]
      for (let g = 0; g < G; g++) {
        const row0 = (h * G + g) * D;
        for (let j = 0; j < r; j++) {
          for (let i = 0; i < D; i++) {
            const a = A[i * D + j] / G;
            if (a === 0) continue;
            const src = (row0 + i) * hidden;
            for (let x = 0; x < hidden; x++) pw[j * hidden + x] += a * w[src + x];
            if (pb) pb[j] += a * b![row0 + i];
          }
        }
      }
      wq.push(pw);
      bq.push(pb);
    }
  }
  weights.clear(); // only the skewed parts stay
  return { r, bases, norm, wq, bq };
}
