// Channels-last (NHWC) memory format for the trainer, which tch cannot request: its
// `contiguous()` takes no memory format. Same conventions as multi_tensor.cpp: pointers to
// heap `at::Tensor`s in, NULL or a malloc'd error message out.
#include <ATen/ATen.h>

#include "guard.h"

#include <cstdlib>
#include <cstring>
#include <exception>

extern "C" {

// *out = a new tensor holding `t` in channels-last (or the default contiguous) layout; `t`
// itself when it already is.
char* sorbier_contiguous_as(void* t, int channels_last, void** out) {
  return sorbier::guard([&] {
    const at::Tensor& x = *static_cast<at::Tensor*>(t);
    auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    *out = new at::Tensor(x.contiguous(format));
  });
}

// 1 if `t` is dense in channels-last order, 0 if not, -1 on error.
int sorbier_is_channels_last(void* t) {
  try {
    return static_cast<at::Tensor*>(t)->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
