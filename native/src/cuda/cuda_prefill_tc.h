// Causal prefill's parameters (both kernels) and the tensor-core kernel's launcher (cuda_prefill_tc.cu);
// cuda_attend_prefill picks it over the f32 kernel wherever the head_dim and alignment allow.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace kvoff {

struct PrefillArgs {
  const float* q;  // [T, H * G, D] f32, token t at t * qRowStride floats
  uint64_t qRowStride;
  const uint16_t* kv;  // [H, capacity, 2, D] 16-bit
  uint64_t capacity;
  float* out;  // [T, H * G, D] f32
  float* lse;  // [T, H * G] f32, natural log
  int T, start, H, G, D;
  float qscale;  // softmax scale * log2(e): scores live in the log2 domain
};

// Head dims 32, 64, 128 and 256 with a 16-byte-aligned KV base; anything else takes the f32 kernel.
bool prefill_tc_supported(int headDim, const void* kv);

cudaError_t launch_prefill_tc(const PrefillArgs& p, bool bf16, cudaStream_t stream);

}  // namespace kvoff
