// The `tune` section of tuned.json (zod): what was tuned for, the measured constants, and the ranked predictions.
import { z } from 'zod';

const positive = z.number().finite().positive();
const nonNegative = z.number().finite().min(0);
const count = z.number().int().positive();

const ThreadRateSchema = z.object({ threads: count, attnGBs: positive, skipGBs: positive, dispatchMs: nonNegative }).strict();
const LowBitRateSchema = z.object({ scoreTokPerMs: positive, attendTokPerMs: positive }).strict();

export const CostConstantsSchema = z.object({
  backend: z.enum(['cpu', 'cuda']),
  deviceReadGBs: positive,
  linkGBs: positive,
  gatherGBs: positive,
  lowBit: z.object({ 1: LowBitRateSchema, 2: LowBitRateSchema, 4: LowBitRateSchema }).partial().strict(),
  cpu: z.array(ThreadRateSchema).min(1),
  denseLayerMs: nonNegative,
  denseRowMs: nonNegative,
  stepOverheadMs: nonNegative,
  missRate: z.number().min(0).max(1),
  residual: z.record(z.string(), z.object({ fixedMs: nonNegative, msPerKTokens: nonNegative, upToTokens: nonNegative.optional() }).strict()),
}).strict();

export const TunedCandidateSchema = z.object({
  policy: z.string().min(1),
  knobs: z.record(z.string(), z.number()),
  cpuThreads: count,
  deviceBytes: z.number().int().min(0),
  predictedMsPerStep: positive,
  limiter: z.enum(['copy', 'cpu', 'device']),
  measuredMsPerStep: positive.nullable(), // null: not among the confirmed
  measuredOverPredicted: positive.nullable(),
  measuredMissesPerHead: nonNegative.nullable(), // hot-set units fetched per (sequence, layer, KV head) per step
}).strict();

export const TuneSectionSchema = z.object({
  context: count,
  batch: count,
  shape: z.string().nullable(), // --shape, or null
  model: z.string().nullable(), // --model directory, "demo", or null with --shape
  vramBudget: z.string(), // as given: bytes or a percentage of the run's full KV
  budgetBytes: z.number().int().min(0),
  constants: CostConstantsSchema,
  sources: z.record(z.string(), z.string()),
  predictedMsPerStep: positive,
  measuredMsPerStep: positive.nullable(), // null with --confirm 0, or when no confirmation run could run
  confirmSteps: z.number().int().min(0),
  candidates: z.array(TunedCandidateSchema).min(1),
  tunedAt: z.string(),
}).strict();

export type TunedCandidate = z.infer<typeof TunedCandidateSchema>;
export type TuneSection = z.infer<typeof TuneSectionSchema>;
