// Data-parallel training on libtorch's own distributed engine (c10d): the rendezvous store
// (c10d::TCPStore), the process group (c10d::ProcessGroupGloo on CPU, ProcessGroupNCCL on CUDA)
// and its collectives. Everything is c10d's: the same wire protocol and store keys as Python's
// `torch.distributed.init_process_group`, so a sorbier rank and a Python rank can share a group.
//
// Gradients are averaged the way DDP's bucketed comm hooks do it: parameters in buckets of at
// most `bucket_bytes` (DDP's `bucket_cap_mb`, 25 MiB), each bucket flattened into one tensor and
// allreduced by the process group; every bucket's allreduce is launched before the first is
// waited on, so Gloo's worker threads overlap one bucket's transfer with the next's copy.
//
// Faults: every rank bumps a counter in the store about twice a second; when a collective fails,
// `sorbier_dist_lost_ranks` reports the ranks whose counter stopped, so the error can name them.
//
// Conventions as in multi_tensor.cpp: tensors are pointers to heap `at::Tensor`s; functions
// return NULL or a malloc'd message; no C++ exception crosses into Rust. Without
// -DUSE_C10D_GLOO (Gloo's headers were not found at build time) every entry point says so.
#include <ATen/ATen.h>

#include "guard.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

#ifdef USE_C10D_GLOO

using sorbier::guard;

std::vector<at::Tensor> list(void* const* tensors, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(*static_cast<at::Tensor*>(tensors[i]));
  return out;
}

constexpr auto kBeat = std::chrono::milliseconds(400);

std::string beat_key(int rank) { return "sorbier/heartbeat/" + std::to_string(rank); }

struct Group {
  c10::intrusive_ptr<c10d::Store> store;  // the TCPStore itself, for the heartbeats
  c10::intrusive_ptr<c10d::Backend> pg;
  int rank = 0;
  int world = 1;
  std::thread heartbeat;
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;

  void beat() {
    std::unique_lock<std::mutex> lock(mu);
    while (!stopping) {
      lock.unlock();
      try {
        store->add(beat_key(rank), 1);
      } catch (...) {
        // The store's host is gone; the next collective reports it.
      }
      lock.lock();
      cv.wait_for(lock, kBeat, [this] { return stopping; });
    }
  }

  ~Group() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    cv.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
    pg.reset();
    store.reset();
  }
};

// Runs of consecutive tensors of one dtype and device, each at most `cap` bytes (a tensor
// larger than `cap` gets a bucket of its own), as DDP's `compute_bucket_assignment_by_size`.
std::vector<std::vector<at::Tensor>> buckets(const std::vector<at::Tensor>& ts, int64_t cap) {
  std::vector<std::vector<at::Tensor>> out;
  int64_t bytes = 0;
  for (const auto& t : ts) {
    if (!t.defined()) continue;
    int64_t size = t.numel() * static_cast<int64_t>(t.element_size());
    bool fits = !out.empty() && out.back().front().scalar_type() == t.scalar_type() &&
                out.back().front().device() == t.device() && bytes + size <= cap;
    if (!fits) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(t);
    bytes += size;
  }
  return out;
}

at::Tensor flatten(const std::vector<at::Tensor>& bucket) {
  std::vector<at::Tensor> flat;
  flat.reserve(bucket.size());
  for (const auto& t : bucket) flat.push_back(t.reshape({-1}));
  return at::cat(flat);
}

void unflatten(const at::Tensor& flat, const std::vector<at::Tensor>& bucket) {
  int64_t offset = 0;
  for (const auto& t : bucket) {
    auto n = t.numel();
    t.copy_(flat.narrow(0, offset, n).view_as(t));
    offset += n;
  }
}

bool alone(const std::vector<at::Tensor>& bucket) {
  return bucket.size() == 1 && bucket[0].is_contiguous();
}

// One collective per bucket, all launched before the first wait.
template <class Launch>
void bucketed(Group* g, const std::vector<at::Tensor>& ts, int64_t cap, Launch launch,
              bool average) {
  at::NoGradGuard no_grad;  // parameters are written in place
  auto bs = buckets(ts, cap);
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (const auto& b : bs) {
    // A bucket of one contiguous tensor is reduced in place: flattening it would only add a
    // copy there and back (a 64 MiB allreduce took twice PyTorch's time with them).
    std::vector<at::Tensor> one{alone(b) ? b[0] : flatten(b)};
    works.push_back(launch(one));
    flats.push_back(one[0]);
  }
  for (size_t i = 0; i < bs.size(); ++i) {
    works[i]->wait();
    if (average) flats[i].div_(g->world);
    if (!alone(bs[i])) unflatten(flats[i], bs[i]);
  }
}

