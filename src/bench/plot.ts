// `kvoff bench --plot`: decode tok/s against context, a line per policy, a panel per budget (and batch), as SVG.
// vega-lite compiles the spec, vega renders it headless (its SVG renderer needs no canvas).
import type { BenchRun } from './run.js';
import { formatBytes } from '../units.js';

/** The two packages, loaded only when a plot is asked for, so everything else runs without them. */
export interface VegaModules {
  vega: { View: new (runtime: unknown, opts: { renderer: 'none' }) => { toSVG(): Promise<string>; finalize(): void }; parse(spec: unknown): unknown };
  vegaLite: { compile(spec: unknown): { spec: unknown } };
}

/** null when vega or vega-lite is not installed; any other load failure is thrown. */
export async function loadVega(): Promise<VegaModules | null> {
  // Specifiers in variables: the type checker then does not need the packages installed.
  const names = ['vega', 'vega-lite'];
  try {
    const [vega, vegaLite] = await Promise.all(names.map((n) => import(n)));
    return { vega, vegaLite };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND') return null;
    throw err;
  }
}

const budgetLabel = (r: BenchRun) => (r.vramBudgetBytes === null ? 'no cap' : `${formatBytes(r.vramBudgetBytes)}${r.budget?.trim().endsWith('%') ? ` (${r.budget.trim()})` : ''}`);
// A percentage budget is a different byte count at each context: one panel per percentage, not per byte count.
const budgetGroup = (r: BenchRun) => (r.budget === null ? 'no cap' : r.budget.trim().endsWith('%') ? `${r.budget.trim()} of KV` : budgetLabel(r));

/** The vega-lite spec; only runs that finished are plotted. */
export function plotSpec(runs: BenchRun[]): Record<string, unknown> {
  const ok = runs.filter((r) => r.status === 'ok' && r.decodeTokPerS !== null);
  const values = ok.map((r) => ({ policy: r.policy, context: r.context, batch: `batch ${r.batch}`, budget: budgetGroup(r), decodeTokPerS: r.decodeTokPerS }));
  const batches = new Set(ok.map((r) => r.batch)).size;
  const contexts = new Set(ok.map((r) => r.context)).size;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'kvoff bench: decode throughput',
    data: { values },
    mark: { type: 'line', point: true },
    width: 260,
    height: 200,
    encoding: {
      // Contexts are usually powers of two far apart: a log axis keeps 4k and 128k on one page.
      x: { field: 'context', type: 'quantitative', title: 'context (tokens)', scale: contexts > 1 ? { type: 'log', base: 2 } : { zero: false } },
      y: { field: 'decodeTokPerS', type: 'quantitative', title: 'decode tok/s' },
      color: { field: 'policy', type: 'nominal' },
      column: { field: 'budget', type: 'nominal', title: 'VRAM budget' },
      ...(batches > 1 ? { row: { field: 'batch', type: 'nominal', title: null } } : {}),
    },
  };
}

export async function renderSvg(spec: Record<string, unknown>, m: VegaModules): Promise<string> {
  const view = new m.vega.View(m.vega.parse(m.vegaLite.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
