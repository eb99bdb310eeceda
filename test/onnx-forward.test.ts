// The ONNX graph path (pre graph -> TS attention -> post graph ... -> final graph) against the plain TypeScript forward.
import { afterAll, describe, expect, it } from 'vitest';
import { KvoffArgumentError } from '../src/errors.js';
import {
  buildFinalGraph, buildPostAttentionGraph, buildPreAttentionGraph, embedTokens, pickFinalWeights, pickLayerWeights,
  planVocabRanges,
} from '../src/model/onnx/builder.js';
import { decodeModel } from '../src/model/onnx/graph.js';
import {
  InlineRunner, WorkerRunner, graphNames, runFinal, runPostAttention, runPreAttention, type DenseRunner,
} from '../src/model/onnx/session.js';
import { positionRange, ropeInvFreq, ropeTables } from '../src/model/rope.js';
import type { ModelConfig } from '../src/model/types.js';
import { randn, rng, errOverRange } from './helpers.js';
import { causalAttentionRef, referenceForward, type F32Weights } from './reference-forward.js';

function tinyConfig(over: Partial<ModelConfig>): ModelConfig {
  return {
    architecture: 'llama', vocabSize: 50, hiddenSize: 64, intermediateSize: 96, numLayers: 2,
    numHeads: 4, numKvHeads: 2, headDim: 16, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null,
    maxPositionEmbeddings: 2048, tieWordEmbeddings: false, attentionBias: false, bosTokenId: 1, eosTokenIds: [2],
    ...over,
  };
}

/** Random weights by HF name; projections scaled by 1/sqrt(in) so activations stay O(1) through the layers. */
function randomWeights(c: ModelConfig, seed: number): F32Weights {
  const r = rng(seed);
  const w: F32Weights = new Map();
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: D, intermediateSize: I } = c;
  const lin = (name: string, out: number, inp: number) => w.set(name, randn(out * inp, r, 1 / Math.sqrt(inp)));
  const norm = (name: string, n: number) => w.set(name, randn(n, r, 0.2).map((x) => 1 + x));
  w.set('model.embed_tokens.weight', randn(c.vocabSize * H, r));
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    norm(`${p}.input_layernorm.weight`, H);
    lin(`${p}.self_attn.q_proj.weight`, nH * D, H);
    lin(`${p}.self_attn.k_proj.weight`, nKv * D, H);
    lin(`${p}.self_attn.v_proj.weight`, nKv * D, H);
    if (c.attentionBias) {
      w.set(`${p}.self_attn.q_proj.bias`, randn(nH * D, r, 0.5));
      w.set(`${p}.self_attn.k_proj.bias`, randn(nKv * D, r, 0.5));
      w.set(`${p}.self_attn.v_proj.bias`, randn(nKv * D, r, 0.5));
    }
    lin(`${p}.self_attn.o_proj.weight`, H, nH * D);
    norm(`${p}.post_attention_layernorm.weight`, H);
    lin(`${p}.mlp.gate_proj.weight`, I, H);
    lin(`${p}.mlp.up_proj.weight`, I, H);
    lin(`${p}.mlp.down_proj.weight`, H, I);
  }
  norm('model.norm.weight', H);
  if (!c.tieWordEmbeddings) lin('lm_head.weight', c.vocabSize, H);
  return w;
}

function getter(w: F32Weights): (name: string) => Float32Array {
  return (name) => {
    const t = w.get(name);
    if (t === undefined) throw new Error(`missing ${name}`);
    return t;
  };
}

async function loadGraphs(r: DenseRunner, c: ModelConfig, w: F32Weights): Promise<void> {
  for (let l = 0; l < c.numLayers; l++) {
    const lw = pickLayerWeights(c, l, getter(w));
    await r.load(graphNames.pre(l), buildPreAttentionGraph(c, l, lw));
    await r.load(graphNames.post(l), buildPostAttentionGraph(c, l, lw));
  }
  await r.load(graphNames.final, buildFinalGraph(c, pickFinalWeights(c, getter(w))));
}

/** The runtime's path: embedding in TS, graphs in onnxruntime, attention in TS between them. */
async function ortForward(r: DenseRunner, c: ModelConfig, w: F32Weights, tokens: number[]): Promise<Float32Array> {
  const T = tokens.length;
  const { cos, sin } = ropeTables(ropeInvFreq(c), positionRange(0, T)); // [T, headDim] each
  let hidden = embedTokens(c, getter(w)('model.embed_tokens.weight'), tokens); // [T, hidden]
  for (let l = 0; l < c.numLayers; l++) {
    const { q, k, v } = await runPreAttention(r, c, l, hidden, cos, sin);
    const attn = Float32Array.from(causalAttentionRef(q, k, v, T, c.numHeads, c.numKvHeads, c.headDim)); // [T, nH * D]
    hidden = await runPostAttention(r, c, l, attn, hidden);
  }
  return runFinal(r, c, hidden); // [T, vocab]
}


const cases: [string, Partial<ModelConfig>][] = [
  ['llama GQA (4 heads, 2 KV), untied', {}],
  ['llama 3.1 llama3 rope scaling, tied', {
    ropeTheta: 500000, tieWordEmbeddings: true,
    // original length 16 puts headDim 16's wavelengths in all three bands (kept, interpolated, divided)
    ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 16 },
  }],
  ['mistral MQA (1 KV head)', { architecture: 'mistral', numKvHeads: 1, rmsNormEps: 1e-6 }],
  ['qwen2 MHA with q/k/v bias, tied', { architecture: 'qwen2', numKvHeads: 4, attentionBias: true, tieWordEmbeddings: true, ropeTheta: 1e6 }],
  ['llama linear rope scaling, headDim 32 != hidden / heads', { headDim: 32, ropeScaling: { type: 'linear', factor: 4 } }],
];

