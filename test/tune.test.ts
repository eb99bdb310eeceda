// `kvoff tune`: its flags through the built CLI, the tuned.json round trip into generate and bench, and the cost
// model's arithmetic and monotonicity. No timing is asserted.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TunedConfigSchema } from '../src/cli/config-file.js';
import { DEFAULT_TUNE_POLICIES, pickToConfirm } from '../src/cli/tune.js';
import { POLICIES } from '../src/engine/options.js';
import { parseModelConfig } from '../src/model/config.js';
import { writeRandomModel } from '../src/model/random-model.js';
import { SHAPE_NAMES, shapeConfig } from '../src/model/shapes.js';
import { native } from '../src/native.js';
import { stepCost, type CostConstants, type TuneShape } from '../src/tune/cost-model.js';
import { workerKvBytes, workerKvLayers } from '../src/tune/measure.js';
import { engineKnobs, searchSettings, type PlanShape } from '../src/tune/search.js';

const run = promisify(execFile);
const CLI = join(import.meta.dirname, '..', 'dist', 'src', 'cli', 'main.js');
const LONG = 120_000;

async function kvoff(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [CLI, ...args], { timeout: LONG });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

let tmp: string;
let tinyDir: string; // random weights of the tiny shape, for generate and bench --model
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'kvoff-tune-'));
  await mkdir(join(tmp, 'tiny-model'));
  tinyDir = (await writeRandomModel(shapeConfig('tiny'), { dir: join(tmp, 'tiny-model') })).dir;
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('kvoff tune flags', () => {
  const tiny = ['tune', '--shape', 'tiny', '--context', '256', '--vram-budget', '50%'];
  it.each([
    [['tune', '--shape', 'tiny', '--vram-budget', '50%'], /required option '--context <n>' not specified/],
    [['tune', '--shape', 'tiny', '--context', '256'], /required option '--vram-budget <size>' not specified/],
    [['tune', '--shape', 'tiny', '--context', 'abc', '--vram-budget', '50%'], /Expected a positive integer for --context but received "abc"/],
    [[...tiny, '--batch', '0'], /Expected a positive integer for --batch but received "0"/],
    [[...tiny, '--confirm', 'x'], /Expected an integer >= 0 for --confirm but received "x"/],
    [['tune', '--shape', 'tiny', '--context', '256', '--vram-budget', '12 potatoes'], /Expected a byte size \(1\.6GiB, 160KiB, 4096\) or a percentage of the run's full KV \(10%\) for --vram-budget but received "12 potatoes"/],
    [['tune', '--shape', 'tiny', '--context', '256', '--vram-budget', '0%'], /for --vram-budget but received "0%"/],
    [['tune', '--shape', 'llama-9000', '--context', '256', '--vram-budget', '50%'], /Expected one of llama-3\.2-1b, .*tiny for --shape but received "llama-9000"/],
    [[...tiny, '--policies', 'exact,nope'], /Expected comma-separated policies, each one of dense, .* for --policies but received "nope"/],
    [[...tiny, '--model', '/nowhere'], /one of --model or --shape, not both/],
    [[...tiny, '--out', '/no/such/dir/tuned.json'], /Expected a file in an existing directory for --out/],
    [[...tiny, '--backend', 'tpu'], /Allowed choices are auto, cpu, cuda/],
    [['tune', '--shape', 'tiny', '--context', '5000', '--vram-budget', '50%'], /Expected at most 4087 tokens .* for --context but received 5000/],
  ])('fails clearly for %j', async (args, message) => {
    const r = await kvoff(args);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/at .*\.js:\d+/); // a message, not a stack trace
  }, LONG);

  it.skipIf(native().buildInfo().cuda.deviceCount > 0)('--backend cuda without a GPU fails at once, after the flags, and says why', async () => {
    const out = join(tmp, 'no-gpu.json');
    const r = await kvoff([...tiny, '--backend', 'cuda', '--out', out]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Expected a usable backend for --backend but received "cuda": /);
    expect(r.stderr).not.toMatch(/at .*\.js:\d+/);
    expect(existsSync(out)).toBe(false);
  }, LONG);

  it('a budget no policy fits fails with the smallest that works, and writes nothing', async () => {
    const out = join(tmp, 'never.json');
    const r = await kvoff(['tune', '--shape', 'tiny', '--context', '256', '--vram-budget', '100', '--policies', 'dense', '--quick', '--out', out, '--backend', 'cpu']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Expected a budget that fits at least one of dense: at least \d+ bytes \(.*\) for --vram-budget but received "100 \(100 bytes\)"/);
    expect(existsSync(out)).toBe(false);
  }, LONG);
});

