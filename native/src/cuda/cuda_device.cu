// Device arenas, streams, events and async copies behind integer handles (DESIGN §3: no device pointer
// reaches JS), plus the keep-alive rule: whatever an enqueued copy or kernel touches stays allocated
// until a synchronize of its stream has seen the work finish, even if JS frees it meanwhile.
#include <cuda_runtime.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cuda/cuda_api.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_kernels.cuh"

namespace kvoff {
namespace cudadev {

std::atomic<uint64_t> g_live_arenas{0}, g_live_arena_bytes{0};

DevArena::~DevArena() {
  if (!ptr) return;
  cudaFree(ptr);  // implicitly waits for the device: only reached at dispose or after a synchronize
  cudaGetLastError();
  g_live_arenas -= 1;
  g_live_arena_bytes -= bytes;
}

Stream::~Stream() {
  if (s) cudaStreamDestroy(s);
}

Event::~Event() {
  if (e) cudaEventDestroy(e);
}

namespace {

std::mutex g_mu;  // guards every registry below and each stream's pending list
std::unordered_map<uint32_t, std::shared_ptr<DevArena>> g_arenas;
uint32_t g_next_arena = kDevHandleBase + 1;
std::unordered_map<uint32_t, std::shared_ptr<Stream>> g_streams;  // 0: kvoff's default stream
uint32_t g_next_stream = 1;
std::unordered_map<uint32_t, std::shared_ptr<Event>> g_events;
uint32_t g_next_event = 1;

}  // namespace

CudaStatus failed(const std::string& what, int err) {
  cudaGetLastError();  // clear a non-sticky error so the next call on this thread starts clean
  CudaStatus st;
  st.fail = CudaFail::Runtime;
  st.message = what + " failed: " + cudaGetErrorString(static_cast<cudaError_t>(err)) + " (CUDA error " + std::to_string(err) + ")";
  return st;
}

CudaStatus status_of(CudaFail fail, const std::string& message) {
  CudaStatus st;
  st.fail = fail;
  st.message = message;
  return st;
}

CudaStatus unavailable() {
  const CudaInfo info = cuda_info();
  return status_of(CudaFail::Unavailable, (info.built ? "no usable GPU: " : "CUDA not built: ") + info.reason);
}

std::shared_ptr<DevArena> find_arena(uint32_t handle) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_arenas.find(handle);
  return it == g_arenas.end() ? nullptr : it->second;
}

std::shared_ptr<Stream> find_stream(uint32_t handle) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_streams.find(handle);
  if (it != g_streams.end()) return it->second;
  if (handle != 0) return nullptr;
  // The default stream: non-blocking, so it never serializes with work on the legacy stream.
  auto st = std::make_shared<Stream>();
  if (cudaStreamCreateWithFlags(&st->s, cudaStreamNonBlocking) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  g_streams.emplace(0, st);
  return st;
}

CudaStatus bind(std::initializer_list<DevRef> refs, uint32_t stream, Bound* b) {
  if (!cuda_usable()) return unavailable();
  for (const DevRef& r : refs) {
    auto a = find_arena(r.handle);
    if (!a) return gone("device arena", r.handle);
    b->ptr.push_back(static_cast<uint8_t*>(a->ptr) + r.offset);
    b->keep.push_back(a);
  }
  b->stream = find_stream(stream);
  if (!b->stream) return gone("stream", stream);
  return {};
}

CudaStatus launched(Bound& b, cudaError_t err, const char* what) {
  if (err != cudaSuccess) return failed(std::string("the ") + what + " kernel launch", err);
  hold(*b.stream, std::move(b.keep));
  return {};
}

CudaStatus gone(const char* what, uint32_t handle) {
  return status_of(CudaFail::Disposed, std::string("Expected a live ") + what + " but received handle " + std::to_string(handle) +
                                           ", which is freed or was never created");
}

void hold(Stream& st, Keep keep) {
  std::lock_guard<std::mutex> lock(g_mu);
  st.pending.emplace_back(++st.ticket, std::move(keep));
}

int sm_count() {
  static std::once_flag once;
  static int sms = 0;
  std::call_once(once, [] {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) sms = 132;
    cudaGetLastError();
  });
  return sms;
}

}  // namespace cudadev

