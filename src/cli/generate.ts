// `kvoff generate`: one prompt in, streamed tokens out; --json for {tokens, text, stats}, --logits-out for raw logits.
import { readFileSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { createEngine } from '../engine/engine.js';
import type { EngineOptions } from '../engine/options.js';
import { KvoffArgumentError } from '../errors.js';
import { loadModel, type BackendName } from '../model/model.js';
import { readConfigFile } from './config-file.js';
import { batchPrompts, runBatch } from './generate-batch.js';
import { createProgress } from './progress.js';

export interface GenerateFlags {
  model?: string;
  prompt?: string;
  promptFile?: string;
  promptTokens?: string;
  maxNewTokens: number;
  policy?: string;
  vramBudget?: string;
  backend: BackendName;
  config?: string;
  json?: boolean;
  logitsOut?: string;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  cpuThreads?: number;
  batch?: number;
  knobs?: string;
}

/** --knobs topK=32,bits=2: policy knobs as numbers (the policy's zod schema checks names and ranges). */
export function parseKnobs(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const part of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^([A-Za-z][A-Za-z0-9]*)=(-?\d+(?:\.\d+)?(?:e-?\d+)?)$/.exec(part);
    if (!m) throw new KvoffArgumentError('--knobs', 'comma-separated name=number pairs like topK=32,bits=2', text);
    out[m[1]] = Number(m[2]);
  }
  return out;
}

export function parseTokenList(text: string): number[] {
  const parts = text.split(',').map((s) => s.trim());
  const ids = parts.map(Number);
  const bad = parts.findIndex((p, i) => p === '' || !Number.isSafeInteger(ids[i]));
  if (bad >= 0) throw new KvoffArgumentError('--prompt-tokens', 'comma-separated integer token ids like 1,2,3', text);
  return ids;
}

function readPrompt(f: GenerateFlags): string | number[] {
  const given = [f.prompt !== undefined, f.promptFile !== undefined, f.promptTokens !== undefined].filter(Boolean).length;
  if (given !== 1) {
    throw new KvoffArgumentError('the prompt', 'exactly one of --prompt, --prompt-file or --prompt-tokens', given === 0 ? 'none' : `${given} of them`);
  }
  if (f.promptTokens !== undefined) return parseTokenList(f.promptTokens);
  if (f.promptFile !== undefined) {
    try {
      return readFileSync(f.promptFile, 'utf8');
    } catch (err) {
      throw new KvoffArgumentError('--prompt-file', 'a readable text file', `${f.promptFile} (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
    }
  }
  return f.prompt as string;
}

/** Writes logits rows to `path` only if generation finishes: a temp file renamed at the end. */
async function logitsSink(path: string | undefined) {
  if (!path) return { write: async (_: Float32Array) => {}, commit: async () => {}, abandon: async () => {} };
  const tmp = `${path}.partial-${process.pid}`;
  const fh = await open(tmp, 'w');
  return {
    write: async (row: Float32Array) => {
      await fh.write(new Uint8Array(row.buffer, row.byteOffset, row.byteLength)); // little-endian on every supported host
    },
    commit: async () => {
      await fh.close();
      await rename(tmp, path);
    },
    abandon: async () => {
      await fh.close().catch(() => {});
      await rm(tmp, { force: true });
    },
  };
}

export async function runGenerate(f: GenerateFlags): Promise<void> {
  const prompt = readPrompt(f);
  const fromFile = f.config ? readConfigFile(f.config) : {};
  const engineOpts: EngineOptions = { ...fromFile };
  if (f.policy !== undefined) engineOpts.policy = f.policy;
  if (f.vramBudget !== undefined) engineOpts.vramBudget = f.vramBudget;
  if (f.cpuThreads !== undefined) engineOpts.cpuThreads = f.cpuThreads;
  if (f.knobs !== undefined) Object.assign(engineOpts, parseKnobs(f.knobs));
  if (f.batch !== undefined && f.promptFile === undefined) throw new KvoffArgumentError('--batch', 'a --prompt-file to read the prompts from', 'no --prompt-file');
  const progress = createProgress(!f.json);
  const model = await loadModel(f.model, { backend: f.backend, onProgress: (s, d, t) => progress.update(`loading ${s}`, d, t) });
  progress.stop();
  let engine;
  try {
    engine = await createEngine(model, engineOpts);
  } catch (err) {
    await model.dispose();
    throw err;
  }
  if (f.batch !== undefined) {
    try {
      await runBatch(engine, model, batchPrompts(f.promptFile!, prompt as string, f.batch), f, progress);
    } finally {
      progress.stop();
      await engine.dispose();
      await model.dispose();
    }
    return;
  }
  const sink = await logitsSink(f.logitsOut);
  const tokens: number[] = [];
  let text = '';
  const ac = new AbortController();
  const onSigint = () => ac.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  try {
    const stream = engine.generate(prompt, {
      maxNewTokens: f.maxNewTokens, temperature: f.temperature, topK: f.topK, topP: f.topP, seed: f.seed, signal: ac.signal,
      onPrefill: (d, t) => progress.update('prefill', d, t),
    });
    for await (const t of stream) {
      progress.stop();
      tokens.push(t.token);
      text += t.text;
      await sink.write(t.logits);
      if (!f.json) process.stdout.write(model.tokenizer ? t.text : `${tokens.length > 1 ? ',' : ''}${t.token}`);
    }
    await sink.commit();
    if (f.json) process.stdout.write(`${JSON.stringify({ tokens, text, stats: engine.stats() })}\n`);
    else process.stdout.write('\n');
  } catch (err) {
    await sink.abandon();
    throw err;
  } finally {
    process.off('SIGINT', onSigint);
    progress.stop();
    await engine.dispose();
    await model.dispose();
  }
}
