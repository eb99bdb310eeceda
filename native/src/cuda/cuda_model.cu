// Model-side CUDA kernels and their host calls: staged upload/download through pinned slots, random fill,
// embedding, RMSNorm, RoPE, SwiGLU, add and argmax (the bf16 GEMM lives in cuda_model_gemm.cu). Every
// call resolves its handles, launches on the stream and keeps the arenas it touches alive (hold).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <vector>

#include "cuda/cuda_api.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_kernels.cuh"
#include "cuda/cuda_model.h"

namespace kvoff {

cudaError_t launch_gemm_bf16(const uint16_t* w, const float* x, float* y, int m, int n, int k, bool accumulate, cudaStream_t stream);

namespace {

using namespace cudadev;

// ---- Pinned staging slots ----
//
// Uploads copy JS memory into a slot and DMA from there: the JS buffer is free once the call returns, and
// the copy is truly asynchronous. (cudaMemcpyAsync from pageable memory is documented only as "might be
// synchronous": it may wait for the stream and gives no clear promise about when the source is read.)
// A slot is reused once the event recorded after its last use has completed; a download's slot is also
// `held` until the JS thread has copied the result out.

struct Slot {
  uint8_t* host = nullptr;  // cudaHostAlloc(Mapped): embedding ids are read by the kernel through `dev`
  uint8_t* dev = nullptr;   // the device's address of `host`
  size_t cap = 0;
  cudaEvent_t done = nullptr;  // recorded after the copy or kernel that reads/writes the slot
  bool busy = false;           // between acquire and that record
  bool held = false;           // a download not yet copied out by the JS thread (or abandoned after a failure)
};

constexpr size_t kMaxSlots = 32;
constexpr size_t kPiece = size_t(8) << 20;  // upload piece: large enough to reach PCIe speed, small enough to cache
std::mutex g_slot_mu;
std::vector<std::unique_ptr<Slot>> g_slots;

bool slot_idle(Slot& s) {
  if (s.busy || s.held) return false;
  if (!s.done) return true;
  const cudaError_t e = cudaEventQuery(s.done);
  if (e == cudaSuccess) return true;
  if (e != cudaErrorNotReady) cudaGetLastError();
  return false;
}

// (Re)allocates an idle slot. Only at warm-up or growth: cudaFreeHost waits for the device.
CudaStatus slot_grow(Slot& s, size_t need) {
  if (s.host) cudaFreeHost(s.host);
  s.host = s.dev = nullptr;
  s.cap = 0;
  size_t cap = 4096;
  while (cap < need) cap *= 2;
  void* p = nullptr;
  cudaError_t err = cudaHostAlloc(&p, cap, cudaHostAllocMapped | cudaHostAllocPortable);
  if (err != cudaSuccess) return failed("cudaHostAlloc of " + std::to_string(cap) + " bytes for a staging slot", err);
  s.host = static_cast<uint8_t*>(p);
  void* d = nullptr;
  err = cudaHostGetDevicePointer(&d, p, 0);
  if (err != cudaSuccess) {
    cudaFreeHost(p);
    s.host = nullptr;
    return failed("cudaHostGetDevicePointer of a staging slot", err);
  }
  s.dev = static_cast<uint8_t*>(d);
  if (!s.done && (err = cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming)) != cudaSuccess) {
    s.done = nullptr;
    return failed("cudaEventCreateWithFlags", err);
  }
  s.cap = cap;
  return {};
}

// A slot of at least `need` bytes, marked busy. Waits (blocking) only when every slot is queued behind
// unfinished work; never waits for a held download slot, whose release needs this very thread.
CudaStatus slot_acquire(size_t need, Slot** out) {
  std::lock_guard<std::mutex> lock(g_slot_mu);
  Slot* small = nullptr;
  for (auto& s : g_slots) {
    if (!slot_idle(*s)) continue;
    if (s->cap >= need) {
      s->busy = true;
      *out = s.get();
      return {};
    }
    if (!small) small = s.get();
  }
  Slot* s = nullptr;
  if (g_slots.size() < kMaxSlots) {
    g_slots.push_back(std::make_unique<Slot>());
    s = g_slots.back().get();
  } else if (small) {
    s = small;
  } else {
    for (auto& c : g_slots)
      if (!c->busy && !c->held) {
        s = c.get();
        break;
      }
    if (!s)
      return status_of(CudaFail::Runtime, "all " + std::to_string(kMaxSlots) +
                                              " staging slots hold unread downloads; await earlier cudaDownload calls first");
    const cudaError_t err = cudaEventSynchronize(s->done);
    if (err != cudaSuccess) return failed("cudaEventSynchronize on a staging slot", err);
  }
  if (s->cap < need) {
    CudaStatus st = slot_grow(*s, need);
    if (!st.ok()) return st;
  }
  s->busy = true;
  *out = s;
  return {};
}

// Records the slot's event after the work enqueued on `stream` that uses it, and ends `busy`.
cudaError_t slot_release(Slot* s, cudaStream_t stream, bool held) {
  const cudaError_t rec = cudaEventRecord(s->done, stream);
  std::lock_guard<std::mutex> lock(g_slot_mu);
  s->held = held;
  s->busy = rec != cudaSuccess;  // a slot whose event could not be recorded is retired, never reused
  return rec;
}

// ---- Handles to pointers ----

// Blocks for a grid-stride loop over `items`: enough to fill the GPU, never more than there is work.
unsigned grid_for(uint64_t items, int threads) {
  const uint64_t want = (items + threads - 1) / threads;
  const uint64_t cap = static_cast<uint64_t>(cudadev::sm_count()) * 32;
  return static_cast<unsigned>(want == 0 ? 1 : want < cap ? want : cap);
}

// ---- Random fill ----

// Wellons' lowbias32: a full-avalanche 32-bit mix; model-ref.ts mix32 is the same function.
__host__ __device__ __forceinline__ uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// u in [-1, 1) from the hash's top 24 bits: (h >> 8) * 2^-23 - 1 is exact in f32, so the only rounding is
// the product with scale, which fillRandomRef reproduces bit for bit.
// `outer` is mix32(key ^ hi32(i)), shared by runs of 2^32 indices, so a vector hashes it once.
__device__ __forceinline__ float rand_from(uint32_t outer, uint64_t i, float scale) {
  const uint32_t h = mix32(outer ^ static_cast<uint32_t>(i));
  const float u = static_cast<float>(h >> 8) * 0x1p-23f - 1.0f;
  return __fmul_rn(u, scale);
}

__device__ __forceinline__ float rand_value(uint32_t key, uint64_t i, float scale) {
  return rand_from(mix32(key ^ static_cast<uint32_t>(i >> 32)), i, scale);
}

template <typename T>
__device__ __forceinline__ uint32_t to_bits(float v);
template <>
__device__ __forceinline__ uint32_t to_bits<float>(float v) { return __float_as_uint(v); }
template <>
__device__ __forceinline__ uint32_t to_bits<__nv_bfloat16>(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
template <>
__device__ __forceinline__ uint32_t to_bits<__half>(float v) { return __half_as_ushort(__float2half_rn(v)); }

// dst holds `count` elements of T; `lead` elements come before the first 16-byte boundary. Each thread of
// the grid-stride loop writes whole 16-byte vectors (bandwidth bound); lead and tail go element by element.
template <typename T>
__global__ void fill_random_kernel(T* dst, uint64_t count, uint64_t lead, uint32_t key, float scale) {
  constexpr int V = 16 / sizeof(T);
  const uint64_t vectors = (count - lead) / V;
  const uint64_t tailStart = lead + vectors * V;
  const uint64_t tid = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  if (tid < lead) {
    const uint32_t b = to_bits<T>(rand_value(key, tid, scale));
    if (sizeof(T) == 4) reinterpret_cast<uint32_t*>(dst)[tid] = b;
    else reinterpret_cast<uint16_t*>(dst)[tid] = static_cast<uint16_t>(b);
  }
  if (tailStart + tid < count) {
    const uint64_t i = tailStart + tid;
    const uint32_t b = to_bits<T>(rand_value(key, i, scale));
    if (sizeof(T) == 4) reinterpret_cast<uint32_t*>(dst)[i] = b;
    else reinterpret_cast<uint16_t*>(dst)[i] = static_cast<uint16_t>(b);
  }
  uint4* vec = reinterpret_cast<uint4*>(dst + lead);
  for (uint64_t v = tid; v < vectors; v += stride) {
    const uint64_t i0 = lead + v * V;
    uint32_t word[4];
    if ((i0 >> 32) == ((i0 + V - 1) >> 32)) {  // the usual case: one high word for the whole vector
      const uint32_t outer = mix32(key ^ static_cast<uint32_t>(i0 >> 32));
      if (sizeof(T) == 4) {
#pragma unroll
        for (int e = 0; e < 4; ++e) word[e] = to_bits<T>(rand_from(outer, i0 + e, scale));
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          word[e] = to_bits<T>(rand_from(outer, i0 + 2 * e, scale)) | (to_bits<T>(rand_from(outer, i0 + 2 * e + 1, scale)) << 16);
      }
    } else {
      if (sizeof(T) == 4) {
#pragma unroll
        for (int e = 0; e < 4; ++e) word[e] = to_bits<T>(rand_value(key, i0 + e, scale));
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          word[e] = to_bits<T>(rand_value(key, i0 + 2 * e, scale)) | (to_bits<T>(rand_value(key, i0 + 2 * e + 1, scale)) << 16);
      }
    }
    vec[v] = make_uint4(word[0], word[1], word[2], word[3]);
  }
}

template <typename T>
cudaError_t launch_fill(uint8_t* p, uint64_t count, uint32_t key, float scale, cudaStream_t s) {
  const uint64_t mis = reinterpret_cast<uintptr_t>(p) % 16;
  uint64_t lead = mis == 0 ? 0 : (16 - mis) / sizeof(T);
  if (lead > count) lead = count;
  const uint64_t vectors = (count - lead) / (16 / sizeof(T));
  fill_random_kernel<T><<<grid_for(vectors > 16 ? vectors : 16, 256), 256, 0, s>>>(reinterpret_cast<T*>(p), count, lead, key, scale);
  return cudaGetLastError();
}

// ---- Embedding ----

// One block per row; ids live in a mapped pinned slot (or, for cudaEmbedDevice, in device memory: the last step's
// argmax), read once per block and clamped into the table (memory-safe; host ids are checked before the launch).
__global__ void embed_kernel(const uint16_t* __restrict__ table, const int32_t* __restrict__ ids, float* __restrict__ out, uint32_t hidden,
                             bool vec, int32_t vocab) {
  __shared__ int64_t id;
  if (threadIdx.x == 0) id = min(max(ids[blockIdx.x], 0), vocab - 1);
  __syncthreads();
  const uint16_t* src = table + id * hidden;
  float* dst = out + static_cast<int64_t>(blockIdx.x) * hidden;
  if (vec) {  // hidden % 8 == 0, both 16-byte aligned: one 16-byte load, two 16-byte stores per 8 values
    for (uint32_t c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
      const uint4 w = reinterpret_cast<const uint4*>(src)[c];
      reinterpret_cast<float4*>(dst)[2 * c] = make_float4(bf16_lo(w.x), bf16_hi(w.x), bf16_lo(w.y), bf16_hi(w.y));
      reinterpret_cast<float4*>(dst)[2 * c + 1] = make_float4(bf16_lo(w.z), bf16_hi(w.z), bf16_lo(w.w), bf16_hi(w.w));
    }
  } else {
    for (uint32_t j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = bf16_lo(src[j]);
  }
}

// ---- Block reductions ----

constexpr int kRowThreads = 256;

// Sum over the block; every thread gets the result. `scratch` holds one value per warp.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) total += scratch[i];  // the same order in every thread
  return total;
}

// ---- RMSNorm ----

// The sum of squares is taken in f64: an f32 x^2 overflows for |x| > 1.8e19, where the CPU graph's f32 sum
// would give inf (and out = 0); f64 keeps the exact answer and otherwise agrees with f32 to rounding.
// out may equal x: every read of x precedes block_sum's barrier, every write follows it.
__global__ void __launch_bounds__(kRowThreads) rms_norm_kernel(const float* x, const uint16_t* __restrict__ w, float* out, uint32_t n, float eps) {
  __shared__ double scratch[kRowThreads / 32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  float* orow = out + static_cast<int64_t>(blockIdx.x) * n;
  double ss = 0;
  for (uint32_t j = threadIdx.x; j < n; j += blockDim.x) {
    const double v = xr[j];
    ss = fma(v, v, ss);
  }
  ss = block_sum(ss, scratch);
  const double inv = 1.0 / sqrt(ss / n + static_cast<double>(eps));
  for (uint32_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float normed = static_cast<float>(static_cast<double>(xr[j]) * inv);
    orow[j] = __fmul_rn(normed, bf16_lo(w[j]));
  }
}

// ---- RoPE ----

// HF rotate_half: out1 = x1 cos1 - x2 sin1, out2 = x2 cos2 + x1 sin2 over the two halves of each head. Each
// product and the sum are rounded separately (no FMA), as the CPU graph's Mul, Neg, Mul, Add nodes are, so
// the result is bit-exact with ropeRef. One thread per (row, head, j < headDim / 2): in place is safe.
__global__ void rope_kernel(float* x, const float* __restrict__ cosT, const float* __restrict__ sinT, uint32_t heads, uint32_t half,
                            uint64_t rowStride, uint64_t total) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t t = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const uint64_t j = t % half;
    const uint64_t rh = t / half;
    const uint64_t h = rh % heads, r = rh / heads;
    float* p = x + r * rowStride + h * 2 * half;
    const float* c = cosT + r * 2 * half;
    const float* s = sinT + r * 2 * half;
    const float x1 = p[j], x2 = p[j + half];
    p[j] = __fadd_rn(__fmul_rn(x1, c[j]), __fmul_rn(-x2, s[j]));
    p[j + half] = __fadd_rn(__fmul_rn(x2, c[j + half]), __fmul_rn(x1, s[j + half]));
  }
}

// ---- SwiGLU and add ----

// silu(g) * u = (g * sigmoid(g)) * u, sigmoid(g) = 1 / (1 + exp(-g)): the CPU graph's Mul(Mul(g, Sigmoid(g)), u).
// g = -inf gives NaN (-inf * 0), as torch's silu does.
__global__ void swiglu_kernel(const float* __restrict__ gateUp, float* __restrict__ out, uint32_t inter, uint64_t total) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t t = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const uint64_t r = t / inter, j = t % inter;
    const float g = gateUp[r * 2 * inter + j], u = gateUp[r * 2 * inter + inter + j];
    const float sig = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)));
    out[t] = __fmul_rn(__fmul_rn(g, sig), u);
  }
}

