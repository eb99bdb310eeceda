// C++ surface of the device tier's low-bit kernels (no CUDA types): the per-layer KIVI section layout, shared
// with src/kernels/device-lowbit-layout.ts, and the four launches. cuda_lowbit.cu implements the launches;
// cuda_lowbit_stub.cc answers "CUDA not built" for them when nvcc was absent.
#pragma once
#include <cstdint>

#include "cuda/cuda_device.h"

namespace kvoff {

// Sub-buffers start on this boundary inside a section, and sections are whole multiples of it, so a layer
// base that is 256-aligned makes every buffer 256-aligned (vector loads, full sectors).
constexpr uint64_t kLowBitAlign = 256;
constexpr uint64_t kLowBitMaxCapacity = uint64_t(1) << 26;  // tokens per (layer, KV head): 32-bit token math in kernels

// The fields of a layer's low-bit copy, checked by the N-API layer: bits 1/2/4, keyGroupSize 32/64, headDim
// 32/64/128/256, valueGroupSize a multiple of 8 dividing headDim.
struct LowBitShape {
  uint32_t numKvHeads = 0, headDim = 0, bits = 0, keyGroupSize = 0, valueGroupSize = 0;
  uint64_t capacityTokens = 0;
  bool keysOnly = false;
};

// Byte offsets of one KV head's section; section h of a layer starts at h * sectionBytes.
struct LowBitLayout {
  uint64_t keyCodes = 0;    // u8   [maxGroups, keyGroupSize, D*bits/8]
  uint64_t keyZero = 0;     // fp16 [maxGroups, D]
  uint64_t keyScale = 0;    // fp16 [maxGroups, D]
  uint64_t valueCodes = 0;  // u8   [capacity, D*bits/8]       (empty when keysOnly)
  uint64_t valueZero = 0;   // fp16 [capacity, D/valueGroupSize]
  uint64_t valueScale = 0;  // fp16 [capacity, D/valueGroupSize]
  uint64_t sectionBytes = 0;
  uint64_t layerBytes = 0;  // numKvHeads * sectionBytes
  uint64_t maxGroups = 0;   // floor(capacity / keyGroupSize)
  uint64_t rowBytes = 0;    // D*bits/8
};

// Computed exactly like deviceLowBitLayout() in TypeScript (the surface test compares the two).
inline LowBitLayout lowbit_layout(const LowBitShape& s) {
  LowBitLayout l;
  const uint64_t D = s.headDim;
  l.rowBytes = D * s.bits / 8;
  l.maxGroups = s.capacityTokens / s.keyGroupSize;
  uint64_t at = 0;
  auto take = [&at](uint64_t bytes) {
    const uint64_t start = at;
    at = (at + bytes + kLowBitAlign - 1) / kLowBitAlign * kLowBitAlign;
    return start;
  };
  l.keyCodes = take(l.maxGroups * s.keyGroupSize * l.rowBytes);
  l.keyZero = take(l.maxGroups * D * 2);
  l.keyScale = take(l.maxGroups * D * 2);
  const uint64_t valueTokens = s.keysOnly ? 0 : s.capacityTokens;
  l.valueCodes = take(valueTokens * l.rowBytes);
  l.valueZero = take(valueTokens * (D / s.valueGroupSize) * 2);
  l.valueScale = take(valueTokens * (D / s.valueGroupSize) * 2);
  l.sectionBytes = at;
  l.layerBytes = at * s.numKvHeads;
  return l;
}

// ---- cudaKiviQuantize: values of tokens [first, first+tokens), keys of the key groups wholly inside ----
struct KiviQuantizeCall {
  LowBitShape shape;
  LowBitLayout layout;
  DevRef kv;  // [numKvHeads, kvCapacity, 2 (K,V), headDim] f16/bf16
  bool bf16 = false;
  uint64_t kvCapacity = 0, kvFirstRow = 0;  // kv row of token `first`; token t is row kvFirstRow + t - first
  uint64_t first = 0, tokens = 0;
  uint64_t group0 = 0, groups = 0;  // key groups [group0, group0 + groups)
  DevRef lowBit;                    // the layer's copy: numKvHeads sections
  uint32_t stream = 0;
};
CudaStatus cuda_kivi_quantize(const KiviQuantizeCall& c);

// ---- cudaKiviScores: out[h, t] = mean over the G query heads of q_g . dequant(K_h)_t ----
struct KiviScoresCall {
  LowBitShape shape;
  LowBitLayout layout;
  DevRef lowBit;
  uint32_t groupSize = 1;  // G
  DevRef q;                // [numKvHeads * G, headDim] f32
  uint64_t numGroups = 0;  // key groups scored: tokens [0, numGroups * keyGroupSize)
  DevRef out;              // [numKvHeads, ldOut] f32
  uint64_t ldOut = 0;
  uint32_t stream = 0;
};
CudaStatus cuda_kivi_scores(const KiviScoresCall& c);

// ---- cudaTopK: per row, the k best of positions [first, first+n): best first, ties to the lower index, NaN last ----
constexpr uint32_t kTopKMaxN = 1u << 20;  // the position fits the 20 low bits of the select key
constexpr uint32_t kTopKMaxK = 4096;      // the winners sort in one block's shared memory
constexpr uint32_t kTopKMaxRowCounts = 256;  // rows of a call with per-row counts (they travel in the launch)
struct TopKCall {
  DevRef scores;  // [rows, ld] f32
  uint32_t rows = 0;
  uint64_t ld = 0;
  uint64_t first = 0;
  uint32_t n = 0, k = 0;
  const int32_t* counts = nullptr;  // optional [rows]: row r ranks positions [first, first + counts[r]), k <= counts[r] <= n
  DevRef out;  // [rows, k] int32 absolute positions
  bool hasMask = false;
  DevRef mask;  // u8 [rows, ld]
  uint32_t stream = 0;
};
CudaStatus cuda_topk(const TopKCall& c);

// ---- cudaKiviAttend: softmax attention over dequantized tokens [first, end) minus the excluded ones ----
constexpr uint32_t kAttendChunk = 512;  // tokens per flash-decoding chunk (one block per chunk and KV head)
constexpr uint32_t kAttendMaxG = 16;    // query heads per KV head over all rows (rows * G), held in registers

// Chunks are aligned to absolute multiples of kAttendChunk, so a range spans at most ceil(len / chunk) + 1.
inline uint64_t kivi_attend_chunks(uint64_t first, uint64_t end) {
  if (end <= first) return 0;
  return (end + kAttendChunk - 1) / kAttendChunk - first / kAttendChunk;
}
// Scratch: partial outputs [numKvHeads, chunks, rows * G, headDim] f32, then (max, sum) [numKvHeads, chunks, rows * G, 2] f32.
inline uint64_t kivi_attend_scratch_bytes(uint64_t numKvHeads, uint64_t G, uint64_t D, uint64_t chunks, uint64_t rows = 1) {
  return numKvHeads * chunks * rows * G * (D + 2) * 4;
}

struct KiviAttendCall {
  LowBitShape shape;
  LowBitLayout layout;
  DevRef lowBit;
  uint32_t groupSize = 1;
  uint32_t rows = 1;          // query rows sharing one pass over the codes; rows * G <= kAttendMaxG
  DevRef q;                   // row r at + r * qRowStride floats: [numKvHeads * G, headDim] f32
  uint64_t qRowStride = 0;    // floats
  float scale = 1.f;
  uint64_t first = 0, end = 0;
  bool hasExclude = false;
  DevRef exclude;  // u8 [numKvHeads, ldExclude]
  uint64_t ldExclude = 0;
  DevRef out;  // row r at + r * outRowStride floats: [numKvHeads * G, headDim] f32
  uint64_t outRowStride = 0;
  DevRef lse;  // [rows, numKvHeads * G] f32
  DevRef scratch;
  uint32_t stream = 0;
};
CudaStatus cuda_kivi_attend(const KiviAttendCall& c);

}  // namespace kvoff