using namespace cudadev;

// ---- Device arenas ----

CudaStatus cuda_arena_create(uint64_t bytes, uint32_t* handle) {
  if (!cuda_usable()) return unavailable();
  size_t freeBytes = 0, totalBytes = 0;
  cudaError_t err = cudaMemGetInfo(&freeBytes, &totalBytes);
  if (err != cudaSuccess) return failed("cudaMemGetInfo", err);
  const std::string numbers = "; GPU 0 (" + cuda_info().deviceName + ") has " + std::to_string(totalBytes) +
                              " bytes in all, and free memory is what other processes and kvoff's other arenas leave";
  // The same template as KvoffCapacityError, so JS gets needed and available as numbers.
  auto no_room = [&](size_t avail) {
    return status_of(CudaFail::Capacity, "Expected room for " + std::to_string(bytes) + " bytes of device memory but only " +
                                             std::to_string(avail) + " are available" + numbers);
  };
  if (bytes > freeBytes) return no_room(freeBytes);
  auto arena = std::make_shared<DevArena>();
  void* p = nullptr;
  err = cudaMalloc(&p, bytes);  // real device memory, never managed: the tier must not page behind our back
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    cudaMemGetInfo(&freeBytes, &totalBytes);
    return no_room(freeBytes);
  }
  if (err != cudaSuccess) return failed("cudaMalloc of " + std::to_string(bytes) + " bytes", err);
  arena->ptr = p;
  arena->bytes = bytes;
  g_live_arenas += 1;
  g_live_arena_bytes += bytes;
  std::lock_guard<std::mutex> lock(g_mu);
  *handle = g_next_arena++;
  g_arenas.emplace(*handle, std::move(arena));
  return {};
}

CudaStatus cuda_arena_free(uint32_t handle) {
  std::shared_ptr<DevArena> victim;  // freed outside the lock: cudaFree waits for the device
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_arenas.find(handle);
    if (it == g_arenas.end()) return gone("device arena", handle);
    victim = std::move(it->second);
    g_arenas.erase(it);
  }
  return {};
}

bool cuda_arena_size(uint32_t handle, uint64_t* bytes) {
  auto a = find_arena(handle);
  if (!a) return false;
  *bytes = a->bytes;
  return true;
}

CudaStatus cuda_arena_write(uint32_t handle, uint64_t offset, const void* src, uint64_t bytes) {
  if (!cuda_usable()) return unavailable();
  auto a = find_arena(handle);
  if (!a) return gone("device arena", handle);
  if (bytes == 0) return {};
  cudaError_t err = cudaMemcpy(static_cast<uint8_t*>(a->ptr) + offset, src, bytes, cudaMemcpyHostToDevice);
  if (err != cudaSuccess) return failed("cudaMemcpy (host to device)", err);
  // From pageable memory cudaMemcpy may return once the bytes are staged, before the DMA lands; kvoff's streams
  // are non-blocking, so a kernel enqueued next could run first (and have its output overwritten). Wait for it.
  err = cudaStreamSynchronize(cudaStreamLegacy);
  return err == cudaSuccess ? CudaStatus{} : failed("cudaStreamSynchronize after cudaMemcpy (host to device)", err);
}

CudaStatus cuda_arena_read(uint32_t handle, uint64_t offset, void* dst, uint64_t bytes) {
  if (!cuda_usable()) return unavailable();
  auto a = find_arena(handle);
  if (!a) return gone("device arena", handle);
  if (bytes == 0) return {};
  cudaError_t err = cudaMemcpy(dst, static_cast<const uint8_t*>(a->ptr) + offset, bytes, cudaMemcpyDeviceToHost);
  return err == cudaSuccess ? CudaStatus{} : failed("cudaMemcpy (device to host)", err);
}

// ---- Async copies ----