// out may equal a or b: each element is read before it is written, by the same thread.
// x [rows, rowStride]: x[r, i] += bias[i] for i < n (Qwen2's q/k/v biases on the fused projection).
__global__ void add_bias_kernel(float* x, const float* bias, uint32_t rows, uint32_t n, uint64_t rowStride) {
  const uint64_t total = static_cast<uint64_t>(rows) * n;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint64_t r = i / n, c = i - r * n;
    x[r * rowStride + c] += bias[c];
  }
}

__global__ void add_kernel(const float* a, const float* b, float* out, uint64_t n, bool vec) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  const uint64_t tid = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vec) {  // all three 16-byte aligned: float4 body, scalar tail
    const uint64_t n4 = n / 4;
    for (uint64_t i = tid; i < n4; i += stride) {
      const float4 x = reinterpret_cast<const float4*>(a)[i], y = reinterpret_cast<const float4*>(b)[i];
      reinterpret_cast<float4*>(out)[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    }
    for (uint64_t i = n4 * 4 + tid; i < n; i += stride) out[i] = a[i] + b[i];
  } else {
    for (uint64_t i = tid; i < n; i += stride) out[i] = a[i] + b[i];
  }
}

// ---- Argmax ----

// sampling.ts argmax: the first index of the largest value, NaN never chosen after index 0, and a NaN at
// index 0 is never beaten (nothing compares greater than NaN), so the answer is then 0. A candidate
// (value, index) beats another when its value is greater, or equal with a smaller index; -0 == +0.
struct Best {
  float v;
  int32_t i;  // -1: no candidate yet
};

