// The baseline policies of DESIGN.md §2 (eviction, merging, quantization, retrieval), one file each.
import type { PolicySpec } from '../engine/policies.js';
import { kiviPolicy } from './kivi.js';
import { questPolicy } from './quest.js';
import { sparqPolicy } from './sparq.js';
import { kvmergerPolicy } from './kvmerger.js';
import { streamingPolicy } from './streaming.js';
import { h2oPolicy } from './h2o.js';
import { tovaPolicy } from './tova.js';
import { snapkvPolicy } from './snapkv.js';
import { pyramidPolicy } from './pyramid.js';
import { fastgenPolicy } from './fastgen.js';
import { infinigenPolicy } from './infinigen.js';

export const BASELINE_POLICIES: PolicySpec[] = [
  kiviPolicy,
  questPolicy,
  sparqPolicy,
  kvmergerPolicy,
  streamingPolicy,
  h2oPolicy,
  tovaPolicy,
  snapkvPolicy,
  pyramidPolicy,
  fastgenPolicy,
  infinigenPolicy,
];