describe('tuned.json round trip', () => {
  const out = () => join(tmp, 'tuned.json');
  let tuned: { version: 1; engine: Record<string, unknown>; tune: Record<string, any> };

  it('tune --shape tiny writes a valid version-1 config and prints predicted against measured', async () => {
    const r = await kvoff(['tune', '--shape', 'tiny', '--context', '256', '--vram-budget', '50%', '--quick', '--confirm', '1', '--out', out(), '--backend', 'cpu']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    tuned = JSON.parse(readFileSync(out(), 'utf8'));
    expect(TunedConfigSchema.safeParse(tuned).success).toBe(true);
    expect(tuned.version).toBe(1);
    expect(POLICIES).toContain(tuned.engine.policy);
    expect(tuned.engine.vramBudget).toBe(tuned.tune.budgetBytes);
    expect(tuned.tune).toMatchObject({ context: 256, batch: 1, shape: 'tiny', model: null, vramBudget: '50%' });
    const confirmed = tuned.tune.candidates.filter((c: { measuredMsPerStep: number | null }) => c.measuredMsPerStep !== null);
    expect(confirmed).toHaveLength(1);
    expect(confirmed[0].measuredOverPredicted).toBeCloseTo(confirmed[0].measuredMsPerStep / confirmed[0].predictedMsPerStep, 6);
    // The engine section is the chosen candidate: its policy, threads and knobs.
    const chosen = tuned.tune.candidates.find((c: { policy: string; cpuThreads: number }) => c.policy === tuned.engine.policy && c.cpuThreads === tuned.engine.cpuThreads);
    expect(chosen).toBeDefined();
    expect(tuned.engine).toMatchObject(chosen.knobs);
    expect(r.stdout).toMatch(/^policy +threads +knobs +predicted ms\/step +measured ms\/step +measured\/predicted/m);
    expect(r.stdout).toMatch(/wrote .*tuned\.json$/m);
    expect(readdirSync(tmp).filter((f) => f.includes('.partial-'))).toEqual([]); // written through a temp file
  }, LONG);

  it('--json prints the object it writes', async () => {
    const f = join(tmp, 'tuned-json.json');
    const r = await kvoff(['tune', '--shape', 'tiny', '--context', '128', '--vram-budget', '64KiB', '--quick', '--confirm', '0', '--policies', 'cpu,exact', '--out', f, '--json', '--backend', 'cpu']);
    expect(r.code).toBe(0);
    const j = JSON.parse(readFileSync(f, 'utf8'));
    expect(JSON.parse(r.stdout)).toEqual(j);
    expect(j.tune.measuredMsPerStep).toBeNull();
    expect(['cpu', 'exact']).toContain(j.engine.policy);
  }, LONG);

  it('generate --config runs with it, inside its budget', async () => {
    const prompt = Array.from({ length: 200 }, (_, i) => 3 + (i % 90)).join(',');
    const r = await kvoff(['generate', '--model', tinyDir, '--config', out(), '--prompt-tokens', prompt, '--max-new-tokens', '4', '--json', '--backend', 'cpu']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.tokens).toHaveLength(4);
    expect(j.stats.deviceBytesPeak).toBeLessThanOrEqual(tuned.engine.vramBudget as number);
  }, LONG);

  it('bench --config runs the tuned policy with its knobs', async () => {
    const r = await kvoff(['bench', '--model', tinyDir, '--config', out(), '--context', '64', '--policies', String(tuned.engine.policy), '--steps', '1', '--json', '--backend', 'cpu']);
    expect(r.code).toBe(0);
    const { runs } = JSON.parse(r.stdout);
    expect(runs[0].status).toBe('ok');
    const { policy: _p, vramBudget: _b, cpuThreads: _t, blockSize: _s, kvDtype: _d, prefillChunk: _c, ...knobs } = tuned.engine;
    expect(runs[0].knobs).toMatchObject(knobs);
  }, LONG);

  it('a damaged tune section is refused by --config, naming the field', async () => {
    const bad = join(tmp, 'bad.json');
    writeFileSync(bad, JSON.stringify({ ...tuned, tune: { ...tuned.tune, candidates: [] } }));
    const r = await kvoff(['generate', '--model', tinyDir, '--config', bad, '--prompt-tokens', '3,4,5', '--max-new-tokens', '1']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/for --config .*bad\.json\.tune\.candidates but received array\(0\)/);
  }, LONG);
});

/** Round numbers, so the arithmetic below can be followed by hand. */
const C: CostConstants = {
  backend: 'cpu', deviceReadGBs: 100, linkGBs: 10, gatherGBs: 5,
  lowBit: { 2: { scoreTokPerMs: 1000, attendTokPerMs: 500 } },
  cpu: [{ threads: 1, attnGBs: 1, skipGBs: 4, dispatchMs: 0.1 }, { threads: 2, attnGBs: 2, skipGBs: 8, dispatchMs: 0.1 }],
  denseLayerMs: 0.5, denseRowMs: 0.25, stepOverheadMs: 1, missRate: 0.5, residual: {},
};
const S: TuneShape = { numLayers: 2, numKvHeads: 2, groupSize: 2, headDim: 16 }; // a token-head's K+V: 64 B
const SPLIT = { topK: 32, sinks: 4, window: 64, bits: 2, keyGroupSize: 32 };

describe('the CPU workers\' measurement size', () => {
  it('is the run\'s KV within [2 MiB, 2 GiB] and an eighth of host memory, and the fixed sizes without it or in quick mode', () => {
    const MiB = 1 << 20;
    const host = 128 * 1024 * MiB; // the H100 machine's
    expect(workerKvBytes(7.83 * MiB, false, host)).toBe(Math.ceil(7.83 * MiB)); // the demo model at 8k: cache-resident, as its run
    expect(workerKvBytes(16 * 1024 * MiB, false, host)).toBe(2048 * MiB); // the 8B shape at 131k: DRAM, as its run
    expect(workerKvBytes(16 * 1024 * MiB, false, 8 * 1024 * MiB)).toBe(1024 * MiB); // a small host: an eighth of it
    expect(workerKvBytes(16 * 1024 * MiB, false, 1024 * MiB)).toBe(512 * MiB); // never below the fixed size
    expect(workerKvBytes(100, false, host)).toBe(2 * MiB);
    expect(workerKvBytes(undefined, false, host)).toBe(512 * MiB);
    expect(workerKvBytes(Number.NaN, false, host)).toBe(512 * MiB);
    expect(workerKvBytes(16 * 1024 * MiB, true, host)).toBe(2 * MiB);
    fc.assert(fc.property(fc.double({ min: 1, max: 2 ** 40, noNaN: true }), fc.double({ min: 1, max: 2 ** 40, noNaN: true }), (a, b) => {
      // Never smaller for a bigger run.
      const [lo, hi] = a <= b ? [a, b] : [b, a];
      return workerKvBytes(lo, false, host) <= workerKvBytes(hi, false, host);
    }));
  });

  it('is read as layers of at most 512 MiB, at most 4 of them, as the run reads a step', () => {
    const MiB = 1 << 20;
    expect(workerKvLayers(7.83 * MiB)).toBe(1);
    expect(workerKvLayers(512 * MiB)).toBe(1);
    expect(workerKvLayers(513 * MiB)).toBe(2);
    expect(workerKvLayers(2048 * MiB)).toBe(4);
    expect(workerKvLayers(1e15)).toBe(4);
  });
});

describe('cost model', () => {
  it('cpu: each layer attends all of the KV on the workers, then runs its dense graphs', () => {
    const c = stepCost(S, 1000, 1, { policy: 'cpu', knobs: {}, cpuThreads: 2, deviceBytes: 0 }, C);
    // KV per layer 2 heads x 1000 tokens x 64 B = 128000 B at 2 GB/s = 0.064 ms, + 0.1 ms round trip.
    expect(c.layer.cpuMs).toBeCloseTo(0.164, 9);
    // 2 layers x (0.164 + 0.5 dense) + 1 overhead.
    expect(c.msPerStep).toBeCloseTo(2.328, 9);
    expect(c.limiter).toBe('cpu');
    // A fitted residual of 0.05 ms + 0.01 ms per 1k tokens per (sequence, layer, KV head): 2 heads x 0.06 per layer.
    const residual = { cpu: { fixedMs: 0.05, msPerKTokens: 0.01 } };
    const withResidual = stepCost(S, 1000, 1, { policy: 'cpu', knobs: {}, cpuThreads: 2, deviceBytes: 0 }, { ...C, residual });
    expect(withResidual.msPerStep).toBeCloseTo(2.328 + 2 * 2 * 0.06, 9);
    // Held flat past the longer trial context: at 1000 tokens, a line fitted up to 500 charges what it charges at 500.
    const flat = stepCost(S, 1000, 1, { policy: 'cpu', knobs: {}, cpuThreads: 2, deviceBytes: 0 }, { ...C, residual: { cpu: { ...residual.cpu, upToTokens: 500 } } });
    expect(flat.msPerStep).toBeCloseTo(2.328 + 2 * 2 * 0.055, 9);
  });

  it('exact: low-bit selection and the hot set on the device, the rest on the CPU, misses fetched first', () => {
    const c = stepCost(S, 1000, 1, { policy: 'exact', knobs: SPLIT, cpuThreads: 1, deviceBytes: 0 }, C);
    // hot = 4 + 64 + 32 = 100 tokens; 992 tokens have low-bit keys (31 groups of 32).
    // device: 2 x 992 tokens / 1000 per ms = 1.984, + 2 x 100 x 64 B at 100 GB/s = 0.000128.
    expect(c.layer.deviceMs).toBeCloseTo(1.984128, 9);
    // misses per head: the new token + 0.5 x 32 = 17; 2 x 17 x 64 B at 5 GB/s = 0.0004352 ms.
    expect(c.missesPerHead).toBe(17);
    expect(c.layer.copyMs).toBeCloseTo(0.0004352, 9);
    // cpu: 2 x 900 x 64 B at 1 GB/s = 0.1152, + 0.1.
    expect(c.layer.cpuMs).toBeCloseTo(0.2152, 9);
    expect(c.layer.attentionMs).toBeCloseTo(1.9845632, 9); // max(copy + device, cpu)
    expect(c.msPerStep).toBeCloseTo(2 * (1.9845632 + 0.5) + 1, 9);
  });

  it('exact as the CUDA resident step runs it: sinks and window on the device, no selection, the rest on the CPU', () => {
    const c = stepCost(S, 1000, 1, { policy: 'exact', knobs: { sinks: 4, window: 64 }, cpuThreads: 1, deviceBytes: 0 }, C);
    // hot = 68 tokens, nothing selected: device = 2 x 68 x 64 B at 100 GB/s; only the new token misses.
    expect(c.layer.deviceMs).toBeCloseTo((2 * 68 * 64) / 1e8, 12);
    expect(c.missesPerHead).toBe(1);
    // cpu: 2 x 932 x 64 B at 1 GB/s = 0.119296, + 0.1.
    expect(c.layer.cpuMs).toBeCloseTo(0.219296, 9);
    expect(Number.isFinite(c.msPerStep)).toBe(true);
  });

  it('specache: two rows per sequence, the device works twice, prefetched copies overlap', () => {
    const c = stepCost(S, 1000, 2, { policy: 'specache', knobs: SPLIT, cpuThreads: 1, deviceBytes: 0 }, C);
    // 4 (sequence, head) pairs. select: 4 x 992 / 1000 = 3.968; hot: 4 x 100 x 64 B / 100 GB/s = 0.000256;
    // low-bit tail: 4 x 900 / 500 = 7.2; device = 3.968 + 2 x (0.000256 + 7.2).
    expect(c.layer.deviceMs).toBeCloseTo(18.368512, 9);
    expect(c.layer.attentionMs).toBe(c.layer.deviceMs);
    expect(c.layer.serialMs).toBeCloseTo(0.5 + 3 * 0.25, 9); // 4 rows
    expect(c.layer.cpuMs).toBe(0);
  });

  it('a policy without a formula is charged its device bytes once per step', () => {
    const c = stepCost(S, 1000, 1, { policy: 'streaming', knobs: {}, cpuThreads: 1, deviceBytes: 2e6 }, C);
    expect(c.layer.deviceMs).toBeCloseTo(1e6 / 1e8, 9); // 1 MB per layer at 100 GB/s
  });

  it('more budget never predicts a slower best step', () => {
    const rate = fc.double({ min: 0.05, max: 500, noNaN: true });
    const constants = fc.record({
      deviceReadGBs: rate, linkGBs: rate, gatherGBs: rate, attn: rate, skip: rate, dispatch: fc.double({ min: 0, max: 1, noNaN: true }),
      score: rate, attend: rate, dense: fc.double({ min: 0, max: 5, noNaN: true }),
    }).map((r): CostConstants => ({
      ...C, deviceReadGBs: r.deviceReadGBs, linkGBs: r.linkGBs, gatherGBs: r.gatherGBs, denseLayerMs: r.dense,
      lowBit: { 1: { scoreTokPerMs: r.score * 1000, attendTokPerMs: r.attend * 1000 }, 2: { scoreTokPerMs: r.score * 800, attendTokPerMs: r.attend * 800 }, 4: { scoreTokPerMs: r.score * 600, attendTokPerMs: r.attend * 600 } },
      cpu: [1, 2, 4].map((threads) => ({ threads, attnGBs: r.attn * threads, skipGBs: r.skip * threads, dispatchMs: r.dispatch })),
    }));
    fc.assert(fc.property(
      fc.constantFrom(...SHAPE_NAMES), fc.integer({ min: 1, max: 32768 }), fc.integer({ min: 1, max: 3 }),
      fc.double({ min: 0, max: 1.5, noNaN: true }), fc.double({ min: 0, max: 1.5, noNaN: true }), constants,
      (name, context, batch, f1, f2, constants) => {
        const cfg = parseModelConfig(shapeConfig(name), name);
        const shape: PlanShape = { numLayers: cfg.numLayers, numKvHeads: cfg.numKvHeads, groupSize: cfg.numHeads / cfg.numKvHeads, headDim: cfg.headDim, dtype: 'bf16', blockSize: 16 };
        const n = Math.min(context, cfg.maxPositionEmbeddings - 9);
        const full = batch * n * cfg.numLayers * cfg.numKvHeads * 4 * cfg.headDim; // 16-bit K and V
        const best = (fraction: number) => {
          const { ranked } = searchSettings({ shape, context: n, capacityTokens: n + 9, batch, budgetBytes: Math.floor(full * fraction), policies: POLICIES, constants });
          return ranked[0]?.cost.msPerStep ?? Infinity;
        };
        const [small, large] = f1 <= f2 ? [f1, f2] : [f2, f1];
        expect(best(large)).toBeLessThanOrEqual(best(small));
      },
    ), { numRuns: 100 });
  }, LONG);
});

describe('search', () => {
  it('keeps only the knobs a policy takes, and confirms distinct policies first', () => {
    expect(engineKnobs('exact', { topK: 8, cpuK: 0, bits: 2 })).toEqual({ topK: 8, bits: 2 });
    const shape: PlanShape = { ...S, dtype: 'bf16', blockSize: 16 };
    const { ranked, unfit } = searchSettings({ shape, context: 1000, capacityTokens: 1009, batch: 1, budgetBytes: 1 << 20, policies: ['cpu', 'exact', 'dense'], constants: C });
    expect(unfit).toEqual([]);
    for (let i = 1; i < ranked.length; i++) expect(ranked[i].cost.msPerStep).toBeGreaterThanOrEqual(ranked[i - 1].cost.msPerStep);
    expect(new Set(pickToConfirm(ranked, 3).map((r) => r.policy)).size).toBe(3);
    // Ranked by speed alone, a lossy policy would win at its cheapest knobs: the default search is lossless only.
    expect(DEFAULT_TUNE_POLICIES).toEqual(['dense', 'cpu', 'offload-layer', 'exact']);
  });

  it('on CUDA plans exact as its device-resident step: sinks and window only, at what they cost there', () => {
    const shape: PlanShape = { ...S, dtype: 'bf16', blockSize: 16 };
    const input = { shape, context: 1000, capacityTokens: 1009, batch: 1, budgetBytes: 1 << 20, policies: ['exact'] as const };
    const host = searchSettings({ ...input, policies: ['exact'], constants: C }).ranked;
    const cuda = searchSettings({ ...input, policies: ['exact'], constants: { ...C, backend: 'cuda' } }).ranked;
    expect(host.some((r) => 'topK' in r.knobs)).toBe(true);
    expect(new Set(cuda.map((r) => JSON.stringify(r.knobs)))).toEqual(new Set([JSON.stringify({ sinks: 4, window: 64 })]));
    // The hot rows of both layers plus the partials: far less than the host-side plan's low-bit copy and hot set.
    for (const r of cuda) expect(r.deviceBytes).toBeLessThan(Math.min(...host.map((h) => h.deviceBytes)));
    // A batch takes the host-side path on CUDA too, so it is planned as such.
    expect(searchSettings({ ...input, batch: 2, policies: ['exact'], constants: { ...C, backend: 'cuda' } }).ranked.some((r) => 'topK' in r.knobs)).toBe(true);
  });
});