__device__ __forceinline__ Best better(Best a, Best b) {
  if (b.i < 0) return a;
  if (a.i < 0) return b;
  return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
}

__global__ void __launch_bounds__(kRowThreads) argmax_kernel(const float* __restrict__ x, int32_t* __restrict__ out, uint32_t n) {
  __shared__ Best scratch[kRowThreads / 32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  Best b{0.f, -1};
  for (uint32_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = xr[j];
    if (!isnan(v) && (b.i < 0 || v > b.v)) b = Best{v, static_cast<int32_t>(j)};  // j rises: strict > keeps the first
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Best other;
    other.v = __shfl_xor_sync(0xffffffffu, b.v, o);
    other.i = __shfl_xor_sync(0xffffffffu, b.i, o);
    b = better(b, other);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = b;
  __syncthreads();
  if (threadIdx.x == 0) {
    Best all = scratch[0];
    for (int i = 1; i < static_cast<int>(blockDim.x >> 5); ++i) all = better(all, scratch[i]);
    out[blockIdx.x] = isnan(xr[0]) || all.i < 0 ? 0 : all.i;
  }
}

}  // namespace

// ---- Host calls ----

CudaStatus cuda_upload(DevRef dst, const void* src, uint64_t bytes, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({dst}, stream, &b);
  if (!st.ok() || bytes == 0) return st;
  for (uint64_t done = 0; done < bytes && st.ok();) {
    const size_t piece = static_cast<size_t>(bytes - done < kPiece ? bytes - done : kPiece);
    Slot* slot = nullptr;
    st = slot_acquire(piece, &slot);
    if (!st.ok()) break;
    std::memcpy(slot->host, static_cast<const uint8_t*>(src) + done, piece);
    const cudaError_t err = cudaMemcpyAsync(b.ptr[0] + done, slot->host, piece, cudaMemcpyHostToDevice, b.stream->s);
    const cudaError_t rec = slot_release(slot, b.stream->s, false);
    if (err != cudaSuccess) st = failed("cudaMemcpyAsync (staging slot to device)", err);
    else if (rec != cudaSuccess) st = failed("cudaEventRecord after an upload piece", rec);
    done += piece;
  }
  // Held even after a failure: pieces enqueued before it still write the arena.
  hold(*b.stream, std::move(b.keep));
  return st;
}

CudaStatus cuda_download_begin(DevRef src, uint64_t bytes, uint32_t stream, CudaNotifyFn fn, void* user, uint64_t* slotId,
                               uint64_t* streamTicket) {
  *slotId = 0;
  Bound b;
  CudaStatus st = bind({src}, stream, &b);
  if (!st.ok()) return st;
  Slot* slot = nullptr;
  st = slot_acquire(static_cast<size_t>(bytes > 0 ? bytes : 1), &slot);
  if (!st.ok()) return st;
  const cudaError_t err = bytes == 0 ? cudaSuccess : cudaMemcpyAsync(slot->host, b.ptr[0], bytes, cudaMemcpyDeviceToHost, b.stream->s);
  const cudaError_t rec = slot_release(slot, b.stream->s, true);
  if (err != cudaSuccess) st = failed("cudaMemcpyAsync (device to staging slot)", err);
  else if (rec != cudaSuccess) st = failed("cudaEventRecord after a download", rec);
  hold(*b.stream, std::move(b.keep));
  if (st.ok()) st = cuda_stream_notify(stream, fn, user, streamTicket);
  if (!st.ok()) {
    // No callback will come: the slot's event alone guards its reuse.
    std::lock_guard<std::mutex> lock(g_slot_mu);
    slot->held = false;
    return st;
  }
  *slotId = reinterpret_cast<uintptr_t>(slot);
  return {};
}

void cuda_download_finish(uint64_t slotId, void* dst, uint64_t bytes, bool copy) {
  Slot* slot = reinterpret_cast<Slot*>(static_cast<uintptr_t>(slotId));
  if (!slot || !copy) return;  // the stream failed: the copy may still land in the slot, so it stays held for good
  if (bytes > 0) std::memcpy(dst, slot->host, bytes);
  std::lock_guard<std::mutex> lock(g_slot_mu);
  slot->held = false;
}

CudaStatus cuda_fill_random(DevRef dst, uint64_t count, FillDtype dtype, uint32_t seed, float scale, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({dst}, stream, &b);
  if (!st.ok() || count == 0) return st;
  const uint32_t key = mix32(seed ^ 0x9e3779b9u);
  cudaError_t err;
  switch (dtype) {
    case FillDtype::F32: err = launch_fill<float>(b.ptr[0], count, key, scale, b.stream->s); break;
    case FillDtype::BF16: err = launch_fill<__nv_bfloat16>(b.ptr[0], count, key, scale, b.stream->s); break;
    default: err = launch_fill<__half>(b.ptr[0], count, key, scale, b.stream->s); break;
  }
  return launched(b, err, "cudaFillRandom");
}

CudaStatus cuda_embed_device(DevRef table, uint32_t hidden, uint32_t vocab, DevRef ids, uint32_t rows, DevRef out, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({table, out, ids}, stream, &b);
  if (!st.ok() || rows == 0) return st;
  const bool vec = hidden % 8 == 0 && reinterpret_cast<uintptr_t>(b.ptr[0]) % 16 == 0 && reinterpret_cast<uintptr_t>(b.ptr[1]) % 16 == 0;
  embed_kernel<<<rows, 256, 0, b.stream->s>>>(reinterpret_cast<const uint16_t*>(b.ptr[0]), reinterpret_cast<const int32_t*>(b.ptr[2]),
                                              reinterpret_cast<float*>(b.ptr[1]), hidden, vec, static_cast<int32_t>(vocab));
  return launched(b, cudaGetLastError(), "cudaEmbedDevice");
}

CudaStatus cuda_embed(DevRef table, uint32_t hidden, const int32_t* ids, uint32_t rows, DevRef out, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({table, out}, stream, &b);
  if (!st.ok() || rows == 0) return st;
  Slot* slot = nullptr;
  st = slot_acquire(static_cast<size_t>(rows) * 4, &slot);
  if (!st.ok()) return st;
  std::memcpy(slot->host, ids, static_cast<size_t>(rows) * 4);
  const bool vec = hidden % 8 == 0 && reinterpret_cast<uintptr_t>(b.ptr[0]) % 16 == 0 && reinterpret_cast<uintptr_t>(b.ptr[1]) % 16 == 0;
  embed_kernel<<<rows, 256, 0, b.stream->s>>>(reinterpret_cast<const uint16_t*>(b.ptr[0]), reinterpret_cast<const int32_t*>(slot->dev),
                                              reinterpret_cast<float*>(b.ptr[1]), hidden, vec, 0x7fffffff);
  const cudaError_t err = cudaGetLastError();
  const cudaError_t rec = slot_release(slot, b.stream->s, false);  // recorded even after a failure, like cuda_kv_gather
  if (err == cudaSuccess && rec != cudaSuccess) return failed("cudaEventRecord after cudaEmbed", rec);
  return launched(b, err, "cudaEmbed");
}

CudaStatus cuda_rms_norm(DevRef x, DevRef w, DevRef out, uint32_t rows, uint32_t n, float eps, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({x, w, out}, stream, &b);
  if (!st.ok()) return st;
  rms_norm_kernel<<<rows, kRowThreads, 0, b.stream->s>>>(reinterpret_cast<const float*>(b.ptr[0]), reinterpret_cast<const uint16_t*>(b.ptr[1]),
                                                         reinterpret_cast<float*>(b.ptr[2]), n, eps);
  return launched(b, cudaGetLastError(), "cudaRmsNorm");
}

CudaStatus cuda_rope(DevRef x, uint32_t rows, uint32_t heads, uint32_t headDim, uint64_t rowStride, DevRef cos, DevRef sin, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({x, cos, sin}, stream, &b);
  if (!st.ok()) return st;
  const uint64_t total = static_cast<uint64_t>(rows) * heads * (headDim / 2);
  rope_kernel<<<grid_for(total, 256), 256, 0, b.stream->s>>>(reinterpret_cast<float*>(b.ptr[0]), reinterpret_cast<const float*>(b.ptr[1]),
                                                              reinterpret_cast<const float*>(b.ptr[2]), heads, headDim / 2, rowStride, total);
  return launched(b, cudaGetLastError(), "cudaRope");
}

CudaStatus cuda_gemm_bf16(const GemmCall& c) {
  Bound b;
  CudaStatus st = bind({c.w, c.x, c.y}, c.stream, &b);
  if (!st.ok()) return st;
  const cudaError_t err = launch_gemm_bf16(reinterpret_cast<const uint16_t*>(b.ptr[0]), reinterpret_cast<const float*>(b.ptr[1]),
                                           reinterpret_cast<float*>(b.ptr[2]), static_cast<int>(c.m), static_cast<int>(c.n),
                                           static_cast<int>(c.k), c.accumulate, b.stream->s);
  return launched(b, err, "cudaGemm");
}

CudaStatus cuda_swiglu(DevRef gateUp, DevRef out, uint32_t m, uint32_t inter, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({gateUp, out}, stream, &b);
  if (!st.ok()) return st;
  const uint64_t total = static_cast<uint64_t>(m) * inter;
  swiglu_kernel<<<grid_for(total, 256), 256, 0, b.stream->s>>>(reinterpret_cast<const float*>(b.ptr[0]), reinterpret_cast<float*>(b.ptr[1]),
                                                                inter, total);
  return launched(b, cudaGetLastError(), "cudaSwiGlu");
}

CudaStatus cuda_add(DevRef a, DevRef bRef, DevRef out, uint64_t n, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({a, bRef, out}, stream, &b);
  if (!st.ok()) return st;
  const bool vec = (reinterpret_cast<uintptr_t>(b.ptr[0]) | reinterpret_cast<uintptr_t>(b.ptr[1]) | reinterpret_cast<uintptr_t>(b.ptr[2])) % 16 == 0;
  add_kernel<<<grid_for(vec ? n / 4 + 1 : n, 256), 256, 0, b.stream->s>>>(reinterpret_cast<const float*>(b.ptr[0]),
                                                                           reinterpret_cast<const float*>(b.ptr[1]),
                                                                           reinterpret_cast<float*>(b.ptr[2]), n, vec);
  return launched(b, cudaGetLastError(), "cudaAdd");
}

CudaStatus cuda_add_bias(DevRef x, DevRef bias, uint32_t rows, uint32_t n, uint64_t rowStride, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({x, bias}, stream, &b);
  if (!st.ok()) return st;
  add_bias_kernel<<<grid_for(static_cast<uint64_t>(rows) * n, 256), 256, 0, b.stream->s>>>(
      reinterpret_cast<float*>(b.ptr[0]), reinterpret_cast<const float*>(b.ptr[1]), rows, n, rowStride);
  return launched(b, cudaGetLastError(), "cudaAddBias");
}

CudaStatus cuda_argmax(DevRef x, uint32_t m, uint32_t n, DevRef out, uint32_t stream) {
  Bound b;
  CudaStatus st = bind({x, out}, stream, &b);
  if (!st.ok()) return st;
  argmax_kernel<<<m, kRowThreads, 0, b.stream->s>>>(reinterpret_cast<const float*>(b.ptr[0]), reinterpret_cast<int32_t*>(b.ptr[1]), n);
  return launched(b, cudaGetLastError(), "cudaArgmax");
}

}  // namespace kvoff
