// `kvoff bench` as a user runs it (the built CLI in a child process), and the bound's arithmetic. No timing is asserted.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stepBound, sumMs, transferMs } from '../src/bench/bound.js';
import { kvBytesPerToken, stepKvTraffic } from '../src/bench/kv-traffic.js';
import { loadVega, plotSpec } from '../src/bench/plot.js';
import type { BenchRun } from '../src/bench/run.js';
import { parseModelConfig } from '../src/model/config.js';
import { shapeConfig } from '../src/model/shapes.js';
import { KvoffBackendError, Model } from '../src/model/model.js';
import { native } from '../src/native.js';

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

const RUN_KEYS = ['policy', 'context', 'batch', 'vramBudgetBytes', 'prefillTokPerS', 'decodeTokPerS', 'msPerTokenMedian', 'msPerTokenP90', 'boundMsPerToken', 'stats'];
const STATS_KEYS = ['prefillTokens', 'decodeTokens', 'bytesH2D', 'bytesD2H', 'cpuAttnMs', 'deviceMs', 'copyMs', 'overlapRatio', 'deviceBytesPeak', 'weightBytes'];

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'kvoff-bench-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('kvoff bench flags', () => {
  const tiny = ['bench', '--shape', 'tiny', '--context', '64'];
  it.each([
    [['bench', '--shape', 'llama-9000', '--context', '64'], /Expected one of llama-3\.2-1b, llama-3\.1-8b, qwen2\.5-7b, tiny for --shape but received "llama-9000"/],
    [['bench', '--shape', 'tiny', '--context', '64,abc'], /Expected comma-separated positive integers like 2048,8192 for --context but received "64,abc"/],
    [['bench', '--shape', 'tiny', '--context', '0'], /for --context but received "0"/],
    [['bench', '--shape', 'tiny', '--context', '5000'], /Expected contexts of at most 4079 tokens .* for --context but received 5000/],
    [[...tiny, '--batch', '1,two'], /for --batch but received "1,two"/],
    [[...tiny, '--vram-budget', '12 potatoes'], /Expected comma-separated budgets, each a byte size .* or none for --vram-budget but received "12 potatoes"/],
    [[...tiny, '--vram-budget', '1GiB,0%'], /for --vram-budget but received "0%"/],
    [[...tiny, '--policies', 'dense,nope'], /Expected comma-separated policies, each one of dense, cpu, offload-layer, exact, tiered, specache.* for --policies but received "nope"/],
    [[...tiny, '--steps', '0'], /Expected a positive integer for --steps but received "0"/],
    [[...tiny, '--model', '/nowhere'], /one of --model or --shape, not both/],
    [[...tiny, '--plot', 'out.png'], /Expected a file name ending in \.svg for --plot but received "out\.png"/],
    [[...tiny, '--out', '/no/such/dir/r.json'], /Expected a file in an existing directory for --out/],
    [[...tiny, '--backend', 'tpu'], /Allowed choices are auto, cpu, cuda/],
    [['bench', '--shape', 'tiny'], /required option '--context <list>'/],
  ])('fails clearly for %j', async (args, message) => {
    const r = await kvoff(args);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/at .*\.js:\d+/); // a message, not a stack trace
  }, LONG);
});

describe('kvoff bench on CUDA without a GPU', () => {
  const gpuUsable = native().buildInfo().cuda.deviceCount > 0;
  it.skipIf(gpuUsable)('--backend cuda --shape fails at once, before writing any weights, and says why', async () => {
    const r = await kvoff(['bench', '--shape', 'llama-3.1-8b', '--context', '1024', '--backend', 'cuda']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/^kvoff: Expected a usable backend for --backend but received "cuda"/m);
    expect(r.stderr).not.toMatch(/warning: --shape|writing random/); // the footprint check and the write come after
  }, LONG);

  it.skipIf(gpuUsable)('Model.randomOnDevice refuses with the backend error, allocating nothing', async () => {
    const config = parseModelConfig(shapeConfig('tiny'), 'tiny');
    await expect(Model.randomOnDevice(config)).rejects.toBeInstanceOf(KvoffBackendError);
  });
});

