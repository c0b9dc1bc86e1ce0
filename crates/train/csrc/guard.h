// The one convention of the C++ shims: a C entry point runs its body under `guard`, which
// returns NULL on success or a malloc'd copy of the exception's message, which the Rust side
// reports and frees with `sorbier_free_error` (see src/model/shim.rs). No C++ exception ever
// crosses into Rust.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

namespace sorbier {

template <class F>
char* guard(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("unknown C++ exception");
  }
}

}  // namespace sorbier
