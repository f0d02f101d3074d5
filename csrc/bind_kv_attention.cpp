// Python bindings for the kv_attention op: kv_append, attention_prefill, attention_decode.
// Arrays are numpy arrays (CPU path) or objects exposing __cuda_array_interface__ such as
// torch.cuda tensors (CUDA path, when built with CUDA). Every argument is validated here with a
// ValueError naming the argument and the expected shape before any kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kv_attention.h"
#include "pyarg.h"

namespace py = pybind11;
using rsvlm_edge::KernelStatus;
namespace attn = rsvlm_edge::attn;
using rsvlm_edge::pyarg::Arg;
using rsvlm_edge::pyarg::ArgType;
using rsvlm_edge::pyarg::fail;
using rsvlm_edge::pyarg::shape_str;

namespace {

// Activations: float32 on the CPU path, float16/bfloat16 on the CUDA path.
void expect_activation(const Arg& a) {
  const bool ok = a.cuda ? (a.type == ArgType::kF16 || a.type == ArgType::kBF16) : a.type == ArgType::kF32;
  if (!ok)
    fail(a.name + (a.cuda ? " must be float16 or bfloat16 on the GPU" : " must be float32 on the CPU") +
         ", got " + a.type_name());
}

attn::DType to_attn_dtype(ArgType t) {
  switch (t) {
    case ArgType::kF32: return attn::DType::kF32;
    case ArgType::kF16: return attn::DType::kF16;
    case ArgType::kBF16: return attn::DType::kBF16;
    case ArgType::kI8: return attn::DType::kI8;
    default: break;
  }
  fail("unsupported dtype");
}

void raise_status(const KernelStatus& st, bool cuda) {
  if (st.ok()) return;
  if (cuda) throw std::runtime_error(st.message);
  throw py::value_error(st.message);
}

// The cache arguments shared by the three functions, validated into a KvCacheView.
struct CacheArgs {
  Arg k, v, k_scale, v_scale, page_table;
  attn::KvCacheView view;
};

CacheArgs parse_cache(const py::object& k_cache, const py::object& v_cache, const py::object& page_table,
                      const py::object& k_scale, const py::object& v_scale, int batch, bool cuda) {
  CacheArgs c;
  const bool paged = !page_table.is_none();
  const char* layout = paged ? "(num_pages, H_kv, 16, D)" : "(B_cache, H_kv, S_max, D)";
  c.k = Arg::from(k_cache, "k_cache", /*writable=*/true);
  c.v = Arg::from(v_cache, "v_cache", /*writable=*/true);
  c.k.expect_rank(4, layout);
  c.v.expect_like(c.k);
  c.k.expect_device(cuda, "q");
  c.v.expect_device(cuda, "q");
  const std::vector<int64_t>& s = c.k.shape;
  attn::KvCacheView& view = c.view;
  view.k = c.k.data;
  view.v = c.v.data;
  if (c.k.type != ArgType::kF32 && c.k.type != ArgType::kF16 && c.k.type != ArgType::kBF16 &&
      c.k.type != ArgType::kI8)
    fail("k_cache must be float32, float16, bfloat16 or int8, got " + c.k.type_name());
  view.dtype = to_attn_dtype(c.k.type);
  view.slots = int(s[0]);
  view.num_kv_heads = int(s[1]);
  view.s_max = int(s[2]);
  view.head_dim = int(s[3]);
  if (paged) {
    if (s[2] != attn::kPageSize)
      fail("k_cache must have shape (num_pages, H_kv, 16, D) for a paged cache (page size 16), got " +
           shape_str(s));
    c.page_table = Arg::from_index(page_table, "page_table", cuda);
    c.page_table.expect_rank(2, "(B, max_pages_per_seq)");
    if (c.page_table.shape[0] != batch)
      fail("page_table must have shape (B=" + std::to_string(batch) + ", max_pages_per_seq), got " +
           shape_str(c.page_table.shape));
    view.page_table = static_cast<const int32_t*>(c.page_table.data);
    view.max_pages_per_seq = int(c.page_table.shape[1]);
  } else if (s[0] < batch) {
    fail("k_cache must have shape (B_cache >= B=" + std::to_string(batch) +
         ", H_kv, S_max, D) for a contiguous cache, got " + shape_str(s));
  }
  const std::vector<int64_t> scale_shape = {s[0], s[1], s[2]};
  const char* scale_layout = paged ? "(num_pages, H_kv, 16)" : "(B_cache, H_kv, S_max)";
  if (view.dtype == attn::DType::kI8) {
    if (k_scale.is_none() || v_scale.is_none())
      fail("an int8 cache needs k_scale and v_scale, float32 arrays of shape " + std::string(scale_layout));
    c.k_scale = Arg::from(k_scale, "k_scale", true);
    c.v_scale = Arg::from(v_scale, "v_scale", true);
    for (Arg* a : {&c.k_scale, &c.v_scale}) {
      a->expect_shape(scale_shape, scale_layout);
      a->expect_type(ArgType::kF32, "float32");
      a->expect_device(cuda, "q");
    }
    view.k_scale = static_cast<float*>(c.k_scale.data);
    view.v_scale = static_cast<float*>(c.v_scale.data);
  } else if (!k_scale.is_none() || !v_scale.is_none()) {
    fail("k_scale / v_scale are only used with an int8 cache; k_cache is " + c.k.type_name());
  }
  return c;
}

// Output: the given array (validated) or a new numpy array on the CPU path.
Arg parse_out(const py::object& out, const Arg& like, const char* shape_desc, py::object* result) {
  if (out.is_none()) {
    if (like.cuda) fail("out= is required for CUDA tensors: pass an empty tensor shaped like q");
    py::array_t<float> a(like.shape);
    *result = a;
    return Arg::from(a, "out", true);
  }
  Arg o = Arg::from(out, "out", true);
  if (o.shape != like.shape)
    fail(std::string("out must have shape ") + shape_desc + " = " + shape_str(like.shape) + " like q, got " +
         shape_str(o.shape));
  o.expect_type(like.type, "of q (" + like.type_name() + ")");
  o.expect_device(like.cuda, "q");
  *result = out;
  return o;
}

void run_append(const attn::KvAppendParams& p, bool cuda) {
  raise_status(attn::check_append(p, cuda), false);
  if (!cuda) {
    KernelStatus st;
    {
      py::gil_scoped_release nogil;
      st = attn::kv_append_cpu(p);
    }
    raise_status(st, false);
    return;
  }
#ifdef RSVLM_WITH_CUDA
  raise_status(attn::kv_append_cuda(p), true);
#else
  fail("this build of rsvlm_edge has no CUDA kernels; pass numpy arrays or rebuild with RSVLM_CUDA=ON");
#endif
}

void run_attention(const attn::AttentionParams& p, bool cuda) {
  raise_status(attn::check_attention(p, cuda), false);
  if (!cuda) {
    KernelStatus st;
    {
      py::gil_scoped_release nogil;
      st = attn::attention_cpu(p);
    }
    raise_status(st, false);
    return;
  }
#ifdef RSVLM_WITH_CUDA
  raise_status(attn::attention_cuda(p), true);
#else
  fail("this build of rsvlm_edge has no CUDA kernels; pass numpy arrays or rebuild with RSVLM_CUDA=ON");
#endif
}

void kv_append(const py::object& k_cache, const py::object& v_cache, const py::object& k_new,
               const py::object& v_new, const py::object& start_pos, const py::object& new_lens,
               const py::object& page_table, const py::object& k_scale, const py::object& v_scale) {
  Arg kn = Arg::from(k_new, "k_new", false);
  if (kn.shape.size() == 3) kn.shape.insert(kn.shape.begin() + 1, 1);  // decode: (B, H_kv, D)
  kn.expect_rank(4, "(B, S_new, H_kv, D) or (B, H_kv, D)");
  const bool cuda = kn.cuda;
  expect_activation(kn);
  Arg vn = Arg::from(v_new, "v_new", false);
  if (vn.shape.size() == 3) vn.shape.insert(vn.shape.begin() + 1, 1);
  vn.expect_like(kn);
  vn.expect_device(cuda, "k_new");
  const int batch = int(kn.shape[0]);
  CacheArgs c = parse_cache(k_cache, v_cache, page_table, k_scale, v_scale, batch, cuda);
  if (kn.shape[2] != c.view.num_kv_heads || kn.shape[3] != c.view.head_dim)
    fail("k_new must have shape (B, S_new, H_kv=" + std::to_string(c.view.num_kv_heads) +
         ", D=" + std::to_string(c.view.head_dim) + ") to match k_cache, got " + shape_str(kn.shape));
  Arg sp = Arg::from_index(start_pos, "start_pos", cuda);
  sp.expect_shape({batch}, "(B,)");
  Arg nl;
  if (!new_lens.is_none()) {
    nl = Arg::from_index(new_lens, "new_lens", cuda);
    nl.expect_shape({batch}, "(B,)");
  }
  attn::KvAppendParams p;
  p.k_new = kn.data;
  p.v_new = vn.data;
  p.start_pos = static_cast<const int32_t*>(sp.data);
  p.new_lens = new_lens.is_none() ? nullptr : static_cast<const int32_t*>(nl.data);
  p.act_dtype = to_attn_dtype(kn.type);
  p.batch = batch;
  p.s_new = int(kn.shape[1]);
  p.cache = c.view;
  run_append(p, cuda);
}

py::object attention(const py::object& q_obj, const py::object& k_cache, const py::object& v_cache,
                     const py::object& q_lens, const py::object& kv_lens, const py::object& out,
                     const py::object& page_table, const py::object& k_scale, const py::object& v_scale,
                     double scale, int num_splits, bool decode) {
  Arg q = Arg::from(q_obj, "q", false);
  const char* q_desc = decode ? "(B, H, D)" : "(B, S_q, H, D)";
  q.expect_rank(decode ? 3 : 4, q_desc);
  const bool cuda = q.cuda;
  expect_activation(q);
  const int batch = int(q.shape[0]);
  const int heads = int(q.shape[decode ? 1 : 2]);
  const int64_t dim = q.shape[decode ? 2 : 3];
  CacheArgs c = parse_cache(k_cache, v_cache, page_table, k_scale, v_scale, batch, cuda);
  if (dim != c.view.head_dim)
    fail(std::string("q must have shape ") + q_desc + " with D=" + std::to_string(c.view.head_dim) +
         " (the head_dim of k_cache), got " + shape_str(q.shape));
  if (heads % c.view.num_kv_heads != 0)
    fail("q has " + std::to_string(heads) + " heads, which is not a multiple of the " +
         std::to_string(c.view.num_kv_heads) + " KV heads of k_cache (grouped-query attention needs H % H_kv == 0)");
  const char* lens_name = decode ? "seq_lens" : "kv_lens";
  Arg kl = Arg::from_index(kv_lens, lens_name, cuda);
  kl.expect_shape({batch}, "(B,)");
  Arg ql;
  if (!decode) {
    ql = Arg::from_index(q_lens, "q_lens", cuda);
    ql.expect_shape({batch}, "(B,)");
  }
  py::object result;
  Arg o = parse_out(out, q, q_desc, &result);
  attn::AttentionParams p;
  p.q = q.data;
  p.out = o.data;
  p.q_lens = decode ? nullptr : static_cast<const int32_t*>(ql.data);
  p.kv_lens = static_cast<const int32_t*>(kl.data);
  p.act_dtype = to_attn_dtype(q.type);
  p.batch = batch;
  p.s_q = decode ? 1 : int(q.shape[1]);
  p.num_heads = heads;
  p.scale = float(scale);
  p.cache = c.view;
  p.num_splits = num_splits;
  if (num_splits < 0) fail("num_splits must be >= 0 (0 = automatic), got " + std::to_string(num_splits));
  run_attention(p, cuda);
  return result;
}

}  // namespace

