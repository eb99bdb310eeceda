#!/usr/bin/env node
// The `kvoff` command line: parses flags with commander and hands off to one module per command.
import { Command, InvalidArgumentError, Option } from 'commander';
import { POLICIES } from '../engine/options.js';
import { native } from '../native.js';
import { attentionBandwidth, memcpyBandwidth, runSelfCheck } from '../selfcheck.js';
import { runGenerate, type GenerateFlags } from './generate.js';
import { runEvalCommand, type EvalFlags } from './eval.js';
import { runBench, type BenchFlags } from './bench.js';
import { SHAPE_NAMES } from '../model/shapes.js';
import { runDoctor, type DoctorFlags } from './doctor.js';
import { DEFAULT_TUNE_POLICIES, runTune, type TuneFlags } from './tune.js';

const program = new Command();
program.name('kvoff').description('Long-context LLM generation with the KV cache offloaded to host memory.').showHelpAfterError();

function backendOption(): Option {
  return new Option('--backend <backend>', 'compute backend').choices(['auto', 'cpu', 'cuda']).default('auto');
}

function positiveInt(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError(`Expected a positive integer for ${flag} but received "${value}".`);
    return n;
  };
}

program
  .command('selfcheck')
  .description('check every native kernel against its TypeScript reference, and time CPU attention')
  .addOption(backendOption())
  .option('--tokens <n>', 'context length for the attention timing', positiveInt('--tokens'), 32768)
  .option('--json', 'print one JSON object')
  .action((opts: { backend: string; tokens: number; json?: boolean }) => {
    if (opts.backend === 'cuda' && native().buildInfo().cuda.deviceCount === 0) {
      console.error(`kvoff: --backend cuda was asked for but no GPU is usable: ${native().buildInfo().cuda.reason}`);
      process.exit(2);
    }
    const info = native().buildInfo();
    const rows = runSelfCheck();
    const bw = attentionBandwidth(opts.tokens);
    const memcpy = memcpyBandwidth();
    const ok = rows.every((r) => r.ok);
    if (opts.json) {
      console.log(JSON.stringify({ ok, simd: info.simd, cuda: info.cuda, checks: rows, attention: { tokens: opts.tokens, ...bw, memcpyGbPerS: memcpy, ratioToMemcpy: bw.gbPerS / memcpy } }));
    } else {
      console.log(`kvoff selfcheck — SIMD ${info.simd}; CUDA ${info.cuda.built ? 'built' : 'not built'}, ${info.cuda.deviceCount} GPU(s)${info.cuda.reason ? ` (${info.cuda.reason})` : ''}`);
      console.table(rows.map((r) => ({ kernel: r.kernel, shape: r.shape, 'max error': r.maxError.toExponential(2), ok: r.ok ? 'yes' : 'NO' })));
      console.log(`CPU attention, 1 thread, ${opts.tokens} tokens x 8 KV heads (D128, GQA 4, bf16): ${bw.ms.toFixed(2)} ms, KV read at ${bw.gbPerS.toFixed(1)} GB/s = ${((100 * bw.gbPerS) / memcpy).toFixed(0)}% of 1-thread memcpy (${memcpy.toFixed(1)} GB/s, same run)`);
      console.log(ok ? 'all kernels match their references' : 'SOME KERNELS DIFFER FROM THEIR REFERENCES');
    }
    process.exitCode = ok ? 0 : 1;
  });

function nonNegativeInt(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`Expected an integer >= 0 for ${flag} but received "${value}".`);
    return n;
  };
}

function finiteNumber(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`Expected a number for ${flag} but received "${value}".`);
    return n;
  };
}

program
  .command('generate')
  .description('generate text from a prompt (the embedded demo model unless --model is given)')
  .option('--model <dir>', 'Hugging Face model directory (config.json, *.safetensors, tokenizer.json)')
  .option('--prompt <text>', 'prompt text')
  .option('--prompt-file <file>', 'read the prompt text from a file')
  .option('--prompt-tokens <ids>', 'prompt as comma-separated token ids (no tokenizer needed)')
  .option('--max-new-tokens <n>', 'tokens to generate', nonNegativeInt('--max-new-tokens'), 64)
  .option('--policy <policy>', `KV policy: ${POLICIES.join(', ')} (see DESIGN.md section 2)`)
  .option('--vram-budget <bytes>', 'cap on the KV device tier: 2GiB, 160KiB, a byte count, or a share of the run\'s full KV like 10%')
  .addOption(backendOption())
  .option('--config <file>', 'engine settings from a tuned.json (kvoff tune)')
  .option('--json', 'print one JSON object: {tokens, text, stats}')
  .option('--logits-out <file>', 'write raw little-endian float32 logits of every step, [steps, vocab]')
  .option('--temperature <t>', 'sampling temperature; 0 is greedy', finiteNumber('--temperature'), 0)
  .option('--top-k <k>', 'sample among the k most likely tokens (0: all)', nonNegativeInt('--top-k'), 0)
  .option('--top-p <p>', 'nucleus sampling mass', finiteNumber('--top-p'), 1)
  .option('--seed <n>', 'sampling seed', nonNegativeInt('--seed'), 0)
  .option('--cpu-threads <n>', 'CPU attention worker threads', positiveInt('--cpu-threads'))
  .option('--batch <n>', 'decode N sequences together; prompts from --prompt-file (.jsonl: one per line; else the file N times)', positiveInt('--batch'))
  .option('--knobs <list>', 'policy knobs, e.g. topK=32,bits=2 (each policy lists its own)')
  .action(async (opts: GenerateFlags) => {
    await runGenerate(opts);
  });

