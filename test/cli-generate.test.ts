// `kvoff generate` as a user runs it: the built CLI in a child process, its JSON and logits file, and its errors.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTinyModel, type TinyModel } from './fixtures.js';

const run = promisify(execFile);
const CLI = join(import.meta.dirname, '..', 'dist', 'src', 'cli', 'main.js');

async function kvoff(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [CLI, ...args], { timeout: 60_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

let tiny: TinyModel;
let tmp: string;
beforeAll(async () => {
  tiny = await writeTinyModel({ vocab: 61, maxPos: 40 });
  tmp = await mkdtemp(join(tmpdir(), 'kvoff-cli-'));
});
afterAll(async () => {
  await rm(tiny.dir, { recursive: true, force: true });
  await rm(tmp, { recursive: true, force: true });
});

describe('kvoff generate', () => {
  it('the built bin is executable (npx kvoff runs it directly)', () => {
    expect(statSync(CLI).mode & 0o111).not.toBe(0);
  });

  it('--json prints {tokens, text, stats} and --logits-out writes [steps, vocab] float32', async () => {
    const out = join(tmp, 'logits.bin');
    const r = await kvoff(['generate', '--model', tiny.dir, '--prompt-tokens', '1,5,9,13', '--max-new-tokens', '5', '--json', '--logits-out', out, '--backend', 'cpu']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(Object.keys(j)).toEqual(['tokens', 'text', 'stats']);
    expect(j.tokens).toHaveLength(5);
    for (const key of ['prefillTokens', 'decodeTokens', 'bytesH2D', 'bytesD2H', 'hotHits', 'hotMisses', 'specUsed', 'specWasted', 'cpuAttnMs', 'deviceMs', 'copyMs', 'overlapRatio', 'deviceBytes', 'deviceBytesPeak', 'hostBytes', 'weightBytes'])
      expect(typeof j.stats[key]).toBe('number');
    const bytes = readFileSync(out);
    expect(bytes.byteLength).toBe(5 * 61 * 4);
    const logits = new Float32Array(bytes.buffer, bytes.byteOffset, 5 * 61);
    for (let s = 0; s < 5; s++) {
      const row = logits.subarray(s * 61, (s + 1) * 61);
      let arg = 0;
      for (let i = 1; i < 61; i++) if (row[i] > row[arg]) arg = i;
      expect(j.tokens[s]).toBe(arg); // greedy by default
    }
  });

  it.each([
    [['--prompt-tokens', '1,2', '--prompt', 'x'], /exactly one of --prompt, --prompt-file or --prompt-tokens/],
    [['--prompt-tokens', '1,x'], /comma-separated integer token ids/],
    [['--prompt-tokens', '1,61'], /Expected prompt token ids\[1\] in \[0, 60\] but received 61/],
    [['--prompt-tokens', Array(41).fill(3).join(',')], /Expected prompt length in tokens in \[1, 40\] but received 41/],
    [['--prompt-tokens', '1', '--max-new-tokens', '-2'], /--max-new-tokens/],
    [['--prompt-tokens', '1', '--policy', 'nope'], /one of "dense"/],
    [['--prompt-tokens', '1', '--vram-budget', '12 potatoes'], /Expected a byte size/],
    [['--prompt-tokens', '1', '--vram-budget', '100'], /smallest budget that works is \d+ bytes/],
    [['--prompt-tokens', '1', '--backend', 'tpu'], /Allowed choices are auto, cpu, cuda/],
    [['--prompt-tokens', '1', '--backend', 'cuda'], /Expected a usable backend for --backend but received "cuda"/],
    [['--prompt', 'hello'], /no tokenizer/],
  ])('fails clearly for %j', async (args, message) => {
    const r = await kvoff(['generate', '--model', tiny.dir, ...args]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/at .*\.js:\d+/); // a message, not a stack trace
  });

  it('--batch decodes the prompts of a .jsonl file together (the demo model), sharing their common prefix', async () => {
    const file = join(tmp, 'prompts.jsonl');
    const stem = 'The grass is green. The sky is blue. '.repeat(4);
    writeFileSync(file, [JSON.stringify(`${stem}Say a number:`), JSON.stringify({ prompt: `${stem}Say a word:` })].join('\n'));
    const r = await kvoff(['generate', '--prompt-file', file, '--batch', '3', '--max-new-tokens', '3', '--json', '--policy', 'exact', '--knobs', 'topK=8', '--backend', 'cpu']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.sequences).toHaveLength(3);
    for (const s of j.sequences) expect(s.tokens).toHaveLength(3);
    expect(j.sequences[2]).toEqual(j.sequences[0]); // the prompts are taken in turn: 0, 1, 0
    expect(j.stats.sharedPrefixTokens).toBeGreaterThan(2 * 140); // prompts 1 and 2 reuse prompt 0's blocks
    const text = await kvoff(['generate', '--prompt-file', file, '--batch', '2', '--max-new-tokens', '2', '--backend', 'cpu']);
    expect(text.stdout).toMatch(/^\[0\] .*\n\[1\] /s);
  }, 60_000);

  it.each([
    [['--prompt-tokens', '1', '--batch', '2'], /Expected a --prompt-file to read the prompts from for --batch/],
    [['--prompt-tokens', '1', '--batch', '0'], /Expected a positive integer for --batch but received "0"/],
    [['--prompt-tokens', '1', '--knobs', 'topK'], /Expected comma-separated name=number pairs/],
    [['--prompt-tokens', '1', '--knobs', 'topK=8'], /policy dense takes no knobs/],
  ])('batch and knob flags fail clearly for %j', async (args, message) => {
    const r = await kvoff(['generate', '--model', tiny.dir, ...args]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
  });

  it('a malformed .jsonl prompt file names its line', async () => {
    const file = join(tmp, 'bad.jsonl');
    writeFileSync(file, '"ok"\n{"text": 3}\n');
    const r = await kvoff(['generate', '--prompt-file', file, '--batch', '2', '--backend', 'cpu']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/bad\.jsonl line 2/);
  });

  it('fails clearly for a missing model dir, bad config JSON and an unsupported architecture', async () => {
    let r = await kvoff(['generate', '--model', join(tmp, 'nope'), '--prompt-tokens', '1']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/nope/);
    const bad = await mkdtemp(join(tmpdir(), 'kvoff-bad-'));
    writeFileSync(join(bad, 'config.json'), '{"architectures": ["LlamaForCausalLM",');
    r = await kvoff(['generate', '--model', bad, '--prompt-tokens', '1']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/config\.json.*JSON/);
    writeFileSync(join(bad, 'config.json'), JSON.stringify({ architectures: ['GPT2LMHeadModel'] }));
    r = await kvoff(['generate', '--model', bad, '--prompt-tokens', '1']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM.*GPT2LMHeadModel/);
    await rm(bad, { recursive: true, force: true });
  });

  it('leaves no half-written logits file when generation fails', async () => {
    const out = join(tmp, 'never.bin');
    const r = await kvoff(['generate', '--model', tiny.dir, '--prompt-tokens', '1,99', '--logits-out', out]);
    expect(r.code).not.toBe(0);
    expect(existsSync(out)).toBe(false);
  });

  it('--config applies a tuned.json and validates it', async () => {
    const cfg = join(tmp, 'tuned.json');
    writeFileSync(cfg, JSON.stringify({ version: 1, engine: { policy: 'dense', blockSize: 8 } }));
    let r = await kvoff(['generate', '--model', tiny.dir, '--prompt-tokens', '1,2', '--max-new-tokens', '2', '--config', cfg, '--json']);
    expect(r.code).toBe(0);
    writeFileSync(cfg, JSON.stringify({ version: 2, engine: {} }));
    r = await kvoff(['generate', '--model', tiny.dir, '--prompt-tokens', '1', '--config', cfg]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--config .*version/);
  });
});
