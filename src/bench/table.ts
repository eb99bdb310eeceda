// The bench's stdout: the machine in one line, one table row per run, then why any run was skipped.
import { formatTable } from '../cli/text-table.js';
import { formatBytes } from '../units.js';
import type { Machine } from './machine.js';
import type { BenchRun } from './run.js';

const num = (x: number | null, digits = 1) => (x === null || !Number.isFinite(x) ? '-' : x.toFixed(digits));
const budgetText = (r: BenchRun) => (r.vramBudgetBytes === null ? 'none' : `${formatBytes(r.vramBudgetBytes)}${r.budget?.trim().endsWith('%') ? ` (${r.budget.trim()})` : ''}`);

export function machineLine(m: Machine): string {
  return (
    `${m.backend} backend, ${m.cpuModel} x${m.cpuCount}, ${formatBytes(m.totalMemBytes)} RAM, SIMD ${m.simd}; ` +
    `host memcpy ${m.memcpy.copyGBs.toFixed(1)} GB/s copy (${m.memcpy.readWriteGBs.toFixed(1)} r+w, ${m.memcpy.threads} threads); ` +
    `bound uses device ${m.deviceGBs.toFixed(1)}, PCIe ${m.pcieGBs.toFixed(1)}, host ${m.hostGBs.toFixed(1)} GB/s`
  );
}

export function runsTable(runs: BenchRun[]): string {
  const head = [
    'policy', 'context', 'batch', 'budget', 'prefill tok/s', 'decode tok/s', 'ms/tok p50', 'p90', 'bound ms', 'limit', 'measured/bound',
    'H2D/step', 'cpu attn ms', 'device ms', 'copy ms', 'overlap',
  ];
  const rows = runs.map((r) => {
    const s = r.perStep;
    const common = [r.policy, String(r.context), String(r.batch), budgetText(r)];
    if (r.status !== 'ok' || !s) return [...common, 'skipped', ...head.slice(5).map(() => '')];
    return [
      ...common, num(r.prefillTokPerS, 0), num(r.decodeTokPerS, 2), num(r.msPerTokenMedian, 2), num(r.msPerTokenP90, 2),
      num(r.boundMsPerToken, 3), r.boundLimiter ?? '-', num(r.measuredOverBound, 1), formatBytes(s.bytesH2D),
      num(s.cpuAttnMs, 2), num(s.deviceMs, 2), num(s.copyMs, 2), num(r.stats?.overlapRatio ?? null, 2),
    ];
  });
  // The full reason is in the JSON; here, what it takes to run.
  const why = (r: BenchRun) => (r.minBudgetBytes !== null ? `the budget is too small: it needs at least ${formatBytes(r.minBudgetBytes)}` : r.reason);
  const notes = runs.filter((r) => r.status !== 'ok').map((r) => `skipped ${r.policy}, context ${r.context}, batch ${r.batch}, budget ${budgetText(r)}: ${why(r)}`);
  return [formatTable(head, rows), ...(notes.length ? ['', ...notes] : [])].join('\n');
}
