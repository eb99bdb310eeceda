// Stand-in for cuda_probe.cu, cuda_measure.cu and the device tier (cuda_device.cu, cuda_calls.cu) when the
// addon is built without nvcc: every entry exists and answers "CUDA not built" with the reason.
#include "cuda/cuda_api.h"
#include "cuda/cuda_device.h"

namespace kvoff {

CudaInfo cuda_info() {
  CudaInfo info;
  info.reason = "kvoff was built without CUDA (nvcc was not found at install time; set CUDA_HOME and run `npm rebuild`)";
  return info;
}
bool cuda_usable() { return false; }
bool cuda_host_register(void*, size_t, std::string* why) {
  if (why) *why = "built without CUDA";
  return false;
}
void cuda_host_unregister(void*) {}

CudaMemInfo cuda_mem_info(int) {
  CudaMemInfo m;
  m.reason = cuda_info().reason;
  return m;
}

CudaBandwidth cuda_bandwidth(int, size_t, int) {
  CudaBandwidth b;
  b.reason = cuda_info().reason;
  return b;
}

// ---- Device tier (cuda_device.h) ----

static CudaStatus not_built() {
  CudaStatus s;
  s.fail = CudaFail::Unavailable;
  s.message = "CUDA not built: " + cuda_info().reason;
  return s;
}

CudaStatus cuda_arena_create(uint64_t, uint32_t*) { return not_built(); }
CudaStatus cuda_arena_free(uint32_t) { return not_built(); }
bool cuda_arena_size(uint32_t, uint64_t*) { return false; }
CudaStatus cuda_arena_write(uint32_t, uint64_t, const void*, uint64_t) { return not_built(); }
CudaStatus cuda_arena_read(uint32_t, uint64_t, void*, uint64_t) { return not_built(); }
CudaStatus cuda_copy_h2d(const std::shared_ptr<Arena>&, uint64_t, DevRef, uint64_t, uint32_t) { return not_built(); }
CudaStatus cuda_copy_d2h(const std::shared_ptr<Arena>&, uint64_t, DevRef, uint64_t, uint32_t) { return not_built(); }
CudaStatus cuda_copy_d2d(DevRef, DevRef, uint64_t, uint32_t) { return not_built(); }
CudaStatus cuda_stream_create(uint32_t*, bool) { return not_built(); }
CudaStatus cuda_stream_destroy(uint32_t) { return not_built(); }
bool cuda_stream_live(uint32_t) { return false; }
CudaStatus cuda_stream_notify(uint32_t, CudaNotifyFn, void*, uint64_t*) { return not_built(); }
void cuda_stream_release(uint32_t, uint64_t) {}
std::string cuda_status_string(int status) { return "CUDA error " + std::to_string(status); }
CudaStatus cuda_event_record(uint32_t, bool, uint32_t*) { return not_built(); }
CudaStatus cuda_stream_wait_event(uint32_t, uint32_t) { return not_built(); }
CudaStatus cuda_event_elapsed(uint32_t, uint32_t, float*) { return not_built(); }
CudaStatus cuda_event_free(uint32_t) { return not_built(); }
bool cuda_event_live(uint32_t) { return false; }
CudaStatus cuda_kv_gather(const GatherCall&) { return not_built(); }
CudaStatus cuda_kv_gather_device(const GatherDeviceCall&) { return not_built(); }
CudaStatus cuda_gemv_bf16(const GemvCall&) { return not_built(); }
CudaStatus cuda_graph_begin(uint32_t) { return not_built(); }
CudaStatus cuda_graph_end(uint32_t, uint32_t*) { return not_built(); }
CudaStatus cuda_graph_launch(uint32_t, uint32_t) { return not_built(); }
CudaStatus cuda_graph_free(uint32_t) { return not_built(); }
CudaTotals cuda_totals() { return {}; }

}  // namespace kvoff
