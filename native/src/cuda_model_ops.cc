// JS entry points of the CUDA model kernels (filled in below).
#include <napi.h>

#include "ops.h"

namespace kvoff {

void register_cuda_model_ops(Napi::Env env, Napi::Object exports) {
  (void)env;
  (void)exports;
}

}  // namespace kvoff