#endif  // USE_C10D_GLOO

}  // namespace

extern "C" {

int sorbier_dist_gloo_compiled() {
#ifdef USE_C10D_GLOO
  return 1;
#else
  return 0;
#endif
}

int sorbier_dist_nccl_compiled() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

#ifdef USE_C10D_GLOO

// Joins the group: connects to (or, with `host_store`, hosts) the TCPStore at host:port and
// builds the process group under the keys Python's `init_process_group` uses
// (`default_pg/0//<device>/`). backend: 0 Gloo, 1 NCCL.
char* sorbier_dist_connect(const char* host, int port, int rank, int world, int host_store,
                           int backend, int64_t timeout_ms, void** out) {
  return guard([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = host_store != 0;
    opts.numWorkers = world;
    opts.waitWorkers = false;
    opts.timeout = timeout;
    auto g = std::make_unique<Group>();
    g->rank = rank;
    g->world = world;
    g->store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>("default_pg", g->store);
    auto group_store = c10::make_intrusive<c10d::PrefixStore>("0/", pg_store);
    if (backend == 1) {
#ifdef USE_C10D_NCCL
      auto nccl_opts = c10d::ProcessGroupNCCL::Options::create();
      nccl_opts->timeout = timeout;
      auto s = c10::make_intrusive<c10d::PrefixStore>("cuda/", group_store);
      g->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s, rank, world, nccl_opts);
#else
      throw std::runtime_error(
          "this trainer was built without NCCL (its headers were not found at build time)");
#endif
    } else {
      auto s = c10::make_intrusive<c10d::PrefixStore>("cpu/", group_store);
      g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
          s, rank, world, c10d::ProcessGroupGloo::Options::create_default(timeout));
    }
    // As `init_process_group` does; rank 0 publishes the group's first sequence number.
    g->pg->setSequenceNumberForGroup();
    g->store->add(beat_key(rank), 1);
    Group* raw = g.get();
    g->heartbeat = std::thread([raw] { raw->beat(); });
    *out = g.release();
  });
}

// Sums (average = 0) or averages (average = 1) the tensors across ranks, in place.
char* sorbier_dist_allreduce(void* group, void* const* tensors, int n, int average,
                             int64_t bucket_bytes) {
  return guard([&] {
    auto* g = static_cast<Group*>(group);
    bucketed(
        g, list(tensors, n), bucket_bytes,
        [&](std::vector<at::Tensor>& one) { return g->pg->allreduce(one); }, average != 0);
  });
}

// Every rank's tensors become `root`'s, in place.
char* sorbier_dist_broadcast(void* group, void* const* tensors, int n, int root,
                             int64_t bucket_bytes) {
  return guard([&] {
    auto* g = static_cast<Group*>(group);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    bucketed(
        g, list(tensors, n), bucket_bytes,
        [&](std::vector<at::Tensor>& one) { return g->pg->broadcast(one, o); }, false);
  });
}

char* sorbier_dist_barrier(void* group) {
  return guard([&] { static_cast<Group*>(group)->pg->barrier()->wait(); });
}

// The ranks whose heartbeat stopped: their counters are read twice, a few beats apart.
// Returns how many were written to `out`, or -1 when the store itself cannot be reached
// (the rank hosting it is gone).
int sorbier_dist_lost_ranks(void* group, int* out, int cap) {
  auto* g = static_cast<Group*>(group);
  try {
    std::vector<int64_t> before(g->world);
    for (int r = 0; r < g->world; ++r) before[r] = g->store->add(beat_key(r), 0);
    std::this_thread::sleep_for(kBeat * 4);
    int n = 0;
    for (int r = 0; r < g->world; ++r) {
      if (g->store->add(beat_key(r), 0) == before[r] && n < cap) out[n++] = r;
    }
    return n;
  } catch (...) {
    return -1;
  }
}

void sorbier_dist_free(void* group) { delete static_cast<Group*>(group); }

#else  // no Gloo headers at build time

static char* unavailable() {
  return strdup(
      "distributed training is unavailable: this trainer was built without Gloo's headers "
      "(tools/setup.sh fetches them from Debian's libgloo-dev into .venv/gloo; rebuild after it)");
}
char* sorbier_dist_connect(const char*, int, int, int, int, int, int64_t, void**) {
  return unavailable();
}
char* sorbier_dist_allreduce(void*, void* const*, int, int, int64_t) { return unavailable(); }
char* sorbier_dist_broadcast(void*, void* const*, int, int, int64_t) { return unavailable(); }
char* sorbier_dist_barrier(void*) { return unavailable(); }
int sorbier_dist_lost_ranks(void*, int*, int) { return -1; }
void sorbier_dist_free(void*) {}

#endif

}  // extern "C"
