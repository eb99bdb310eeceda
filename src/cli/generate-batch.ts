// `kvoff generate --prompt-file F --batch N`: N sequences decoded together; prompts sharing a prefix share its blocks.
import type { Engine } from '../engine/engine.js';
import { KvoffArgumentError } from '../errors.js';
import type { Model } from '../model/model.js';
import type { GenerateFlags } from './generate.js';
import type { Progress } from './progress.js';

/**
 * The batch's prompts: a .jsonl file holds one prompt per line (a JSON string, or {"prompt": ...}), taken in
 * turn until there are N; any other file is one prompt, used N times (all N share its blocks).
 */
export function batchPrompts(path: string, text: string, n: number): string[] {
  if (!path.endsWith('.jsonl')) return Array.from({ length: n }, () => text);
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  const prompts = lines.map((line, i) => {
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      throw new KvoffArgumentError(`--prompt-file ${path} line ${i + 1}`, 'a JSON string or {"prompt": string}', line.slice(0, 60));
    }
    const p = typeof v === 'string' ? v : (v as { prompt?: unknown } | null)?.prompt;
    if (typeof p !== 'string') throw new KvoffArgumentError(`--prompt-file ${path} line ${i + 1}`, 'a JSON string or {"prompt": string}', line.slice(0, 60));
    return p;
  });
  if (prompts.length === 0) throw new KvoffArgumentError('--prompt-file', 'at least one prompt line', `${path} (empty)`);
  return Array.from({ length: n }, (_, i) => prompts[i % prompts.length]);
}

export async function runBatch(engine: Engine, model: Model, prompts: string[], f: GenerateFlags, progress: Progress): Promise<void> {
  if (f.logitsOut !== undefined) throw new KvoffArgumentError('--logits-out', 'no --batch (logits are written for one sequence)', `--batch ${f.batch}`);
  const seqs = prompts.map(() => ({ tokens: [] as number[], text: '' }));
  const ac = new AbortController();
  const onSigint = () => ac.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  try {
    const stream = engine.generateBatch(prompts, {
      maxNewTokens: f.maxNewTokens, temperature: f.temperature, topK: f.topK, topP: f.topP, seed: f.seed, signal: ac.signal,
      onPrefill: (d, t) => progress.update('prefill', d, t),
    });
    for await (const t of stream) {
      progress.stop();
      seqs[t.seq].tokens.push(t.token);
      seqs[t.seq].text += t.text;
    }
    if (f.json) process.stdout.write(`${JSON.stringify({ sequences: seqs, stats: engine.stats() })}\n`);
    else {
      for (let i = 0; i < seqs.length; i++) {
        const body = model.tokenizer ? seqs[i].text : seqs[i].tokens.join(',');
        process.stdout.write(`[${i}] ${body}\n`);
      }
    }
  } finally {
    process.off('SIGINT', onSigint);
  }
}
