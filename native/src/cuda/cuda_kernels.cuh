// The device tier's kernels: zero-copy KV gather and bf16 GEMV. Per-thread bodies are __host__ __device__
// so their index arithmetic can be checked on a CPU (a loop over thread ids); launchers live in the .cu files.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace kvoff {

// ---- Loads: read-only (__ldg) for inputs reused across warps, streaming (__ldcs) for bytes read once ----

template <typename T>
__host__ __device__ __forceinline__ T load_ro(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldg(p);
#else
  return *p;
#endif
}

template <typename T>
__host__ __device__ __forceinline__ T load_stream(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldcs(p);
#else
  return *p;
#endif
}

// ---- Gather ----

constexpr int kGatherThreads = 256;
constexpr int kGatherIlp = 4;  // vectors each thread loads before it stores any: more bytes in flight over PCIe

struct GatherParams {
  const uint8_t* src;  // device view of the pinned host region: [regionRows, rowBytes]
  uint8_t* dst;        // device arena: [dstRows, rowBytes]
  const uint2* table;  // [units] (first source row, first destination row), in device memory
  uint32_t units;
  uint32_t unitBytes;  // unitRows * rowBytes: one contiguous run on both sides
  uint32_t rowBytes;
};

// The vectors of all units are numbered unit-major, so consecutive lanes read consecutive 16-byte
// pieces of one unit (coalesced); a block covers kGatherThreads * kGatherIlp consecutive vectors, and
// each thread first loads its table entries, then all its vectors, then stores, to keep many PCIe
// reads outstanding. V is the vector type (uint4 = 16 bytes when alignment allows).
template <typename V>
__host__ __device__ __forceinline__ void gather_thread(const GatherParams& p, uint32_t block, uint32_t thread, uint32_t threads) {
  const uint32_t vpu = p.unitBytes / sizeof(V);  // vectors per unit
  const uint32_t total = p.units * vpu;          // < 2^31, checked before launch
  const uint32_t base = block * threads * kGatherIlp + thread;
  uint2 entry[kGatherIlp];
  uint32_t piece[kGatherIlp];
  bool live[kGatherIlp];
#pragma unroll
  for (int k = 0; k < kGatherIlp; ++k) {
    const uint32_t g = base + static_cast<uint32_t>(k) * threads;
    live[k] = g < total;
    if (live[k]) {
      const uint32_t unit = g / vpu;
      piece[k] = g - unit * vpu;
      entry[k] = load_ro(p.table + unit);
    }
  }
  V v[kGatherIlp];
#pragma unroll
  for (int k = 0; k < kGatherIlp; ++k)
    if (live[k])
      v[k] = load_ro(reinterpret_cast<const V*>(p.src + static_cast<uint64_t>(entry[k].x) * p.rowBytes) + piece[k]);
#pragma unroll
  for (int k = 0; k < kGatherIlp; ++k)
    if (live[k]) reinterpret_cast<V*>(p.dst + static_cast<uint64_t>(entry[k].y) * p.rowBytes)[piece[k]] = v[k];
}

// Largest of 16, 8, 4, 2 bytes dividing the row length and both base addresses.
inline int gather_vec_bytes(uintptr_t src, uintptr_t dst, uint32_t rowBytes) {
  const uint64_t all = static_cast<uint64_t>(src) | static_cast<uint64_t>(dst) | rowBytes;
  for (int v = 16; v > 2; v /= 2)
    if (all % v == 0) return v;
  return 2;
}

cudaError_t launch_kv_gather(const GatherParams& p, int vecBytes, cudaStream_t stream);

// Builds a gather table on the device from device-resident positions (a top-k's output), so a prefetch
// needs no round trip through the host. Unit i = h * n + j: source row of position positions[h * ldPositions + j]
// of KV head h through blockTable; destination row h * dstCapacity + dstSlot + j. Positions and block ids
// out of range are clamped into the region (memory-safe; they come from kvoff's own kernels).
struct GatherTableParams {
  const int32_t* positions;   // [seqs * numKvHeads, ldPositions]
  const int32_t* blockTable;  // [seqs, tableLen] logical block -> physical block, a row per sequence
  uint2* table;               // [seqs * numKvHeads * n] out
  uint32_t n, ldPositions, numKvHeads, blockSize, tableLen, numBlocks, dstCapacity, dstSlot;
  uint32_t seqs;  // sequences sharing the host region, each with its block table and numKvHeads dst heads
};
cudaError_t launch_build_gather_table(const GatherTableParams& p, cudaStream_t stream);

