// The attention kernels' C++ surface (no CUDA types): KV writes into device and pinned host KV, split-K decode
// attention, LSE merge and tiled prefill attention over device-resident KV rows, addressed by DevRef.
// cuda_attention.cu implements it; cuda_attention_stub.cc answers "CUDA not built" when nvcc was absent.
#pragma once
#include <cstdint>
#include <memory>

#include "arena.h"
#include "cuda/cuda_device.h"
#include "half.h"

namespace kvoff {

// A device KV region of one layer is [numKvHeads, capacity, 2 (K, V), headDim] 16-bit: each head owns
// `capacity` rows, a row being the K vector then the V vector of one token (cudaKvGather's dstSlots layout).

// Kernel parameters carry small per-call tables by value (no staging copy, nothing to race on between
// streams, and CUDA-graph capturable); these bound them.
constexpr int kAttendMaxHeads = 256;     // numKvHeads of cudaAttendDecode (its counts travel in the launch)
constexpr int kAttendMaxHeadDim = 256;   // headDim of the attention kernels (register and shared tiles are sized for it)
constexpr int kStoreBlocksPerLaunch = 512;  // logical blocks of cudaKvStoreHost per launch (more: several launches)
constexpr int kBatchMaxSeqs = 64;           // sequences of one batched cudaKvWrite / cudaKvStoreHost (one token each)

// ---- Split-K decode: the chunk policy, shared with the N-API layer so scratch is checked before any launch ----

// Every call is cut into about kAttendTargetCtas (KV head, chunk) work items: with 8 KV heads at 131072 rows
// that is 256 chunks of 512 rows per head, several waves of CTAs on a 132-SM H100, and the partials it
// writes (G * (headDim + 2) floats per chunk) stay near 1% of the KV bytes read.
constexpr int64_t kAttendTargetCtas = 2048;
constexpr int64_t kAttendChunkQuantum = 64;  // chunk rows are a multiple of this (and at least this)

// Rows per chunk for a call whose longest head attends maxCount rows.
inline int64_t attend_chunk_rows(int64_t numKvHeads, int64_t maxCount) {
  const int64_t per = (maxCount * numKvHeads + kAttendTargetCtas - 1) / kAttendTargetCtas;
  const int64_t rows = (per + kAttendChunkQuantum - 1) / kAttendChunkQuantum * kAttendChunkQuantum;
  return rows < kAttendChunkQuantum ? kAttendChunkQuantum : rows;
}

// Chunks per head of such a call. Never more than attend_chunk_bound(numKvHeads, maxCount), which grows with
// maxCount: scratch sized for maxRows therefore fits every call whose counts stay at or below maxRows.
inline int64_t attend_chunks(int64_t numKvHeads, int64_t maxCount) {
  const int64_t c = attend_chunk_rows(numKvHeads, maxCount);
  return (maxCount + c - 1) / c;
}
inline int64_t attend_chunk_bound(int64_t numKvHeads, int64_t maxRows) {
  const int64_t byRows = (maxRows + kAttendChunkQuantum - 1) / kAttendChunkQuantum;
  const int64_t byCtas = (kAttendTargetCtas + numKvHeads - 1) / numKvHeads;
  return byRows < byCtas ? byRows : byCtas;
}

// Scratch of a decode call with `chunks` chunks per head: partial (unnormalised) outputs
// [numKvHeads, chunks, G, headDim] f32, then running maxima and sums [numKvHeads, chunks, G] f32 each.
// One chunk per head needs none: the kernel then writes out and lse directly.
inline uint64_t attend_scratch_bytes_for(int64_t numKvHeads, int64_t groupSize, int64_t headDim, int64_t chunks) {
  if (chunks <= 1) return 0;
  return static_cast<uint64_t>(numKvHeads) * static_cast<uint64_t>(chunks) * static_cast<uint64_t>(groupSize) *
         static_cast<uint64_t>(headDim + 2) * 4u;
}
// What cudaAttendScratchBytes reports: enough for every call with counts <= maxRows.
inline uint64_t attend_scratch_bytes(int64_t numKvHeads, int64_t groupSize, int64_t headDim, int64_t maxRows) {
  return attend_scratch_bytes_for(numKvHeads, groupSize, headDim, attend_chunk_bound(numKvHeads, maxRows));
}

// ---- Calls (every range, alignment and overlap is checked by the caller before these run) ----

// k, v: f32 [tokens, numKvHeads, headDim], token t at t * srcRowStride floats. Rounded to nearest even, as kvAppend.
struct KvWriteCall {
  DevRef k, v;
  uint64_t srcRowStride = 0;  // floats
  uint32_t tokens = 0, numKvHeads = 0, headDim = 0;
  KvDtype dtype = KvDtype::F16;
  DevRef dst;  // [numKvHeads, capacity, 2, headDim] 16-bit; batched: [tokens, numKvHeads, capacity, 2, headDim]
  uint32_t capacity = 0, slot = 0;
  // Batched (a token per sequence, tokens <= kBatchMaxSeqs): token t is sequence t's and lands in slot slots[t] of
  // its own region, the t-th of dst; slot is then unused.
  const int32_t* slots = nullptr;
  uint32_t stream = 0;
};
CudaStatus cuda_kv_write(const KvWriteCall& call);

// The same rows into the pinned, mapped host paged region [numBlocks, numKvHeads, blockSize, 2, headDim]:
// token t lands at position start + t of the sequence whose block table is blockIds.
struct KvStoreHostCall {
  DevRef k, v;
  uint64_t srcRowStride = 0;
  uint32_t tokens = 0, numKvHeads = 0, headDim = 0;
  KvDtype dtype = KvDtype::F16;
  std::shared_ptr<Arena> host;  // registered with cudaHostRegister(Mapped)
  uint64_t regionOffset = 0;
  uint32_t blockSize = 0;
  const int32_t* blockIds = nullptr;  // the block table; entries [start / blockSize, (start + tokens - 1) / blockSize] are used
  uint32_t start = 0;
  // Batched (a token per sequence, tokens <= kBatchMaxSeqs): token t lands at row offsets[t] of block blocks[t]
  // (its sequence's block of its position); blockIds and start are then unused.
  const int32_t* blocks = nullptr;
  const int32_t* offsets = nullptr;
  uint32_t stream = 0;
};
CudaStatus cuda_kv_store_host(const KvStoreHostCall& call);

// Query group g of KV head h (row h * G + g of q, out, lse) attends rows [0, counts[h]) of head h.
// A batch of sequences, each with its own region, is numKvHeads = seqs * (heads a sequence): seq-major regions
// one after another, and each sequence's queries qSeqStride floats after the last's.
struct AttendDecodeCall {
  DevRef kv;  // [numKvHeads, capacity, 2, headDim] 16-bit
  uint32_t capacity = 0, numKvHeads = 0, headDim = 0, groupSize = 0;
  KvDtype dtype = KvDtype::F16;
  const int32_t* counts = nullptr;  // [numKvHeads], each in [0, capacity]
  uint32_t seqHeads = 0;            // KV heads per sequence (divides numKvHeads); 0: one sequence
  uint64_t qSeqStride = 0;          // floats between sequences' queries
  DevRef q;                         // [numKvHeads * G, headDim] f32 (batched: per sequence, [seqHeads * G, headDim])
  float scale = 1.f;
  DevRef out;      // [numKvHeads * G, headDim] f32
  DevRef lse;      // [numKvHeads * G] f32, natural log
  DevRef scratch;  // attend_scratch_bytes_for(..., attend_chunks(numKvHeads, max counts)) bytes, 16-byte aligned
  uint32_t stream = 0;
};
CudaStatus cuda_attend_decode(const AttendDecodeCall& call);

// out = (e^(lseA-m) oA + e^(lseB-m) oB) / (e^(lseA-m) + e^(lseB-m)); out may be oA or oB, lseOut lseA or lseB.
struct LseMergeCall {
  uint32_t rows = 0, headDim = 0;
  DevRef oA, lseA, oB, lseB, out, lseOut;  // o*: [rows, headDim] f32; lse*: [rows] f32
  uint32_t stream = 0;
};
CudaStatus cuda_lse_merge(const LseMergeCall& call);

// Causal prefill: query t (of T, at position start + t) attends rows [0, start + t] of its KV head.
struct AttendPrefillCall {
  DevRef q;                 // [T, numKvHeads * G, headDim] f32, token t at t * qRowStride floats
  uint64_t qRowStride = 0;  // floats
  uint32_t T = 0, start = 0;
  DevRef kv;  // [numKvHeads, capacity, 2, headDim] 16-bit, start + T <= capacity
  uint32_t capacity = 0, numKvHeads = 0, headDim = 0, groupSize = 0;
  KvDtype dtype = KvDtype::F16;
  float scale = 1.f;
  DevRef out;  // [T, numKvHeads * G, headDim] f32
  DevRef lse;  // [T, numKvHeads * G] f32
  uint32_t stream = 0;
  bool tensorCores = true;  // the mma kernel where the head_dim allows; false forces the f32 kernel
};
CudaStatus cuda_attend_prefill(const AttendPrefillCall& call);

}  // namespace kvoff