describe('kvoff bench runs', () => {
  it('a tiny run writes {"machine", "runs"} with one run per policy, and --json prints the same object', async () => {
    const out = join(tmp, 'tiny.json');
    const r = await kvoff(['bench', '--shape', 'tiny', '--context', '64', '--policies', 'dense,cpu', '--steps', '2', '--out', out, '--json', '--backend', 'cpu']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(readFileSync(out, 'utf8'));
    expect(JSON.parse(r.stdout)).toEqual(j);
    expect(Object.keys(j).slice(0, 2)).toEqual(['machine', 'runs']);
    for (const key of ['backend', 'hostGBs', 'pcieGBs', 'deviceGBs']) expect(j.machine).toHaveProperty(key);
    expect(j.machine.hostGBs).toBeGreaterThan(0);
    expect(j.runs.map((x: BenchRun) => x.policy)).toEqual(['dense', 'cpu']);
    for (const run of j.runs) {
      for (const key of RUN_KEYS) expect(run).toHaveProperty(key);
      expect(run).toMatchObject({ context: 64, batch: 1, vramBudgetBytes: null, status: 'ok', steps: 2 });
      for (const key of ['prefillTokPerS', 'decodeTokPerS', 'msPerTokenMedian', 'msPerTokenP90', 'boundMsPerToken']) expect(run[key]).toBeGreaterThan(0);
      expect(run.msPerTokenP90).toBeGreaterThanOrEqual(run.msPerTokenMedian);
      for (const key of STATS_KEYS) expect(typeof run.stats[key]).toBe('number');
      expect(run.stats.decodeTokens).toBe(2);
      expect(run.stats.prefillTokens).toBe(64);
      expect(run.perStep.weightBytes).toBe(run.stats.weightBytes);
    }
    expect(j.runs[1].perStep.cpuKvBytes).toBe(kvBytesPerToken(parseModelConfig(shapeConfig('tiny'), 'tiny')) * 64); // cpu attends all of it
  }, LONG);

  it('records a budget too small as skipped with the numbers, runs the rest, and prints a table', async () => {
    const r = await kvoff(['bench', '--shape', 'tiny', '--context', '64', '--policies', 'dense,cpu', '--vram-budget', '100,none', '--steps', '1']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^policy +context +batch +budget +prefill tok\/s/m);
    expect(r.stdout).toMatch(/skipped dense, context 64, batch 1, budget 100 B: the budget is too small: it needs at least 20\.0 KiB/);
    expect(r.stdout).not.toMatch(/skipped cpu/);
  }, LONG);

  it('percentage budgets resolve against the run\'s full KV; batch > 1 runs, or is skipped with a reason', async () => {
    const out = join(tmp, 'pct.json');
    const r = await kvoff(['bench', '--shape', 'tiny', '--context', '64', '--batch', '1,2', '--policies', 'cpu', '--vram-budget', '50%', '--steps', '1', '--out', out]);
    expect(r.code).toBe(0);
    const { runs } = JSON.parse(readFileSync(out, 'utf8'));
    expect(runs.map((x: BenchRun) => x.batch)).toEqual([1, 2]);
    for (const x of runs) expect(x.vramBudgetBytes).toBe(Math.floor(x.fullKvBytes / 2));
    expect(runs[1].fullKvBytes).toBe(2 * runs[0].fullKvBytes);
    if (runs[1].status === 'skipped') expect(runs[1].reason).toMatch(/generateBatch|batch/);
    else expect(runs[1].stats.decodeTokens).toBe(2);
  }, LONG);

  it('--plot writes an SVG when vega is installed, and fails clearly (writing nothing) when not', async () => {
    const svg = join(tmp, 'plot.svg');
    const out = join(tmp, 'with-plot.json');
    const r = await kvoff(['bench', '--shape', 'tiny', '--context', '32,64', '--policies', 'dense,cpu', '--steps', '1', '--plot', svg, '--out', out]);
    if (await loadVega()) {
      expect(r.code).toBe(0);
      expect(readFileSync(svg, 'utf8')).toMatch(/^<svg[^>]*>/);
    } else {
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/Expected the vega and vega-lite packages installed .* for --plot/);
      expect(existsSync(svg)).toBe(false);
      expect(existsSync(out)).toBe(false);
    }
  }, LONG);
});

