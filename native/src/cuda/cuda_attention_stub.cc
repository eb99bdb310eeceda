// Stand-in for cuda_attention.cu when the addon is built without nvcc: every entry answers "CUDA not built".
#include "cuda/cuda_api.h"
#include "cuda/cuda_attention.h"

namespace kvoff {

static CudaStatus attention_not_built() {
  CudaStatus s;
  s.fail = CudaFail::Unavailable;
  s.message = "CUDA not built: " + cuda_info().reason;
  return s;
}

CudaStatus cuda_kv_write(const KvWriteCall&) { return attention_not_built(); }
CudaStatus cuda_kv_store_host(const KvStoreHostCall&) { return attention_not_built(); }
CudaStatus cuda_attend_decode(const AttendDecodeCall&) { return attention_not_built(); }
CudaStatus cuda_lse_merge(const LseMergeCall&) { return attention_not_built(); }
CudaStatus cuda_attend_prefill(const AttendPrefillCall&) { return attention_not_built(); }

}  // namespace kvoff