const tokens = [1, 7, 42, 3, 3, 19, 49, 0, 25, 11, 8, 30, 2];

describe('ONNX layer graphs vs the TypeScript reference forward', () => {
  const inline = new InlineRunner({ intraOpNumThreads: 1 });
  const worker = new WorkerRunner({ intraOpNumThreads: 1 });
  afterAll(async () => {
    await inline.dispose();
    await worker.dispose();
  });

  cases.forEach(([name, over], i) => {
    it(`${name}: logits within 1e-4 of the logit range`, async () => {
      const c = tinyConfig(over);
      const w = randomWeights(c, 100 + i);
      const ref = referenceForward(c, w, tokens);
      // The last case goes through the worker thread, so both runners are checked against the reference.
      const r = i === cases.length - 1 ? worker : inline;
      await loadGraphs(r, c, w);
      const got = await ortForward(r, c, w, tokens);
      expect(got.length).toBe(tokens.length * c.vocabSize);
      expect(errOverRange(got, ref)).toBeLessThan(1e-4);
    });
  });

  it('one decode position (T = 1 at position t) gives the rows of the full pre-attention run', async () => {
    const c = tinyConfig({ ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 16 } });
    const w = randomWeights(c, 7);
    await loadGraphs(inline, c, w);
    const T = tokens.length;
    const hidden = embedTokens(c, getter(w)('model.embed_tokens.weight'), tokens);
    const inv = ropeInvFreq(c);
    const full = ropeTables(inv, positionRange(0, T));
    const all = await runPreAttention(inline, c, 0, hidden, full.cos, full.sin);
    const t = 9;
    const one = ropeTables(inv, [t]);
    const row = await runPreAttention(inline, c, 0, hidden.subarray(t * c.hiddenSize, (t + 1) * c.hiddenSize), one.cos, one.sin);
    const qw = c.numHeads * c.headDim, kw = c.numKvHeads * c.headDim;
    expect(errOverRange(row.q, all.q.subarray(t * qw, (t + 1) * qw))).toBeLessThan(1e-6);
    expect(errOverRange(row.k, all.k.subarray(t * kw, (t + 1) * kw))).toBeLessThan(1e-6);
  });

  it('vocab-sharded final graphs concatenate to the full logits', async () => {
    const c = tinyConfig({ tieWordEmbeddings: true });
    const w = randomWeights(c, 9);
    const fw = pickFinalWeights(c, getter(w));
    const ranges = planVocabRanges(c, 4 * c.hiddenSize * 20); // 20 rows per shard: [0,20) [20,40) [40,50)
    expect(ranges).toEqual([{ start: 0, end: 20 }, { start: 20, end: 40 }, { start: 40, end: 50 }]);
    const hidden = randn(3 * c.hiddenSize, rng(3));
    await inline.load(graphNames.final, buildFinalGraph(c, fw));
    const full = await runFinal(inline, c, hidden);
    const parts: Float32Array[] = [];
    for (const rg of ranges) {
      await inline.load('shard', buildFinalGraph(c, fw, rg));
      const out = await inline.run('shard', { hidden: { data: hidden, dims: [3, c.hiddenSize] } });
      parts.push(out.logits.data);
    }
    for (let t = 0; t < 3; t++) {
      const row = ranges.flatMap((rg, j) => Array.from(parts[j].subarray(t * (rg.end - rg.start), (t + 1) * (rg.end - rg.start))));
      expect(errOverRange(row, full.subarray(t * c.vocabSize, (t + 1) * c.vocabSize))).toBeLessThan(1e-6);
    }
  });

  it('builds opset-17 graphs with HF-shaped initializers and refuses mismatched biases and shapes', () => {
    const c = tinyConfig({ attentionBias: true });
    const w = randomWeights(c, 5);
    const lw = pickLayerWeights(c, 0, getter(w));
    const model = decodeModel(buildPreAttentionGraph(c, 0, lw));
    expect(Number(model.opsetImport[0].version)).toBe(17);
    const q = model.graph?.initializer.find((t) => t.name === 'q_proj.weight');
    expect(q?.dims.map(Number)).toEqual([c.numHeads * c.headDim, c.hiddenSize]);
    expect(() => buildPreAttentionGraph({ ...c, attentionBias: false }, 0, lw)).toThrow(KvoffArgumentError);
    expect(() => buildPreAttentionGraph(c, 0, { ...lw, qBias: undefined })).toThrow(/qBias/);
    expect(() => buildPreAttentionGraph(c, 0, { ...lw, kProj: lw.qProj })).toThrow(/k_proj\.weight/);
  });

  it('rejects inputs whose lengths do not match the config', async () => {
    const c = tinyConfig({});
    await expect(runPostAttention(inline, c, 0, new Float32Array(5), new Float32Array(c.hiddenSize))).rejects.toThrow(/attn/);
    await expect(inline.run('nope', {})).rejects.toThrow(/graph name/);
    await expect(worker.run('nope', {})).rejects.toThrow(/graph name/);
  });
});