namespace {

CudaStatus host_copy(bool toDevice, const std::shared_ptr<Arena>& host, uint64_t hostOffset, DevRef dev, uint64_t bytes, uint32_t stream) {
  if (!cuda_usable()) return unavailable();
  auto d = find_arena(dev.handle);
  if (!d) return gone("device arena", dev.handle);
  auto st = find_stream(stream);
  if (!st) return gone("stream", stream);
  if (bytes == 0) return {};
  uint8_t* dp = static_cast<uint8_t*>(d->ptr) + dev.offset;
  uint8_t* hp = host->ptr + hostOffset;
  cudaError_t err = toDevice ? cudaMemcpyAsync(dp, hp, bytes, cudaMemcpyHostToDevice, st->s)
                             : cudaMemcpyAsync(hp, dp, bytes, cudaMemcpyDeviceToHost, st->s);
  if (err != cudaSuccess) return failed(toDevice ? "cudaMemcpyAsync (host to device)" : "cudaMemcpyAsync (device to host)", err);
  hold(*st, {host, d});
  return {};
}

}  // namespace

CudaStatus cuda_copy_h2d(const std::shared_ptr<Arena>& host, uint64_t hostOffset, DevRef dev, uint64_t bytes, uint32_t stream) {
  return host_copy(true, host, hostOffset, dev, bytes, stream);
}

CudaStatus cuda_copy_d2h(const std::shared_ptr<Arena>& host, uint64_t hostOffset, DevRef dev, uint64_t bytes, uint32_t stream) {
  return host_copy(false, host, hostOffset, dev, bytes, stream);
}

CudaStatus cuda_copy_d2d(DevRef src, DevRef dst, uint64_t bytes, uint32_t stream) {
  if (!cuda_usable()) return unavailable();
  auto s = find_arena(src.handle);
  if (!s) return gone("device arena", src.handle);
  auto d = find_arena(dst.handle);
  if (!d) return gone("device arena", dst.handle);
  auto st = find_stream(stream);
  if (!st) return gone("stream", stream);
  if (bytes == 0) return {};
  cudaError_t err = cudaMemcpyAsync(static_cast<uint8_t*>(d->ptr) + dst.offset, static_cast<const uint8_t*>(s->ptr) + src.offset, bytes,
                                    cudaMemcpyDeviceToDevice, st->s);
  if (err != cudaSuccess) return failed("cudaMemcpyAsync (device to device)", err);
  hold(*st, {s, d});
  return {};
}

// ---- Streams ----

CudaStatus cuda_stream_create(uint32_t* handle, bool high) {
  if (!cuda_usable()) return unavailable();
  auto st = std::make_shared<Stream>();
  int least = 0, greatest = 0;
  cudaDeviceGetStreamPriorityRange(&least, &greatest);
  // Non-blocking: the copy stream must not wait for (or stall) work on the legacy default stream. A high-priority
  // stream's blocks are scheduled first: the critical path of a step, beside the copy stream's side work.
  cudaError_t err = cudaStreamCreateWithPriority(&st->s, cudaStreamNonBlocking, high ? greatest : least);
  if (err != cudaSuccess) {
    st->s = nullptr;
    return failed("cudaStreamCreateWithPriority", err);
  }
  std::lock_guard<std::mutex> lock(g_mu);
  *handle = g_next_stream++;
  g_streams.emplace(*handle, std::move(st));
  return {};
}

CudaStatus cuda_stream_destroy(uint32_t handle) {
  if (!cuda_usable()) return unavailable();
  std::shared_ptr<Stream> st;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_streams.find(handle);
    if (handle == 0 || it == g_streams.end()) return gone("stream", handle);
    st = std::move(it->second);
    g_streams.erase(it);
  }
  cudaError_t err = cudaStreamSynchronize(st->s);
  if (err != cudaSuccess) {
    // The context is broken (a sticky error): keep what the stream held rather than free memory the
    // device might still touch.
    new std::shared_ptr<Stream>(st);  // deliberately leaked
    return failed("cudaStreamSynchronize before cudaStreamDestroy", err);
  }
  std::deque<std::pair<uint64_t, Keep>> done;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    done.swap(st->pending);
  }
  return {};
}

bool cuda_stream_live(uint32_t handle) {
  if (handle == 0) return cuda_usable();
  std::lock_guard<std::mutex> lock(g_mu);
  return g_streams.count(handle) != 0;
}

