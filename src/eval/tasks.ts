// Retrieval tasks of the demo model (passkey, multikey): prompts built exactly as src/demo-model/tasks.json says,
// byte for byte what train.py builds, from a seeded RNG.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { seededRandom } from '../engine/sampling.js';
import { KvoffArgumentError } from '../errors.js';
import { demoModelDir } from '../model/model.js';

const TasksSchema = z.object({
  version: z.literal(1),
  tokens: z.object({ bos_id: z.number().int(), eos_id: z.number().int(), prepend_bos: z.boolean() }),
  answer_reserve: z.number().int().min(0),
  max_new_tokens: z.number().int().min(1),
  answer_terminator: z.string(),
  passkey: z.object({
    prefix: z.string(), filler: z.string(), needle: z.string(), question: z.string(),
    value_charset: z.string().min(1), value_len: z.number().int().min(1),
  }),
  multikey: z.object({
    prefix: z.string(), pair: z.string(), question: z.string(),
    key_charset: z.string().min(1), key_len: z.number().int().min(1), value_charset: z.string().min(1), value_len: z.number().int().min(1),
  }),
});
export type TaskSpec = z.infer<typeof TasksSchema>;
export const TASKS = ['passkey', 'multikey'] as const;
export type TaskName = (typeof TASKS)[number];

export function loadTaskSpec(dir = demoModelDir()): TaskSpec {
  return TasksSchema.parse(JSON.parse(readFileSync(join(dir, 'tasks.json'), 'utf8')));
}

export interface TaskInstance {
  prompt: string; // without <|bos|>: the engine prepends it from config.bos_token_id
  answer: string; // the expected value, without the terminator
  depth: number; // passkey: filler lines before the needle; multikey: index of the asked key
}

const fill = (template: string, vars: Record<string, string>) => template.replace(/\{(\w+)\}/g, (_, k: string) => vars[k] ?? '');

function draw(random: () => number, charset: string, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += charset[Math.floor(random() * charset.length)];
  return s;
}

/** One prompt of `context` tokens at most (bytes + <|bos|> + the answer reserve), as tasks.json lays it out. */
export function makeInstance(spec: TaskSpec, task: TaskName, context: number, random: () => number): TaskInstance {
  const bos = spec.tokens.prepend_bos ? 1 : 0;
  const budget = context - spec.answer_reserve - bos;
  if (task === 'passkey') {
    const p = spec.passkey;
    const value = draw(random, p.value_charset, p.value_len);
    const needle = fill(p.needle, { value });
    const n = Math.floor((budget - p.prefix.length - needle.length - p.question.length) / p.filler.length);
    if (n < 0) throw new KvoffArgumentError('context', `at least ${context - budget + p.prefix.length + needle.length + p.question.length} tokens for passkey`, context);
    const k = Math.floor(random() * (n + 1));
    return { prompt: p.prefix + p.filler.repeat(k) + needle + p.filler.repeat(n - k) + p.question, answer: value, depth: k };
  }
  const m = spec.multikey;
  const pairLen = fill(m.pair, { key: 'k'.repeat(m.key_len), value: 'v'.repeat(m.value_len) }).length;
  const questionLen = fill(m.question, { key: 'k'.repeat(m.key_len) }).length;
  const n = Math.floor((budget - m.prefix.length - questionLen) / pairLen);
  if (n < 1) throw new KvoffArgumentError('context', `at least ${context - budget + m.prefix.length + questionLen + pairLen} tokens for multikey`, context);
  const keys = new Set<string>();
  while (keys.size < n) keys.add(draw(random, m.key_charset, m.key_len));
  const ks = [...keys];
  const vs = ks.map(() => draw(random, m.value_charset, m.value_len));
  const q = Math.floor(random() * n);
  const pairs = ks.map((key, i) => fill(m.pair, { key, value: vs[i] })).join('');
  return { prompt: m.prefix + pairs + fill(m.question, { key: ks[q] }), answer: vs[q], depth: q };
}

/** Trial i of (task, context, seed) is always the same prompt, whatever else runs. */
export function trialInstance(spec: TaskSpec, task: TaskName, context: number, seed: number, trial: number): TaskInstance {
  const random = seededRandom((seed * 1_000_003 + context * 7919 + trial * 104_729 + (task === 'passkey' ? 1 : 2)) >>> 0);
  return makeInstance(spec, task, context, random);
}

/** The scoring rule of tasks.json: the text before the terminator (or EOS) must equal the answer. */
export function scoreAnswer(spec: TaskSpec, generated: string, answer: string): boolean {
  const cut = generated.indexOf(spec.answer_terminator);
  return (cut >= 0 ? generated.slice(0, cut) : generated) === answer;
}
