// Re-plots saved `kvoff bench --json` results (one or more files, e.g. runs made one policy at a time on the GPU
// machine) into one SVG with the same chart as `kvoff bench --plot`: decode tok/s against context, a line per policy,
// a panel per budget, a row per batch.
// Usage: npx tsc -p tsconfig.json && node dist/bench/plot-results.js --out FILE.svg RESULT.json [RESULT.json ...]
import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { loadVega, plotSpec, renderSvg } from '../src/bench/plot.js';
import type { BenchRun } from '../src/bench/run.js';

const { values, positionals } = parseArgs({ options: { out: { type: 'string' } }, allowPositionals: true });

async function main(): Promise<void> {
  if (!values.out || positionals.length === 0) throw new Error('Expected --out FILE.svg and at least one bench JSON file');
  const runs: BenchRun[] = [];
  for (const file of positionals) {
    const j = JSON.parse(await readFile(file, 'utf8')) as { runs?: BenchRun[] };
    if (!Array.isArray(j.runs)) throw new Error(`Expected a kvoff bench --json result with runs[] in ${file}`);
    runs.push(...j.runs);
  }
  const vega = await loadVega();
  if (!vega) throw new Error('vega and vega-lite are not installed (npm install)');
  await writeFile(values.out, await renderSvg(plotSpec(runs), vega));
  console.log(`${values.out}: ${runs.filter((r) => r.status === 'ok').length} runs plotted from ${positionals.length} files`);
}

main().catch((err: Error) => {
  console.error(err.message);
  process.exit(1);
});