namespace {

struct Notify {
  CudaNotifyFn fn;
  void* user;
};

void CUDART_CB notify_trampoline(cudaStream_t, cudaError_t status, void* p) {
  Notify n = *static_cast<Notify*>(p);
  delete static_cast<Notify*>(p);
  n.fn(n.user, static_cast<int>(status));
}

}  // namespace

CudaStatus cuda_stream_notify(uint32_t stream, CudaNotifyFn fn, void* user, uint64_t* ticket) {
  if (!cuda_usable()) return unavailable();
  auto st = find_stream(stream);
  if (!st) return gone("stream", stream);
  {
    // Read before enqueueing the callback: every holder with a ticket <= this one was enqueued before it.
    std::lock_guard<std::mutex> lock(g_mu);
    *ticket = st->ticket;
  }
  auto* n = new Notify{fn, user};
  // cudaStreamAddCallback rather than cudaLaunchHostFunc: it also runs (with the error) when the
  // stream failed, so a pending Promise is always settled.
  cudaError_t err = cudaStreamAddCallback(st->s, notify_trampoline, n, 0);
  if (err != cudaSuccess) {
    delete n;
    return failed("cudaStreamAddCallback", err);
  }
  return {};
}

void cuda_stream_release(uint32_t stream, uint64_t ticket) {
  std::vector<Keep> done;  // destroyed outside the lock: may cudaFree or cudaHostUnregister
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_streams.find(stream);
  if (it == g_streams.end()) return;
  auto& pending = it->second->pending;
  while (!pending.empty() && pending.front().first <= ticket) {
    done.push_back(std::move(pending.front().second));
    pending.pop_front();
  }
  // `lock` is released before `done` is destroyed: locals are destroyed in reverse order of declaration.
}

std::string cuda_status_string(int status) {
  return std::string(cudaGetErrorString(static_cast<cudaError_t>(status))) + " (CUDA error " + std::to_string(status) + ")";
}

// ---- Events ----

CudaStatus cuda_event_record(uint32_t stream, bool timing, uint32_t* handle) {
  if (!cuda_usable()) return unavailable();
  auto st = find_stream(stream);
  if (!st) return gone("stream", stream);
  auto ev = std::make_shared<Event>();
  ev->timing = timing;
  cudaError_t err = cudaEventCreateWithFlags(&ev->e, timing ? cudaEventDefault : cudaEventDisableTiming);
  if (err != cudaSuccess) {
    ev->e = nullptr;
    return failed("cudaEventCreateWithFlags", err);
  }
  err = cudaEventRecord(ev->e, st->s);
  if (err != cudaSuccess) return failed("cudaEventRecord", err);
  std::lock_guard<std::mutex> lock(g_mu);
  *handle = g_next_event++;
  g_events.emplace(*handle, std::move(ev));
  return {};
}

namespace {
std::shared_ptr<Event> find_event(uint32_t handle) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_events.find(handle);
  return it == g_events.end() ? nullptr : it->second;
}
}  // namespace

CudaStatus cuda_stream_wait_event(uint32_t stream, uint32_t event) {
  if (!cuda_usable()) return unavailable();
  auto st = find_stream(stream);
  if (!st) return gone("stream", stream);
  auto ev = find_event(event);
  if (!ev) return gone("event", event);
  cudaError_t err = cudaStreamWaitEvent(st->s, ev->e, 0);
  return err == cudaSuccess ? CudaStatus{} : failed("cudaStreamWaitEvent", err);
}

CudaStatus cuda_event_elapsed(uint32_t start, uint32_t end, float* ms) {
  if (!cuda_usable()) return unavailable();
  auto a = find_event(start);
  if (!a) return gone("event", start);
  auto b = find_event(end);
  if (!b) return gone("event", end);
  if (!a->timing || !b->timing)
    return status_of(CudaFail::Runtime, "both events must be recorded with timing: true");
  // Ask with cudaEventQuery first: its cudaErrorNotReady is an answer, where cudaEventElapsedTime's is an API
  // error (compute-sanitizer reports it).
  for (cudaEvent_t e : {a->e, b->e}) {
    if (cudaEventQuery(e) == cudaErrorNotReady) {
      cudaGetLastError();
      return status_of(CudaFail::Runtime, "an event has not completed yet; await cudaStreamSynchronize on its stream first");
    }
  }
  cudaError_t err = cudaEventElapsedTime(ms, a->e, b->e);
  return err == cudaSuccess ? CudaStatus{} : failed("cudaEventElapsedTime", err);
}

