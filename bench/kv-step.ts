// KV side of a decode step, without the dense model: for a model shape and a context, fills the cache with
// synthetic KV and times each policy's attention over every layer, counting the bytes it moves. This is how the
// 8k/32k figures for shapes too large to run on this CPU (Llama-3.2-1B) are made (not a test: prints a table).
// Usage: npx tsc -p tsconfig.json && node dist/bench/kv-step.js [--shape llama-3.2-1b|demo] [--context 8192,32768] [--steps 8]
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { CpuAttentionPool } from '../src/cpu-attention.js';
import { attendCache, layerCall, type ForwardContext } from '../src/engine/forward.js';
import { POLICY_SPECS } from '../src/engine/policies.js';
import { RunKv } from '../src/engine/run-kv.js';
import { emptyStats } from '../src/engine/stats.js';
import { HostKvCache } from '../src/kv/host-cache.js';
import { demoModelDir } from '../src/model/model.js';
import { shapeConfig } from '../src/model/shapes.js';
import { seededRandom } from '../src/engine/sampling.js';

const { values } = parseArgs({
  options: {
    shape: { type: 'string', default: 'llama-3.2-1b' }, context: { type: 'string', default: '8192,32768' }, steps: { type: 'string', default: '8' },
    policies: { type: 'string', default: 'dense,cpu,offload-layer,exact,tiered,specache' }, budget: { type: 'string' }, json: { type: 'boolean' },
  },
});
const cfg = (values.shape === 'demo' ? JSON.parse(readFileSync(join(demoModelDir(), 'config.json'), 'utf8')) : shapeConfig(values.shape!)) as Record<string, number>;
const L = cfg.num_hidden_layers, H = cfg.num_key_value_heads, D = cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads;
const G = cfg.num_attention_heads / H;
const steps = Number(values.steps);
const random = seededRandom(1);
const randn = (n: number, s = 1) => Float32Array.from({ length: n }, () => (random() + random() + random() - 1.5) * 2 * s);
// Keys with a few strong directions, as real keys have, so top-k by score means something.
const basis = randn(8 * D);
function keyRows(n: number): Float32Array {
  const out = randn(n * H * D, 0.3);
  for (let r = 0; r < n * H; r++) {
    const b = Math.floor(random() * 8);
    for (let c = 0; c < D; c++) out[r * D + c] += basis[b * D + c];
  }
  return out;
}

const pool = new CpuAttentionPool({});
const rows = [];
for (const context of values.context!.split(',').map(Number)) {
  const chunk = 1024;
  const K = keyRows(chunk), V = randn(chunk * H * D); // [chunk, H, D], reused along the context
  for (const policy of values.policies!.split(',')) {
    const spec = POLICY_SPECS[policy as keyof typeof POLICY_SPECS]!;
    const bs = 16;
    const total = context + steps + 1;
    const shape = { numLayers: L, numKvHeads: H, headDim: D, blockSize: bs, numBlocks: Math.ceil(total / bs), dtype: 'bf16' as const };
    const full = HostKvCache.bytesFor(shape);
    const budget = values.budget ? (values.budget.endsWith('%') ? Math.floor((full * Number(values.budget.slice(0, -1))) / 100) : Number(values.budget)) : Infinity;
    const kv = RunKv.open(spec, shape, G, [total], budget, {}, { model: null as never });
    const seq = kv.openSeq(0);
    const stats = emptyStats(0);
    const ctx = { model: { config: { numHeads: H * G, numKvHeads: H, headDim: D } }, kv, pool, stats } as unknown as ForwardContext;
    for (let p = 0; p < context; p += chunk) {
      const n = Math.min(chunk, context - p);
      const slots = kv.cache.reserve(seq.id, n);
      for (let l = 0; l < L; l++) {
        kv.cache.write(l, slots, K.subarray(0, n * H * D), V.subarray(0, n * H * D));
        seq.attn?.onWrite(l, p, K.subarray(0, n * H * D), V.subarray(0, n * H * D));
      }
    }
    const times: number[] = [];
    let before = { ...stats };
    let q = randn(L * H * G * D); // [L, H, G, D] this step's queries; the guess is next step's plus noise
    for (let s = 0; s <= steps; s++) {
      if (s === 1) before = { ...stats }; // step 0 warms the hot set up
      const t0 = performance.now();
      const pos = context + s;
      const slot = kv.cache.reserve(seq.id, 1);
      const next = randn(L * H * G * D);
      for (let l = 0; l < L; l++) {
        const k1 = keyRows(1), v1 = randn(H * D);
        kv.cache.write(l, slot, k1, v1);
        seq.attn?.onWrite(l, pos, k1, v1);
        const ql = q.subarray(l * H * G * D, (l + 1) * H * G * D);
        const out = new Float32Array(H * G * D), lse = new Float32Array(H * G);
        if (seq.attn) await seq.attn.attend(layerCall(ctx, l, seq), ql, out, lse);
        else await attendCache(ctx, l, seq, pos, ql, out, lse);
        if (spec.speculative) {
          const guess = next.slice(l * H * G * D, (l + 1) * H * G * D).map((x) => x + 0.1 * (random() - 0.5));
          seq.attn!.attendSpeculative!(layerCall(ctx, l, seq), guess, keyRows(1), randn(H * D), new Float32Array(H * G * D), new Float32Array(H * G));
        }
      }
      if (s > 0) times.push(performance.now() - t0);
      q = next;
    }
    await kv.settle();
    times.sort((a, b) => a - b);
    const n = steps;
    rows.push({
      shape: values.shape, policy, context, 'KV MiB': (full / 2 ** 20).toFixed(1), 'device MiB': (kv.deviceBytes / 2 ** 20).toFixed(2),
      'of full KV': (kv.deviceBytes / full).toFixed(3), 'H2D KiB/step': ((stats.bytesH2D - before.bytesH2D) / n / 1024).toFixed(1),
      'H2D of full KV': ((stats.bytesH2D - before.bytesH2D) / n / full).toFixed(4),
      'hot hit rate': stats.hotHits + stats.hotMisses > 0 ? ((stats.hotHits - before.hotHits) / Math.max(1, stats.hotHits - before.hotHits + stats.hotMisses - before.hotMisses)).toFixed(2) : '-',
      'ms/step (attention)': times[Math.floor(n / 2)].toFixed(1), overlap: stats.overlapRatio.toFixed(2), knobs: JSON.stringify(kv.knobs),
    });
    kv.dispose();
    console.error(JSON.stringify(rows[rows.length - 1]));
  }
}
await pool.dispose();
if (values.json) console.log(JSON.stringify({ rows }));
else console.table(rows);
