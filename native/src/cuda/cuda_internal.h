// Registry types shared by the CUDA translation units (cuda_device.cu, cuda_calls.cu); CUDA types allowed.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <deque>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_device.h"

namespace kvoff {
namespace cudadev {

struct DevArena {
  void* ptr = nullptr;
  uint64_t bytes = 0;
  ~DevArena();
};

// Host and device arenas that enqueued work touches, kept alive until the work is known to be done.
using Keep = std::vector<std::shared_ptr<void>>;

struct Stream {
  cudaStream_t s = nullptr;
  uint64_t ticket = 0;                              // holders handed out so far
  std::deque<std::pair<uint64_t, Keep>> pending;    // (ticket, holders), oldest first
  ~Stream();
};

struct Event {
  cudaEvent_t e = nullptr;
  bool timing = false;
  ~Event();
};

CudaStatus failed(const std::string& what, int err);
CudaStatus status_of(CudaFail fail, const std::string& message);
CudaStatus unavailable();
CudaStatus gone(const char* what, uint32_t handle);
std::shared_ptr<DevArena> find_arena(uint32_t handle);
std::shared_ptr<Stream> find_stream(uint32_t handle);  // creates stream 0 on first use
void hold(Stream& st, Keep keep);
uint64_t staging_bytes();
int sm_count();  // of the current device (132 when it cannot be read), looked up once

// The arenas and stream one call uses; the arenas go to hold() once the launch is enqueued.
struct Bound {
  Keep keep;
  std::vector<uint8_t*> ptr;  // in the order the refs were given
  std::shared_ptr<Stream> stream;
};
CudaStatus bind(std::initializer_list<DevRef> refs, uint32_t stream, Bound* b);
// On success, hands the bound arenas to hold() on the bound stream; else the failure naming `what`.
CudaStatus launched(Bound& b, cudaError_t err, const char* what);

}  // namespace cudadev
}  // namespace kvoff
