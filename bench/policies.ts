// Bytes moved and time per decode step for each policy on one model and context (not a test: prints a table).
// Usage: npx tsc -p tsconfig.json && node dist/bench/policies.js [--model DIR] [--context 8000] [--steps 16] [--json]
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createEngine, loadModel, POLICIES } from '../src/index.js';
import { demoModelDir } from '../src/model/model.js';

const { values } = parseArgs({
  options: { model: { type: 'string' }, context: { type: 'string', default: '8000' }, steps: { type: 'string', default: '16' }, json: { type: 'boolean' } },
});
const context = Number(values.context);
const steps = Number(values.steps);
const model = await loadModel(values.model, { backend: 'cpu' });
// The demo haystack, cut or repeated to the context: what the demo model was trained on.
const hay = readFileSync(join(demoModelDir(), 'haystack-8k.txt'), 'utf8');
const prompt = model.tokenizer ? hay.repeat(Math.ceil(context / hay.length)).slice(-context + 1) : Array.from({ length: context }, (_, i) => (i * 7 + 1) % model.config.vocabSize);

const rows = [];
for (const policy of POLICIES) {
  const engine = await createEngine(model, { policy });
  const times: number[] = [];
  let last = performance.now();
  let atFirst = engine.stats();
  for await (const _ of engine.generate(prompt, { maxNewTokens: steps + 1, stopAtEos: false })) {
    const now = performance.now();
    if (times.length === 0) atFirst = engine.stats(); // after prefill: decode figures start here
    times.push(now - last);
    last = now;
  }
  const s = engine.stats();
  await engine.dispose();
  const decode = times.slice(1).sort((a, b) => a - b); // the first interval is the prefill
  rows.push({
    policy, context, decodeSteps: s.decodeTokens,
    msPerTokenMedian: decode[Math.floor(decode.length / 2)] ?? NaN,
    bytesH2DPerStep: (s.bytesH2D - atFirst.bytesH2D) / Math.max(1, s.decodeTokens),
    hotHitRate: s.hotHits + s.hotMisses > 0 ? s.hotHits / (s.hotHits + s.hotMisses) : null,
    specUsed: s.specUsed, specWasted: s.specWasted,
    deviceBytesPeak: s.deviceBytesPeak, fullKvBytes: engine.kvBytesFor(context + steps + 1),
    overlapRatio: s.overlapRatio, cpuAttnMs: s.cpuAttnMs, deviceMs: s.deviceMs, copyMs: s.copyMs,
  });
}
await model.dispose();
if (values.json) {
  console.log(JSON.stringify({ rows }));
} else {
  console.log(`model ${values.model ?? 'demo'}, context ${context} tokens, ${steps} decode steps, CPU backend (device tier = capped host arena)`);
  console.table(rows.map((r) => ({
    policy: r.policy, 'ms/token': r.msPerTokenMedian.toFixed(1), 'H2D KiB/step': (r.bytesH2DPerStep / 1024).toFixed(1),
    'hot hit rate': r.hotHitRate === null ? '-' : r.hotHitRate.toFixed(2), spec: r.specUsed + r.specWasted > 0 ? `${r.specUsed}/${r.specUsed + r.specWasted}` : '-',
    'device MiB': (r.deviceBytesPeak / 2 ** 20).toFixed(2), 'of full KV': (r.deviceBytesPeak / r.fullKvBytes).toFixed(2), overlap: r.overlapRatio.toFixed(2),
  })));
}