// ---- GEMV ----

constexpr int kGemvThreads = 256;

__host__ __device__ __forceinline__ float bf16_lo(uint32_t w) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(w << 16);
#else
  union { uint32_t u; float f; } c{w << 16};
  return c.f;
#endif
}

__host__ __device__ __forceinline__ float bf16_hi(uint32_t w) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(w & 0xffff0000u);
#else
  union { uint32_t u; float f; } c{w & 0xffff0000u};
  return c.f;
#endif
}

// acc += 8 bf16 weights (one 16-byte chunk, element 0 in the low half of w.x) times 8 f32 inputs.
__host__ __device__ __forceinline__ float dot8(uint4 w, float4 a, float4 b, float acc) {
  acc = fmaf(bf16_lo(w.x), a.x, acc);
  acc = fmaf(bf16_hi(w.x), a.y, acc);
  acc = fmaf(bf16_lo(w.y), a.z, acc);
  acc = fmaf(bf16_hi(w.y), a.w, acc);
  acc = fmaf(bf16_lo(w.z), b.x, acc);
  acc = fmaf(bf16_hi(w.z), b.y, acc);
  acc = fmaf(bf16_lo(w.w), b.z, acc);
  acc = fmaf(bf16_hi(w.w), b.w, acc);
  return acc;
}

// One lane's partial sums for the R rows row0.. of a warp (fast path: cols % 8 == 0, W and x 16-byte
// aligned). Lane l reads 16-byte chunks l, l+32, ... of each row: a warp instruction covers 512
// contiguous bytes of a row. Each pass issues U * R independent 16-byte W loads per lane before any
// FMA, so enough bytes are in flight to keep HBM busy; x comes through the read-only cache (every warp
// reads all of it). Rows past the end are clamped to the last row (read, never written).
template <int R, int U>
__host__ __device__ __forceinline__ void gemv_lane(const uint16_t* w, const float* x, int rows, int cols, int64_t row0, int lane, float acc[R]) {
  const int chunks = cols >> 3;
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t row = row0 + r < rows ? row0 + r : rows - 1;
    wr[r] = reinterpret_cast<const uint4*>(w + row * static_cast<int64_t>(cols));
    acc[r] = 0.f;
  }
  const float4* x4 = reinterpret_cast<const float4*>(x);
  int c = lane;
  // Main passes: all U chunks in range, so the loads are unconditional and the compiler issues every
  // one of them before the first FMA.
  for (; c + 32 * (U - 1) < chunks; c += 32 * U) {
    uint4 wv[U][R];
    float4 xa[U], xb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = load_stream(wr[r] + c + 32 * u);
      xa[u] = load_ro(x4 + 2 * (c + 32 * u));
      xb[u] = load_ro(x4 + 2 * (c + 32 * u) + 1);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = dot8(wv[u][r], xa[u], xb[u], acc[r]);
  }
  // The rest of the row (fewer than 32 * U chunks), one chunk per lane at a time.
  for (; c < chunks; c += 32) {
    const float4 xa = load_ro(x4 + 2 * c), xb = load_ro(x4 + 2 * c + 1);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = dot8(load_stream(wr[r] + c), xa, xb, acc[r]);
  }
}

// Any shape and alignment: one warp per row, lanes stride over single elements.
__host__ __device__ __forceinline__ float gemv_lane_any(const uint16_t* w, const float* x, int cols, int64_t row, int lane) {
  const uint16_t* wr = w + row * static_cast<int64_t>(cols);
  float acc = 0.f;
  for (int k = lane; k < cols; k += 32) acc = fmaf(bf16_lo(load_ro(wr + k)), load_ro(x + k), acc);
  return acc;
}

cudaError_t launch_gemv_bf16(const uint16_t* w, const float* x, float* y, int rows, int cols, cudaStream_t stream);

}  // namespace kvoff
