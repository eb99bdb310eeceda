// The baseline policies of DESIGN.md §2 (eviction, merging, quantization, retrieval), one file each.
import type { PolicySpec } from '../engine/policies.js';

export const BASELINE_POLICIES: PolicySpec[] = [];
