// Python bindings of the CPU thread pool (C++ API: rsvlm_edge/threads.h): its state, and
// _parallel_trace, which runs one parallel loop of the pool that records who ran each index (the
// pool's own tests and the bench JSON use them).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "../kernels/common/thread_pool.h"
#include "rsvlm_edge/threads.h"

namespace py = pybind11;

namespace {

py::dict thread_pool_state() {
  const rsvlm_edge::ThreadPoolState s = rsvlm_edge::thread_pool_state();
  py::dict d;
  d["policy"] = rsvlm_edge::thread_wait_name(s.policy);
  d["spinning"] = s.spinning;
  d["workers"] = s.workers;
  return d;
}

// (runs, worker): per index of [0, n), how often the body ran it and the worker index that did.
py::tuple parallel_trace(int64_t n, int64_t chunk, int threads, int64_t spin_per_index) {
  if (n < 0 || n > (int64_t(1) << 26)) throw std::invalid_argument("_parallel_trace: n must be in [0, 2**26]");
  if (threads < 1 || threads > 256) throw std::invalid_argument("_parallel_trace: threads must be in [1, 256]");
  std::vector<int32_t> runs(static_cast<size_t>(n), 0), worker(static_cast<size_t>(n), -1);
  {
    py::gil_scoped_release nogil;
    rsvlm_edge::host::parallel_chunks(n, chunk, threads, [&](int64_t begin, int64_t end, int w) {
      for (int64_t i = begin; i < end; ++i) {
        volatile int64_t sink = 0;  // a little work per index, so that several threads take part
        for (int64_t s = 0; s < spin_per_index; ++s) sink = sink + s;
        ++runs[static_cast<size_t>(i)];
        worker[static_cast<size_t>(i)] = w;
      }
    });
  }
  return py::make_tuple(py::array_t<int32_t>(n, runs.data()), py::array_t<int32_t>(n, worker.data()));
}

}  // namespace

void bind_threads(py::module_& m) {
  m.def("thread_pool_state", &thread_pool_state,
        "The CPU kernels' thread pool: dict with policy (RSVLM_EDGE_THREAD_WAIT: 'auto', 'spin' or 'passive'), "
        "spinning (whether idle workers spin now) and workers (threads started beside the caller).");
  m.def("_parallel_trace", &parallel_trace, py::arg("n"), py::arg("chunk"), py::arg("threads"),
        py::arg("spin_per_index") = 0,
        "Test hook: one loop of the thread pool over [0, n); returns (runs, worker) int32 arrays: how often "
        "each index ran and which worker ran it.");
}
