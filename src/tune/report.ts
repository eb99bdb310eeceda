// What `kvoff tune` prints: the measured constants in a few lines, the predicted ranking, and predicted against measured.
import { formatTable } from '../cli/text-table.js';
import { formatBytes } from '../units.js';
import { LOSSLESS, type CostConstants } from './cost-model.js';
import type { TuneSection, TunedCandidate } from './record.js';
import type { Unfit } from './search.js';

const ms = (x: number): string => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x >= 1 ? x.toFixed(2) : x.toFixed(3));
const gb = (x: number): string => `${x.toFixed(1)} GB/s`;

export const knobText = (k: Record<string, number>): string => Object.entries(k).map(([name, v]) => `${name}=${v}`).join(',') || '-';

export function constantsText(c: CostConstants): string {
  const threads = c.cpu.map((r) => `${r.threads}t ${gb(r.attnGBs)}`).join(', ');
  const lowBit = Object.entries(c.lowBit).map(([bits, r]) => `${bits}-bit ${(r.scoreTokPerMs / 1000).toFixed(1)}M tok/s`).join(', ');
  return [
    `device-tier read ${gb(c.deviceReadGBs)}; link ${gb(c.linkGBs)}; hot-set gather ${gb(c.gatherGBs)}`,
    `CPU attention ${threads} (round trip ${ms(c.cpu[c.cpu.length - 1].dispatchMs)} ms); low-bit selection ${lowBit || 'not measurable at this head_dim'}`,
    `dense graphs ${ms(c.denseLayerMs)} ms per layer (+${ms(c.denseRowMs)} per extra row); step overhead ${ms(c.stepOverheadMs)} ms; miss rate ${c.missRate} of top-k (assumed)`,
    `residual per (sequence, layer, KV head), ms + ms per 1k tokens, fitted from short runs: ${Object.entries(c.residual).map(([p, r]) => `${p} ${ms(r.fixedMs)}+${ms(r.msPerKTokens)}`).join(', ') || '-'}`,
  ].map((l) => `  ${l}`).join('\n');
}

export function rankingTable(cands: TunedCandidate[]): string {
  const head = ['rank', 'policy', 'exact', 'threads', 'knobs', 'device tier', 'predicted ms/step', 'limiter'];
  const rows = cands.map((c, i) => [
    String(i + 1), c.policy, LOSSLESS.has(c.policy) ? 'yes' : 'no', String(c.cpuThreads), knobText(c.knobs), formatBytes(c.deviceBytes),
    ms(c.predictedMsPerStep), c.limiter,
  ]);
  return formatTable(head, rows);
}

export function confirmTable(cands: TunedCandidate[]): string {
  const head = ['policy', 'threads', 'knobs', 'predicted ms/step', 'measured ms/step', 'measured/predicted'];
  const rows = cands.map((c) => [
    c.policy, String(c.cpuThreads), knobText(c.knobs), ms(c.predictedMsPerStep),
    c.measuredMsPerStep === null ? 'skipped' : ms(c.measuredMsPerStep), c.measuredOverPredicted === null ? '-' : c.measuredOverPredicted.toFixed(2),
  ]);
  return formatTable(head, rows);
}

export function tuneText(t: TuneSection, engine: Record<string, unknown>, ranked: TunedCandidate[], confirmed: TunedCandidate[], unfit: Unfit[], settings: number, out: string): string {
  const source = t.shape !== null ? `shape ${t.shape}` : `model ${t.model}`;
  const budget = t.vramBudget.trim().endsWith('%') ? `${formatBytes(t.budgetBytes)} (${t.vramBudget.trim()} of the run's full KV)` : formatBytes(t.budgetBytes);
  const lines = [
    `kvoff tune: ${source}, context ${t.context}, batch ${t.batch}, ${t.constants.backend} backend, VRAM budget ${budget}`,
    'measured:',
    constantsText(t.constants),
    '',
    `predicted: ${settings} settings fit the budget; the fastest of each policy:`,
    rankingTable(ranked),
  ];
  for (const u of unfit) lines.push(`does not fit: ${u.policy}: ${u.minBudgetBytes !== null ? `needs at least ${formatBytes(u.minBudgetBytes)}` : u.reason}`);
  if (confirmed.length) lines.push('', `confirmed (${t.confirmSteps} decode steps each):`, confirmTable(confirmed));
  const { policy, cpuThreads, vramBudget: _b, ...knobs } = engine;
  const measured = t.measuredMsPerStep === null ? 'not confirmed' : `${ms(t.measuredMsPerStep)} ms/step measured`;
  lines.push('', `chose ${policy} (${cpuThreads} thread${cpuThreads === 1 ? '' : 's'}, ${knobText(knobs as Record<string, number>)}): ${ms(t.predictedMsPerStep)} ms/step predicted, ${measured}; wrote ${out}`);
  return lines.join('\n');
}