describe('the plot spec', () => {
  it('has one line per policy over context, a panel per budget, and leaves skipped runs out', () => {
    const base = { context: 64, batch: 1, budget: null, vramBudgetBytes: null, status: 'ok', decodeTokPerS: 10 } as unknown as BenchRun;
    const runs = [
      { ...base, policy: 'dense' }, { ...base, policy: 'cpu', context: 128 },
      { ...base, policy: 'cpu', budget: '10%', vramBudgetBytes: 2048 }, { ...base, policy: 'exact', status: 'skipped', decodeTokPerS: null },
    ] as BenchRun[];
    const spec = plotSpec(runs) as { data: { values: Array<Record<string, unknown>> }; encoding: Record<string, { field: string }> };
    expect(spec.data.values).toHaveLength(3);
    expect(spec.data.values.map((v) => v.budget)).toEqual(['no cap', 'no cap', '10% of KV']);
    expect(spec.encoding.x.field).toBe('context');
    expect(spec.encoding.y.field).toBe('decodeTokPerS');
    expect(spec.encoding.color.field).toBe('policy');
    expect(spec.encoding.column.field).toBe('budget');
    expect(spec.encoding.row).toBeUndefined(); // one batch size: no row facet
  });
});

describe('the bound from bytes moved', () => {
  const bw = { deviceGBs: 2000, pcieGBs: 50, hostGBs: 100 };

  it('is bytes over bandwidth, in ms, for each resource; the max sets it', () => {
    expect(transferMs(2e9, 2000)).toBeCloseTo(1, 12); // 2 GB at 2 TB/s
    expect(transferMs(0, 0)).toBe(0);
    expect(transferMs(1, 0)).toBe(Infinity);
    // 16 GB of weights + 4 GB of device KV at 2000 GB/s = 10 ms; 0.1 GB over PCIe at 50 GB/s = 2 ms; 0.5 GB of host KV at 100 GB/s = 5 ms.
    const b = stepBound({ weightBytes: 16e9, deviceKvBytes: 4e9, h2dBytes: 1e8, cpuKvBytes: 5e8 }, bw);
    expect(b.perResource.device).toBeCloseTo(10, 9);
    expect(b.perResource.pcie).toBeCloseTo(2, 9);
    expect(b.perResource.host).toBeCloseTo(5, 9);
    expect(b.ms).toBeCloseTo(10, 9);
    expect(b.limiter).toBe('device');
    expect(sumMs(b)).toBeCloseTo(17, 9);
  });

  it('names the resource that limits', () => {
    expect(stepBound({ weightBytes: 1e9, deviceKvBytes: 0, h2dBytes: 1e9, cpuKvBytes: 0 }, bw).limiter).toBe('pcie'); // 0.5 ms vs 20 ms
    const host = stepBound({ weightBytes: 1e9, deviceKvBytes: 0, h2dBytes: 0, cpuKvBytes: 8e9 }, bw);
    expect(host.limiter).toBe('host');
    expect(host.ms).toBeCloseTo(80, 9);
  });

  it('counts the KV each policy reads per step', () => {
    const c = parseModelConfig(shapeConfig('llama-3.1-8b'), '8b');
    const row = kvBytesPerToken(c);
    expect(row).toBe(32 * 8 * 2 * 128 * 2); // 128 KiB per token
    const knobs = { sinks: 4, topK: 64, window: 64, cpuK: 256 };
    expect(stepKvTraffic('cpu', c, 1000, 2, 0, null)).toEqual({ deviceKvBytes: 0, cpuKvBytes: 2000 * row });
    expect(stepKvTraffic('dense', c, 1000, 1, 7, null)).toEqual({ deviceKvBytes: 7, cpuKvBytes: 0 });
    expect(stepKvTraffic('offload-layer', c, 1000, 1, 7, null)).toEqual({ deviceKvBytes: 1000 * row, cpuKvBytes: 0 });
    expect(stepKvTraffic('exact', c, 1000, 1, 7, knobs)).toEqual({ deviceKvBytes: 7, cpuKvBytes: (1000 - 132) * row });
    expect(stepKvTraffic('tiered', c, 1000, 1, 7, knobs)).toEqual({ deviceKvBytes: 7, cpuKvBytes: 256 * row });
    expect(stepKvTraffic('specache', c, 1000, 1, 7, knobs)).toEqual({ deviceKvBytes: 7, cpuKvBytes: 0 });
  });
});