void bind_kv_attention(py::module_& m) {
  m.def("kv_append", &kv_append, py::arg("k_cache"), py::arg("v_cache"), py::arg("k_new"), py::arg("v_new"),
        py::arg("start_pos"), py::kw_only(), py::arg("new_lens") = py::none(), py::arg("page_table") = py::none(),
        py::arg("k_scale") = py::none(), py::arg("v_scale") = py::none(),
        R"doc(Write new K/V rows into a preallocated cache, in place.

k_new, v_new: (B, S_new, H_kv, D), or (B, H_kv, D) for one token per sequence.
Row s of sequence b goes to cache position start_pos[b] + s, for s < new_lens[b] (default S_new).
start_pos, new_lens: (B,) int32 (any integer array on the CPU path).
Contiguous cache: k_cache, v_cache (B_cache >= B, H_kv, S_max, D); sequence b uses slot b.
Paged cache: k_cache, v_cache (num_pages, H_kv, 16, D) and page_table (B, max_pages_per_seq) int32.
INT8 cache: k_cache/v_cache int8 plus k_scale/v_scale float32 (B_cache, H_kv, S_max) or
(num_pages, H_kv, 16): one symmetric scale per (KV head, token), set here (scale = max|row|/127).
CPU: float32 activations (cache float32 or int8). CUDA: float16/bfloat16 (cache same dtype or int8).)doc");
  m.def(
      "attention_prefill",
      [](const py::object& q, const py::object& k_cache, const py::object& v_cache, const py::object& q_lens,
         const py::object& kv_lens, const py::object& out, const py::object& page_table, const py::object& k_scale,
         const py::object& v_scale, double scale) {
        return attention(q, k_cache, v_cache, q_lens, kv_lens, out, page_table, k_scale, v_scale, scale, 1, false);
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("q_lens"), py::arg("kv_lens"), py::kw_only(),
      py::arg("out") = py::none(), py::arg("page_table") = py::none(), py::arg("k_scale") = py::none(),
      py::arg("v_scale") = py::none(), py::arg("scale") = 0.0,
      R"doc(Causal attention of new queries over the KV cache (prefill, chunked prefill).

q: (B, S_q, H, D); q_lens: (B,) valid queries per sequence (<= S_q); kv_lens: (B,) tokens in the
cache per sequence including the q_lens[b] new ones (append them first with kv_append).
Query i of sequence b sits at position kv_lens[b] - q_lens[b] + i and attends to keys [0, that
position]. Query head h uses KV head h // (H // H_kv). Rows i >= q_lens[b] are set to 0.
Cache arguments as for kv_append. scale: softmax scale, 0 = 1/sqrt(D).
Returns out (B, S_q, H, D); pass out= to write into an existing array (required for CUDA).)doc");
  m.def(
      "attention_decode",
      [](const py::object& q, const py::object& k_cache, const py::object& v_cache, const py::object& seq_lens,
         const py::object& out, const py::object& page_table, const py::object& k_scale, const py::object& v_scale,
         double scale, int num_splits) {
        return attention(q, k_cache, v_cache, py::none(), seq_lens, out, page_table, k_scale, v_scale, scale,
                         num_splits, true);
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("seq_lens"), py::kw_only(),
      py::arg("out") = py::none(), py::arg("page_table") = py::none(), py::arg("k_scale") = py::none(),
      py::arg("v_scale") = py::none(), py::arg("scale") = 0.0, py::arg("num_splits") = 0,
      R"doc(Attention of one new query per sequence over the KV cache (decode step).

q: (B, H, D); seq_lens: (B,) tokens in the cache per sequence including the new one (append it
first with kv_append at start_pos = seq_lens - 1). Cache arguments as for kv_append.
scale: softmax scale, 0 = 1/sqrt(D). num_splits: CUDA split-KV chunks (0 = automatic, 1 = off);
ignored on CPU. Returns out (B, H, D); pass out= to write into an existing array (required for CUDA).)doc");
}
