// Stand-in for cuda_model.cu and cuda_model_gemm.cu when the addon is built without nvcc: every entry answers "CUDA not built".
#include "cuda/cuda_api.h"
#include "cuda/cuda_model.h"

namespace kvoff {

static CudaStatus model_not_built() {
  CudaStatus s;
  s.fail = CudaFail::Unavailable;
  s.message = "CUDA not built: " + cuda_info().reason;
  return s;
}

CudaStatus cuda_upload(DevRef, const void*, uint64_t, uint32_t) { return model_not_built(); }
CudaStatus cuda_download_begin(DevRef, uint64_t, uint32_t, CudaNotifyFn, void*, uint64_t*, uint64_t*) { return model_not_built(); }
void cuda_download_finish(uint64_t, void*, uint64_t, bool) {}
CudaStatus cuda_fill_random(DevRef, uint64_t, FillDtype, uint32_t, float, uint32_t) { return model_not_built(); }
CudaStatus cuda_embed(DevRef, uint32_t, const int32_t*, uint32_t, DevRef, uint32_t) { return model_not_built(); }
CudaStatus cuda_embed_device(DevRef, uint32_t, uint32_t, DevRef, uint32_t, DevRef, uint32_t) { return model_not_built(); }
CudaStatus cuda_rms_norm(DevRef, DevRef, DevRef, uint32_t, uint32_t, float, uint32_t) { return model_not_built(); }
CudaStatus cuda_rope(DevRef, uint32_t, uint32_t, uint32_t, uint64_t, DevRef, DevRef, uint32_t) { return model_not_built(); }
CudaStatus cuda_gemm_bf16(const GemmCall&) { return model_not_built(); }
CudaStatus cuda_swiglu(DevRef, DevRef, uint32_t, uint32_t, uint32_t) { return model_not_built(); }
CudaStatus cuda_add(DevRef, DevRef, DevRef, uint64_t, uint32_t) { return model_not_built(); }
CudaStatus cuda_add_bias(DevRef, DevRef, uint32_t, uint32_t, uint64_t, uint32_t) { return model_not_built(); }
CudaStatus cuda_argmax(DevRef, uint32_t, uint32_t, DevRef, uint32_t) { return model_not_built(); }
uint64_t cuda_sample_scratch_bytes(uint32_t n) { return static_cast<uint64_t>(n) * 12; }
CudaStatus cuda_sample(const SampleCall&) { return model_not_built(); }

}  // namespace kvoff
