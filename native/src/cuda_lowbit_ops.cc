// JS entry points of the CUDA lowbit kernels (filled in below).
#include <napi.h>

#include "ops.h"

namespace kvoff {

void register_cuda_lowbit_ops(Napi::Env env, Napi::Object exports) {
  (void)env;
  (void)exports;
}

}  // namespace kvoff