CudaStatus cuda_event_free(uint32_t event) {
  std::shared_ptr<Event> victim;  // cudaEventDestroy on a pending event is fine: CUDA frees it on completion
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_events.find(event);
  if (it == g_events.end()) return gone("event", event);
  victim = std::move(it->second);
  g_events.erase(it);
  return {};
}

bool cuda_event_live(uint32_t handle) { return find_event(handle) != nullptr; }

// ---- Graphs ----

namespace {
struct Graph {
  cudaGraphExec_t exec = nullptr;
  Keep keep;  // the arenas the captured launches touch
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
  }
};
std::unordered_map<uint32_t, std::shared_ptr<Graph>> g_graphs;
uint32_t g_next_graph = 1;
std::unordered_map<uint32_t, uint64_t> g_capture_ticket;  // stream -> its hold ticket when the capture began
}  // namespace

CudaStatus cuda_graph_begin(uint32_t stream) {
  if (!cuda_usable()) return unavailable();
  auto st = find_stream(stream);
  if (!st) return gone("stream", stream);
  // Relaxed: other threads (the upload staging, the copy stream's callers) may keep calling CUDA meanwhile.
  cudaError_t err = cudaStreamBeginCapture(st->s, cudaStreamCaptureModeRelaxed);
  if (err != cudaSuccess) return failed("cudaStreamBeginCapture", err);
  std::lock_guard<std::mutex> lock(g_mu);
  g_capture_ticket[stream] = st->ticket;
  return {};
}

CudaStatus cuda_graph_end(uint32_t stream, uint32_t* handle) {
  if (!cuda_usable()) return unavailable();
  auto st = find_stream(stream);
  if (!st) return gone("stream", stream);
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(st->s, &graph);
  auto g = std::make_shared<Graph>();
  {
    // What the captured launches hold moves from the stream to the graph: they run when it is launched.
    std::lock_guard<std::mutex> lock(g_mu);
    const uint64_t since = g_capture_ticket[stream];
    g_capture_ticket.erase(stream);
    for (auto it = st->pending.begin(); it != st->pending.end();) {
      if (it->first > since) {
        for (auto& k : it->second) g->keep.push_back(std::move(k));
        it = st->pending.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (err != cudaSuccess) return failed("cudaStreamEndCapture (a call during the capture was not capturable)", err);
  err = cudaGraphInstantiate(&g->exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    g->exec = nullptr;
    return failed("cudaGraphInstantiate", err);
  }
  std::lock_guard<std::mutex> lock(g_mu);
  *handle = g_next_graph++;
  g_graphs.emplace(*handle, std::move(g));
  return {};
}

CudaStatus cuda_graph_launch(uint32_t graph, uint32_t stream) {
  if (!cuda_usable()) return unavailable();
  std::shared_ptr<Graph> g;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_graphs.find(graph);
    if (it == g_graphs.end()) return gone("graph", graph);
    g = it->second;
  }
  auto st = find_stream(stream);
  if (!st) return gone("stream", stream);
  cudaError_t err = cudaGraphLaunch(g->exec, st->s);
  if (err != cudaSuccess) return failed("cudaGraphLaunch", err);
  hold(*st, {g});  // freed by JS mid-flight, it lives until this launch is known done
  return {};
}

CudaStatus cuda_graph_free(uint32_t graph) {
  std::shared_ptr<Graph> victim;
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_graphs.find(graph);
  if (it == g_graphs.end()) return gone("graph", graph);
  victim = std::move(it->second);
  g_graphs.erase(it);
  return {};
}

CudaTotals cuda_totals() {
  CudaTotals t;
  t.arenas = g_live_arenas.load();
  t.arenaBytes = g_live_arena_bytes.load();
  t.stagingBytes = staging_bytes();
  std::lock_guard<std::mutex> lock(g_mu);
  t.streams = g_streams.size() - g_streams.count(0);
  t.events = g_events.size();
  return t;
}

}  // namespace kvoff
