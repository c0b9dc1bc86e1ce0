// Autocast (mixed precision) on CPU or CUDA in float16 or bfloat16. tch's `autocast` only
// toggles CUDA float16; these two calls do what `torch.autocast(device_type, dtype)` does on
// entry and exit. Same conventions as the other shims (guard.h): NULL or a malloc'd message.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include "guard.h"

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {
at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

// Enables autocast for CPU (cuda = 0) or CUDA (cuda = 1) with float16 (bf16 = 0) or bfloat16
// (bf16 = 1); writes the previous flag and dtype for sorbier_autocast_exit.
char* sorbier_autocast_enter(int cuda, int bf16, int* prev_enabled, int* prev_dtype) {
  return sorbier::guard([&] {
    auto dt = device_type(cuda);
    *prev_enabled = at::autocast::is_autocast_enabled(dt) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dt));
    at::autocast::set_autocast_dtype(dt, bf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(dt, true);
    at::autocast::increment_nesting();
  });
}

// Leaves autocast: clears the cast cache when the outermost region ends, restores the state.
char* sorbier_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  return sorbier::guard([&] {
    auto dt = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dt, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(prev_dtype));
  });
}

}  // extern "C"
