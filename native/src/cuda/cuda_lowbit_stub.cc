// Stand-in for cuda_lowbit.cu when the addon is built without nvcc: every launch answers "CUDA not built".
#include "cuda/cuda_api.h"
#include "cuda/cuda_lowbit.h"

namespace kvoff {
namespace {

CudaStatus not_built() {
  CudaStatus s;
  s.fail = CudaFail::Unavailable;
  s.message = "CUDA not built: " + cuda_info().reason;
  return s;
}

}  // namespace

CudaStatus cuda_kivi_quantize(const KiviQuantizeCall&) { return not_built(); }
CudaStatus cuda_kivi_scores(const KiviScoresCall&) { return not_built(); }
CudaStatus cuda_topk(const TopKCall&) { return not_built(); }
CudaStatus cuda_kivi_attend(const KiviAttendCall&) { return not_built(); }

}  // namespace kvoff
