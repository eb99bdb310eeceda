// The model-side kernels' C++ surface (no CUDA types): staged uploads/downloads between JS memory and
// device arenas, random fill, embedding, RMSNorm, RoPE, bf16 GEMM, SwiGLU, add and argmax. cuda_model.cu
// and cuda_model_gemm.cu implement it; cuda_model_stub.cc answers "CUDA not built" without nvcc.
// Every call is asynchronous on `stream` (0: kvoff's default stream) and keeps the arenas it touches
// alive like cuda_device.h's copies. Shapes, ranges, alignment and overlap are checked by the caller.
#pragma once
#include <cstdint>

#include "cuda/cuda_device.h"

namespace kvoff {

// Copies `bytes` of JS memory into a pinned staging slot before returning (so the caller may reuse its
// buffer at once), then enqueues the slot -> device copy. Large uploads go through in slot-sized pieces.
CudaStatus cuda_upload(DevRef dst, const void* src, uint64_t bytes, uint32_t stream);

// Enqueues a device -> pinned-slot copy after the stream's earlier work, then cuda_stream_notify(fn, user).
// Once fn has fired, the JS thread calls cuda_download_finish(*slot, ...) exactly once: it copies the
// bytes out when `copy` (the work succeeded) and returns the slot, or keeps the slot forever when the
// stream failed (the device may still write it). *streamTicket is for cuda_stream_release.
CudaStatus cuda_download_begin(DevRef src, uint64_t bytes, uint32_t stream, CudaNotifyFn fn, void* user, uint64_t* slot,
                               uint64_t* streamTicket);
void cuda_download_finish(uint64_t slot, void* dst, uint64_t bytes, bool copy);

enum class FillDtype { F32, BF16, F16 };
// dst[i] = u(seed, i) * scale with u uniform in [-1, 1) from a counter hash (model-ref.ts fillRandomRef),
// rounded to dtype.
CudaStatus cuda_fill_random(DevRef dst, uint64_t count, FillDtype dtype, uint32_t seed, float scale, uint32_t stream);

// out[r, :] (f32) = table[ids[r], :] (bf16); ids are checked in [0, vocab) by the caller.
CudaStatus cuda_embed(DevRef table, uint32_t hidden, const int32_t* ids, uint32_t rows, DevRef out, uint32_t stream);
// The same with the ids in device memory (int32 [rows]), clamped into [0, vocab): a step embeds the last step's argmax
// without waiting for it on the host.
CudaStatus cuda_embed_device(DevRef table, uint32_t hidden, uint32_t vocab, DevRef ids, uint32_t rows, DevRef out, uint32_t stream);

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w (f32 out and x, bf16 w; out may equal x).
CudaStatus cuda_rms_norm(DevRef x, DevRef w, DevRef out, uint32_t rows, uint32_t n, float eps, uint32_t stream);

// In place on x [rows, heads, headDim] f32 whose rows are rowStride floats apart; cos, sin [rows, headDim].
CudaStatus cuda_rope(DevRef x, uint32_t rows, uint32_t heads, uint32_t headDim, uint64_t rowStride, DevRef cos, DevRef sin,
                     uint32_t stream);

// y [m, n] (f32) = x [m, k] (f32) . W^T with W [n, k] bf16 row-major; y += instead when accumulate.
struct GemmCall {
  DevRef w, x, y;
  uint32_t m = 0, n = 0, k = 0;
  bool accumulate = false;
  uint32_t stream = 0;
};
CudaStatus cuda_gemm_bf16(const GemmCall& call);

// out [m, inter] = silu(gate) * up with gateUp [m, 2 * inter] (gate then up in each row).
CudaStatus cuda_swiglu(DevRef gateUp, DevRef out, uint32_t m, uint32_t inter, uint32_t stream);

// out [n] = a + b, f32; out may equal a or b.
CudaStatus cuda_add(DevRef a, DevRef b, DevRef out, uint64_t n, uint32_t stream);

// x [rows, rowStride] f32: x[r, i] += bias[i] for i < n; bias [n] f32.
CudaStatus cuda_add_bias(DevRef x, DevRef bias, uint32_t rows, uint32_t n, uint64_t rowStride, uint32_t stream);

// out [m] int32 = per-row argmax of x [m, n] f32, sampling.ts argmax semantics.
CudaStatus cuda_argmax(DevRef x, uint32_t m, uint32_t n, DevRef out, uint32_t stream);

// One draw with sampling.ts sample() semantics (cuda_sample.cu): out[0] = the token picked from x [n] f32.
struct SampleCall {
  DevRef x;        // [n] f32 logits
  uint32_t n = 0;
  double temperature = 1.0;  // > 0 (greedy is cuda_argmax)
  uint32_t topK = 0;         // 0 = off
  double topP = 1.0;         // (0, 1]
  double u = 0.0;            // the uniform draw in [0, 1)
  DevRef out;      // [1] int32
  DevRef scratch;  // cuda_sample_scratch_bytes(n)
  uint32_t stream = 0;
};
uint64_t cuda_sample_scratch_bytes(uint32_t n);
CudaStatus cuda_sample(const SampleCall& call);

}  // namespace kvoff
