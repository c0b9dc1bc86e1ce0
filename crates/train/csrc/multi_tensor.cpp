// Multi-tensor optimiser kernels for the trainer: thin C entry points over ATen's fused and
// foreach ops, which tch does not wrap (its generator skips ops that take Tensor[] and return
// nothing). They are what `torch.optim.Adam(fused=True)`, `GradScaler.unscale_` and
// `clip_grad_norm_(foreach=True)` call: one kernel (on CUDA a handful of multi-tensor launches)
// for every parameter at once instead of ~10 small kernels per parameter.
//
// Every tensor argument is a pointer to a heap `at::Tensor`, which is what a tch `Tensor`
// holds. Each function returns NULL on success or a malloc'd message that the caller frees
// with `sorbier_free_error`; no C++ exception crosses into Rust.
#include <ATen/ATen.h>

#include "guard.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace {

std::vector<at::Tensor> list(void* const* tensors, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(*static_cast<at::Tensor*>(tensors[i]));
  return out;
}

at::Tensor& one(void* tensor) { return *static_cast<at::Tensor*>(tensor); }

using sorbier::guard;

}  // namespace

extern "C" {

void sorbier_free_error(char* error) { free(error); }

// Adam (decoupled = 0) or AdamW (decoupled = 1) over n parameters. `steps` are float32 scalars
// on the parameters' device, incremented here before the update as torch.optim does.
char* sorbier_fused_adam(void* const* params, void* const* grads, void* const* exp_avgs,
                         void* const* exp_avg_sqs, void* const* steps, int n, double lr,
                         double beta1, double beta2, double weight_decay, double eps,
                         int decoupled) {
  return guard([&] {
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n),
         v = list(exp_avg_sqs, n), s = list(steps, n);
    std::vector<at::Tensor> no_amsgrad;
    at::_foreach_add_(s, 1);
    if (decoupled) {
      at::_fused_adamw_(p, g, m, v, no_amsgrad, s, lr, beta1, beta2, weight_decay, eps,
                        /*amsgrad=*/false, /*maximize=*/false);
    } else {
      at::_fused_adam_(p, g, m, v, no_amsgrad, s, lr, beta1, beta2, weight_decay, eps,
                       /*amsgrad=*/false, /*maximize=*/false);
    }
  });
}

// SGD with optional momentum (dampening 0) and Nesterov. With momentum, `buffers` holds one
// tensor per parameter; on the first step they are filled from the gradients.
char* sorbier_fused_sgd(void* const* params, void* const* grads, void* const* buffers, int n,
                        double lr, double weight_decay, double momentum, int nesterov,
                        int is_first_step) {
  return guard([&] {
    auto p = list(params, n), g = list(grads, n);
    auto b = momentum != 0.0 ? list(buffers, n) : std::vector<at::Tensor>();
    at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, /*dampening=*/0.0, nesterov != 0,
                    /*maximize=*/false, is_first_step != 0);
  });
}

// Divides every gradient by the loss scale (multiplies by `inv_scale`) and sets `found_inf`
// (a float32 scalar) to 1 if any element is inf or NaN, as GradScaler.unscale_ does.
char* sorbier_amp_unscale(void* const* grads, int n, void* found_inf, void* inv_scale) {
  return guard([&] {
    auto g = list(grads, n);
    at::_amp_foreach_non_finite_check_and_unscale_(g, one(found_inf), one(inv_scale));
  });
}

// clip_grad_norm_(foreach=True): total = ‖(‖g_i‖₂)_i‖₂; g_i *= min(1, max_norm / (total + 1e-6)).
// Writes a new tensor holding the total norm before clipping to *total_out.
char* sorbier_clip_grad_norm(void* const* grads, int n, double max_norm, void** total_out) {
  return guard([&] {
    auto g = list(grads, n);
    auto norms = at::_foreach_norm(g, 2);
    auto total = at::linalg_vector_norm(at::stack(norms), 2);
    auto coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
    at::_foreach_mul_(g, coef);
    *total_out = new at::Tensor(total);
  });
}

// clip_grad_value_(foreach=True): clamps every element to [-clip, clip].
char* sorbier_clip_grad_value(void* const* grads, int n, double clip) {
  return guard([&] {
    auto g = list(grads, n);
    at::_foreach_clamp_min_(g, -clip);
    at::_foreach_clamp_max_(g, clip);
  });
}

// ModelEmaV3's update (foreach=True): ema += weight · (model − ema) for every pair, one
// multi-tensor call (torch._foreach_lerp_).
char* sorbier_foreach_lerp(void* const* ema, void* const* model, int n, double weight) {
  return guard([&] {
    auto e = list(ema, n);
    auto m = list(model, n);
    at::_foreach_lerp_(e, m, weight);
  });
}

}  // extern "C"
