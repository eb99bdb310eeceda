// Host arenas addressed by integer handle: page-locked when possible, shared by every thread of the process.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace kvoff {

enum class PinMethod : int { Pageable = 0, Mlock = 1, CudaHostRegister = 2 };
const char* pin_method_name(PinMethod m);

struct Arena {
  uint8_t* ptr = nullptr;
  size_t bytes = 0;
  PinMethod method = PinMethod::Pageable;
  ~Arena();
};

struct ArenaCreateResult {
  uint32_t handle;
  std::shared_ptr<Arena> arena;
  std::string warning;  // non-empty when pinning was asked for and failed
};

// Throws std::bad_alloc when the memory cannot be mapped at all.
ArenaCreateResult arena_create(size_t bytes, bool pin);
// Null when the handle is unknown or already freed. Holding the shared_ptr keeps the memory
// alive, so a kernel running in a worker survives a concurrent free of its arena.
std::shared_ptr<Arena> arena_get(uint32_t handle);
bool arena_free(uint32_t handle);
void arena_totals(size_t* count, size_t* bytes);

}  // namespace kvoff