program
  .command('eval')
  .description('retrieval accuracy (passkey, multikey) per policy and context length, with 95% intervals')
  .option('--model <dir>', 'model directory (default: the embedded demo model)')
  .option('--task <task>', 'passkey, multikey, or both comma-separated', 'passkey')
  .requiredOption('--context <list>', 'context lengths in tokens, e.g. 2048,8192')
  .option('--policies <list>', 'comma-separated policies', 'dense')
  .option('--budget <size>', 'KV device budget: bytes (2GiB) or a percentage of the full KV of the run (10%)')
  .option('--trials <n>', 'trials per cell', positiveInt('--trials'), 20)
  .option('--seed <n>', 'trial seed', nonNegativeInt('--seed'), 0)
  .option('--json', 'print {"results": [...]}')
  .addOption(backendOption())
  .option('--cpu-threads <n>', 'CPU attention worker threads', positiveInt('--cpu-threads'))
  .action(async (opts: EvalFlags) => {
    await runEvalCommand(opts);
  });

program
  .command('doctor')
  .description('report the backend, GPU, driver, pinned-memory limit, measured H2D/D2H and memcpy GB/s, and CPU features')
  .addOption(backendOption())
  .option('--json', 'print one JSON object')
  .option('--quick', 'small, fast measurements (noisier numbers)')
  .action(async (opts: DoctorFlags) => {
    await runDoctor(opts);
  });

program
  .command('bench')
  .description('decode and prefill throughput per policy, context, batch and VRAM budget, next to the bound from bytes moved')
  .option('--model <dir>', 'model directory (default: the embedded demo model)')
  .option('--shape <name>', `random bf16 weights of a known shape: ${SHAPE_NAMES.join(', ')}`)
  .requiredOption('--context <list>', 'context lengths in tokens, e.g. 32768,131072')
  .option('--batch <list>', 'batch sizes, e.g. 1,8', '1')
  .option('--policies <list>', 'comma-separated policies', 'dense')
  .option('--vram-budget <list>', 'KV device budgets: bytes (1.6GiB), a percentage of the run\'s full KV (10%) or none; comma-separated')
  .option('--config <file>', 'engine settings from a tuned.json (kvoff tune); policy and budget come from the flags')
  .option('--out <file>', 'write {"machine", "runs"} as JSON')
  .option('--plot <file.svg>', 'write decode tok/s against context as an SVG (needs vega and vega-lite)')
  .option('--steps <n>', 'decode steps timed per run', positiveInt('--steps'), 16)
  .option('--seed <n>', 'seed of the synthetic prompts', nonNegativeInt('--seed'), 0)
  .option('--json', 'print {"machine", "runs"} instead of the table')
  .addOption(backendOption())
  .option('--cpu-threads <n>', 'CPU attention worker threads', positiveInt('--cpu-threads'))
  .action(async (opts: BenchFlags) => {
    await runBench(opts);
  });

program
  .command('tune')
  .description('measure this machine, predict each policy\'s decode step under a VRAM budget, confirm the best by running them, and write tuned.json')
  .option('--model <dir>', 'model directory (default: the embedded demo model)')
  .option('--shape <name>', `random bf16 weights of a known shape: ${SHAPE_NAMES.join(', ')}`)
  .requiredOption('--context <n>', 'context length in tokens', positiveInt('--context'))
  .option('--batch <n>', 'sequences decoded together', positiveInt('--batch'), 1)
  .requiredOption('--vram-budget <size>', 'KV device budget: bytes (1.6GiB) or a percentage of the run\'s full KV (10%)')
  .option('--out <file>', 'where to write the tuned config', 'tuned.json')
  .option('--confirm <k>', 'run the best K settings (of distinct policies) to compare predicted with measured', nonNegativeInt('--confirm'), 3)
  .option('--policies <list>', `comma-separated policies to consider (default: ${DEFAULT_TUNE_POLICIES.join(',')})`)
  .option('--quick', 'small, fast measurements and short confirmation runs (noisier numbers)')
  .option('--json', 'print the tuned config as one JSON object')
  .addOption(backendOption())
  .action(async (opts: TuneFlags) => {
    await runTune(opts);
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  console.error(`kvoff: ${(err as Error).message}`);
  process.exit(1);
});
