// The device tier's C++ surface (no CUDA types): device arenas, streams, events, async copies and the
// two bandwidth kernels, all addressed by integer handle + byte offset. cuda_device.cu implements it;
// cuda_stub.cc answers "CUDA not built" for every entry when nvcc was absent.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "arena.h"

namespace kvoff {

// How a call failed; the N-API layer turns each kind into one of kvoff's error codes.
enum class CudaFail { None, Unavailable, Capacity, Disposed, Runtime };

struct CudaStatus {
  CudaFail fail = CudaFail::None;
  std::string message;
  bool ok() const { return fail == CudaFail::None; }
};

// A byte offset inside a device arena. Device arena handles start at kDevHandleBase so that a host
// arena handle passed where a device one belongs is reported as unknown, not silently used.
constexpr uint32_t kDevHandleBase = 0x40000000u;
struct DevRef {
  uint32_t handle = 0;
  uint64_t offset = 0;
};

// Stream 0 is kvoff's own default stream (non-blocking, created on first use, never destroyed).
CudaStatus cuda_arena_create(uint64_t bytes, uint32_t* handle);
CudaStatus cuda_arena_free(uint32_t handle);
bool cuda_arena_size(uint32_t handle, uint64_t* bytes);  // false when the handle is not a live device arena
// Synchronous copies between JS memory and an arena on the legacy default stream: they do not wait
// for kvoff's streams, so synchronize those first.
CudaStatus cuda_arena_write(uint32_t handle, uint64_t offset, const void* src, uint64_t bytes);
CudaStatus cuda_arena_read(uint32_t handle, uint64_t offset, void* dst, uint64_t bytes);

// Asynchronous copies on a stream; the arenas involved stay alive until a synchronize of that stream
// has seen the copy finish, even if JS frees them meanwhile. Ranges are checked by the caller.
CudaStatus cuda_copy_h2d(const std::shared_ptr<Arena>& host, uint64_t hostOffset, DevRef dev, uint64_t bytes, uint32_t stream);
CudaStatus cuda_copy_d2h(const std::shared_ptr<Arena>& host, uint64_t hostOffset, DevRef dev, uint64_t bytes, uint32_t stream);
CudaStatus cuda_copy_d2d(DevRef src, DevRef dst, uint64_t bytes, uint32_t stream);

CudaStatus cuda_stream_create(uint32_t* handle, bool highPriority = false);
// Waits for the stream's work (blocking), then destroys it and drops what it kept alive.
CudaStatus cuda_stream_destroy(uint32_t handle);
bool cuda_stream_live(uint32_t handle);
// Calls fn(user, cudaError_t as int) on a driver thread once all work enqueued on the stream so far
// has finished (or failed). fn must not call CUDA or JS. *ticket identifies what it covers, for
// cuda_stream_release, which the JS thread calls afterwards to drop the kept-alive arenas.
using CudaNotifyFn = void (*)(void* user, int status);
CudaStatus cuda_stream_notify(uint32_t stream, CudaNotifyFn fn, void* user, uint64_t* ticket);
void cuda_stream_release(uint32_t stream, uint64_t ticket);
std::string cuda_status_string(int status);

CudaStatus cuda_event_record(uint32_t stream, bool timing, uint32_t* handle);
CudaStatus cuda_stream_wait_event(uint32_t stream, uint32_t event);
CudaStatus cuda_event_elapsed(uint32_t start, uint32_t end, float* ms);
CudaStatus cuda_event_free(uint32_t event);
bool cuda_event_live(uint32_t handle);

// Zero-copy gather of (token, head) units from a pinned, mapped host KV region into a device arena,
// one kernel launch. `table` is [units, 2] (first source row, first destination row), rows being
// rowBytes (= 2 * headDim * 2) long; a unit is unitRows consecutive rows on both sides.
struct GatherCall {
  std::shared_ptr<Arena> host;  // registered with cudaHostRegister(Mapped)
  uint64_t regionOffset = 0;    // byte offset of the region in the host arena
  uint32_t rowBytes = 0;
  uint32_t unitRows = 1;
  const uint32_t* table = nullptr;  // [units, 2]
  uint32_t units = 0;
  DevRef dst;  // [dstRows, 2, headDim] 16-bit
  uint32_t stream = 0;
};
CudaStatus cuda_kv_gather(const GatherCall& call);

// The same gather with the positions and the block table already on the device: a speculative prefetch
// straight from a top-k's output. Two launches on one stream (build the table into `table`, then gather).
struct GatherDeviceCall {
  std::shared_ptr<Arena> host;  // registered with cudaHostRegister(Mapped)
  uint64_t regionOffset = 0;
  uint32_t numBlocks = 0, numKvHeads = 0, blockSize = 0, rowBytes = 0;
  uint32_t seqs = 1;  // a batch: sequences sharing the host region, each with its table row, positions and dst heads
  DevRef blockTable;  // int32 [seqs, tableLen]
  uint32_t tableLen = 0;
  DevRef positions;  // int32 [seqs * numKvHeads, ldPositions]
  uint32_t n = 0, ldPositions = 0;
  DevRef dst;  // [seqs * numKvHeads, dstCapacity, 2, headDim] 16-bit; head h's units land in slots dstSlot..dstSlot+n-1
  uint32_t dstCapacity = 0, dstSlot = 0;
  DevRef table;  // scratch: uint32 [seqs * numKvHeads * n, 2]
  uint32_t stream = 0;
};
CudaStatus cuda_kv_gather_device(const GatherDeviceCall& call);

// y[rows] (f32) = W[rows, cols] (bf16, row-major) . x[cols] (f32), f32 accumulation.
struct GemvCall {
  DevRef w, x, y;
  uint32_t rows = 0, cols = 0;
  uint32_t stream = 0;
};
CudaStatus cuda_gemv_bf16(const GemvCall& call);

// CUDA graphs, for step parts whose launch count would dominate: the launches enqueued on a stream between begin
// and end are captured (not run) and instantiated; a launch replays them on any stream. A graph keeps the arenas its
// launches touched alive until it is freed.
CudaStatus cuda_graph_begin(uint32_t stream);
CudaStatus cuda_graph_end(uint32_t stream, uint32_t* handle);
CudaStatus cuda_graph_launch(uint32_t graph, uint32_t stream);
CudaStatus cuda_graph_free(uint32_t graph);

struct CudaTotals {
  uint64_t arenas = 0;        // device arenas whose memory is still allocated (live, or kept by in-flight work)
  uint64_t arenaBytes = 0;
  uint64_t streams = 0;       // streams created by cudaStreamCreate and not destroyed
  uint64_t events = 0;
  uint64_t stagingBytes = 0;  // device bytes of the gather index staging pool (outside any arena)
};
CudaTotals cuda_totals();

}  // namespace kvoff
