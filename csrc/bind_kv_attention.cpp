// Python bindings of the kv_attention op family (C++ API: rsvlm_edge/kv_attention.h): kv_append,
// attention_prefill, attention_decode, and their naive references kv_append_reference,
// attention_prefill_reference, attention_decode_reference. Thin: validate every argument
// (tensor_arg.h, index_arg.h), then call the launcher. numpy arrays / CPU tensors run the CPU kernels
// (float32); CUDA tensors (DLPack or __cuda_array_interface__) run the CUDA kernels (float16/bfloat16).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

#include "bind_util.h"
#include "index_arg.h"
#include "rsvlm_edge/kv_attention.h"

using rsvlm_edge::bind::maybe;

namespace {

// The cache arguments shared by the three functions; has_* say which optional ones were given.
struct CacheArgs {
  TensorArg k, v, k_scale, v_scale, page_table;
  bool has_k_scale = false, has_v_scale = false, paged = false;
};

CacheArgs load_cache(py::handle k_cache, py::handle v_cache, py::handle page_table, py::handle k_scale,
                     py::handle v_scale, int64_t stream) {
  CacheArgs a;
  a.k = rsvlm_edge::tensor_arg(k_cache, "k_cache", stream);
  a.v = rsvlm_edge::tensor_arg(v_cache, "v_cache", stream);
  a.paged = !page_table.is_none();
  if (a.paged) a.page_table = rsvlm_edge::index_arg(page_table, "page_table", stream);
  a.has_k_scale = !k_scale.is_none();
  a.has_v_scale = !v_scale.is_none();
  if (a.has_k_scale) a.k_scale = rsvlm_edge::tensor_arg(k_scale, "k_scale", stream);
  if (a.has_v_scale) a.v_scale = rsvlm_edge::tensor_arg(v_scale, "v_scale", stream);
  return a;
}

// Checks k/v (and the int8 scales) first: the cache fixes H_kv and D. CPU caches are float32 or
// int8, CUDA caches float16, bfloat16 or int8. `writable`: kv_append writes the cache.
rsvlm_edge::KvCacheView check_cache(ArgChecker& c, const CacheArgs& a, bool cuda, bool writable) {
  const char* slots = a.paged ? "num_pages" : "B_cache";
  const Dim rows = a.paged ? Dim(rsvlm_edge::kKvPageSize) : Dim("S_max");
  // k_cache, v_cache: contiguous (B_cache, H_kv, S_max, D) | paged (num_pages, H_kv, 16, D)
  if (cuda)
    c.check(a.k, {slots, "H_kv", rows, "D"}, {DType::f16, DType::bf16, DType::i8});
  else
    c.check(a.k, {slots, "H_kv", rows, "D"}, {DType::f32, DType::i8});
  c.check(a.v, {slots, "H_kv", rows, "D"}, {a.k.dtype});
  rsvlm_edge::KvCacheView view;
  view.slots = c.dim_int(slots, a.k, 1);
  view.num_kv_heads = c.dim_int("H_kv", a.k, 1);
  view.s_max = a.paged ? rsvlm_edge::kKvPageSize : c.dim_int("S_max", a.k, 1);
  view.head_dim = c.dim_int("D", a.k, 1);
  const bool int8 = a.k.dtype == DType::i8;
  if (int8) {
    RSVLM_CHECK(c, a.has_k_scale && a.has_v_scale,
                std::string("an int8 cache needs k_scale and v_scale, float32 arrays of shape ") +
                    (a.paged ? "(num_pages, H_kv, 16)" : "(B_cache, H_kv, S_max)") +
                    ", one scale per (KV head, token)");
    c.check(a.k_scale, {slots, "H_kv", rows}, {DType::f32});  // k_scale: (slots, H_kv, S_max | 16)
    c.check(a.v_scale, {slots, "H_kv", rows}, {DType::f32});  // v_scale: same
  } else {
    RSVLM_CHECK(c, !a.has_k_scale && !a.has_v_scale,
                std::string("k_scale / v_scale are only used with an int8 cache; k_cache is ") +
                    rsvlm_edge::dtype_name(a.k.dtype));
  }
  if (writable) {
    c.writable(a.k);
    c.writable(a.v);
    if (int8) {
      c.writable(a.k_scale);
      c.writable(a.v_scale);
    }
  }
  view.k = a.k.data;
  view.v = a.v.data;
  view.k_scale = int8 ? a.k_scale.ptr<float>() : nullptr;
  view.v_scale = int8 ? a.v_scale.ptr<float>() : nullptr;
  view.dtype = a.k.dtype;
  return view;
}

// After the activations bound B: the page table (paged) or the slot count (contiguous).
void check_cache_batch(ArgChecker& c, const CacheArgs& a, rsvlm_edge::KvCacheView* view) {
  if (a.paged) {
    c.check(a.page_table, {"B", "max_pages_per_seq"}, {DType::i32});  // page_table: (B, max_pages_per_seq) int32
    view->page_table = a.page_table.ptr<const int32_t>();
    view->max_pages_per_seq = c.dim_int("max_pages_per_seq", a.page_table, 1);
    RSVLM_CHECK(c, int64_t(view->max_pages_per_seq) * rsvlm_edge::kKvPageSize <= 0x7fffffff,
                "argument 'page_table' has " + std::to_string(view->max_pages_per_seq) +
                    " pages per sequence; at most (2^31-1) / 16 are supported");
  } else {
    RSVLM_CHECK(c, c.dim("B_cache") >= c.dim("B"),
                "argument 'k_cache' has " + std::to_string(c.dim("B_cache")) + " sequence slots but the batch has B=" +
                    std::to_string(c.dim("B")) + "; allocate the cache as (B_cache >= B, H_kv, S_max, D)");
  }
}

// Activations: the cache dtype, or float16/bfloat16 (CUDA) / float32 (CPU) in front of an int8 cache.
void check_activation(ArgChecker& c, const TensorArg& t, std::initializer_list<Dim> dims, DType cache, bool cuda) {
  if (cache != DType::i8)
    c.check(t, dims, {cache});
  else if (cuda)
    c.check(t, dims, {DType::f16, DType::bf16});
  else
    c.check(t, dims, {DType::f32});
}

void kv_append(Impl impl, py::handle k_cache, py::handle v_cache, py::handle k_new_obj, py::handle v_new_obj,
               py::handle start_pos_obj, py::handle new_lens_obj, py::handle page_table, py::handle k_scale,
               py::handle v_scale, py::handle rope_pos_obj, py::handle rope_q_obj, double rope_theta,
               int64_t stream) {
  ArgChecker c(rsvlm_edge::bind::op_name("kv_append", impl));
  TensorArg k_new = rsvlm_edge::tensor_arg(k_new_obj, "k_new", stream);
  TensorArg v_new = rsvlm_edge::tensor_arg(v_new_obj, "v_new", stream);
  CacheArgs a = load_cache(k_cache, v_cache, page_table, k_scale, v_scale, stream);
  TensorArg start_pos = rsvlm_edge::index_arg(start_pos_obj, "start_pos", stream);
  const bool has_new_lens = !new_lens_obj.is_none();
  TensorArg new_lens = has_new_lens ? rsvlm_edge::index_arg(new_lens_obj, "new_lens", stream) : TensorArg{};
  const bool has_rope = !rope_pos_obj.is_none(), has_rope_q = !rope_q_obj.is_none();
  TensorArg rope_pos = has_rope ? rsvlm_edge::index_arg(rope_pos_obj, "rope_positions", stream, /*min_value=*/0)
                                : TensorArg{};
  TensorArg rope_q = has_rope_q ? rsvlm_edge::tensor_arg(rope_q_obj, "rope_q", stream) : TensorArg{};
  RSVLM_CHECK(c, has_rope || !has_rope_q, "argument 'rope_q' needs 'rope_positions' (the positions to rotate at)");
  rsvlm_edge::bind::check_devices(
      c, impl,
      {&k_new, &v_new, &a.k, &a.v, maybe(a.k_scale, a.has_k_scale), maybe(a.v_scale, a.has_v_scale),
       maybe(a.page_table, a.paged), &start_pos, maybe(new_lens, has_new_lens), maybe(rope_pos, has_rope),
       maybe(rope_q, has_rope_q)});
  const bool cuda = k_new.device.type == DeviceType::cuda;
  // Decode form (B, H_kv, D) = (B, 1, H_kv, D); likewise rope_q (B, H, D) and rope_positions (B,).
  const bool decode_form = k_new.ndim() == 3;
  for (TensorArg* t : {&k_new, &v_new, &rope_q, &rope_pos}) {
    const int64_t rank = t == &rope_pos ? 1 : 3;
    if (!decode_form || t->ndim() != rank) continue;
    t->shape.insert(t->shape.begin() + 1, 1);
    t->strides.insert(t->strides.begin() + 1, t->strides[0]);
  }
  rsvlm_edge::KvAppendParams p;
  p.cache = check_cache(c, a, cuda, /*writable=*/true);
  check_activation(c, k_new, {"B", "S_new", "H_kv", "D"}, a.k.dtype, cuda);  // k_new: (B, S_new, H_kv, D)
  c.check(v_new, {"B", "S_new", "H_kv", "D"}, {k_new.dtype});                // v_new: same
  check_cache_batch(c, a, &p.cache);
  c.check(start_pos, {"B"}, {DType::i32});                   // start_pos: (B,)
  if (has_new_lens) c.check(new_lens, {"B"}, {DType::i32});  // new_lens: (B,)
  p.k_new = k_new.data;
  p.v_new = v_new.data;
  p.start_pos = start_pos.ptr<const int32_t>();
  p.new_lens = has_new_lens ? new_lens.ptr<const int32_t>() : nullptr;
  p.act_dtype = k_new.dtype;
  p.batch = c.dim_int("B", k_new);
  p.s_new = c.dim_int("S_new", k_new);
  if (has_rope) {
    c.check(rope_pos, {"B", "S_new"}, {DType::i32});  // rope_positions: (B, S_new) (host: any integer dtype, >= 0)
    RSVLM_CHECK(c, p.cache.head_dim % 2 == 0,
                "rotary embedding needs an even head_dim D, got D=" + std::to_string(p.cache.head_dim));
    RSVLM_CHECK(c, rope_theta > 0.0 && std::isfinite(rope_theta),
                "argument 'rope_theta' must be > 0, got " + std::to_string(rope_theta));
    p.rope.positions = rope_pos.ptr<const int32_t>();
    p.rope.theta = static_cast<float>(rope_theta);
  }
  if (has_rope_q) {
    c.check(rope_q, {"B", "S_new", "H", "D"}, {k_new.dtype});  // rope_q: (B, S_new, H, D), rotated in place
    c.writable(rope_q);
    p.rope.num_heads = c.dim_int("H", rope_q, 1);
    RSVLM_CHECK(c, p.rope.num_heads % p.cache.num_kv_heads == 0,
                "argument 'rope_q' has H=" + std::to_string(p.rope.num_heads) + " heads, not a multiple of H_kv=" +
                    std::to_string(p.cache.num_kv_heads));
    for (const TensorArg* other : {&k_new, &v_new})
      RSVLM_CHECK(c, !rsvlm_edge::bind::overlap(rope_q, *other),
                  "argument 'rope_q' (rotated in place) shares memory with '" + other->name + "'");
    p.rope.q = rope_q.data;
  }
  rsvlm_edge::bind::run(
      "kv_append", impl, k_new, stream, [&] { return rsvlm_edge::kv_append_cpu(p); },
      [&] { return rsvlm_edge::kv_append_reference(p); }, [&](void* st) { return rsvlm_edge::kv_append_cuda(p, st); });
}

py::object attention(Impl impl, const char* op, py::handle q_obj, py::handle k_cache, py::handle v_cache,
                     py::handle q_lens_obj, py::handle kv_lens_obj, py::handle out_obj, py::handle page_table,
                     py::handle k_scale, py::handle v_scale, double scale, int num_splits, int64_t stream,
                     bool causal = true, bool bf16_products = false) {
  const bool decode = q_lens_obj.is_none();
  ArgChecker c(rsvlm_edge::bind::op_name(op, impl));
  TensorArg q = rsvlm_edge::tensor_arg(q_obj, "q", stream);
  CacheArgs a = load_cache(k_cache, v_cache, page_table, k_scale, v_scale, stream);
  TensorArg q_lens = decode ? TensorArg{} : rsvlm_edge::index_arg(q_lens_obj, "q_lens", stream);
  TensorArg kv_lens = rsvlm_edge::index_arg(kv_lens_obj, decode ? "seq_lens" : "kv_lens", stream);
  const bool has_out = !out_obj.is_none();
  TensorArg out = has_out ? rsvlm_edge::tensor_arg(out_obj, "out", stream) : TensorArg{};
  rsvlm_edge::bind::check_devices(
      c, impl,
      {&q, &a.k, &a.v, maybe(a.k_scale, a.has_k_scale), maybe(a.v_scale, a.has_v_scale), maybe(a.page_table, a.paged),
       maybe(q_lens, !decode), &kv_lens, maybe(out, has_out)});
  const bool cuda = q.device.type == DeviceType::cuda;
  rsvlm_edge::AttentionParams p;
  p.cache = check_cache(c, a, cuda, /*writable=*/false);
  if (decode)
    check_activation(c, q, {"B", "H", "D"}, a.k.dtype, cuda);  // q: (B, H, D)
  else
    check_activation(c, q, {"B", "S_q", "H", "D"}, a.k.dtype, cuda);  // q: (B, S_q, H, D)
  check_cache_batch(c, a, &p.cache);
  p.num_heads = c.dim_int("H", q, 1);
  // H_kv >= 1 was checked with the cache: the modulo below cannot divide by zero.
  RSVLM_CHECK(c, p.num_heads % p.cache.num_kv_heads == 0,
              "q has H=" + std::to_string(p.num_heads) +
                  " heads, which is not a multiple of the H_kv=" + std::to_string(p.cache.num_kv_heads) +
                  " KV heads of k_cache (grouped-query attention needs H % H_kv == 0)");
  if (!decode) c.check(q_lens, {"B"}, {DType::i32});  // q_lens: (B,)
  c.check(kv_lens, {"B"}, {DType::i32});              // kv_lens / seq_lens: (B,)
  RSVLM_CHECK(c, num_splits >= 0,
              "argument 'num_splits' must be >= 0 (0 = automatic, 1 = off), got " + std::to_string(num_splits));
  RSVLM_CHECK(c, scale >= 0.0 && scale < 3.4e38,
              "argument 'scale' must be >= 0 and finite (0 = 1/sqrt(D)), got " + std::to_string(scale));

  py::object result;
  if (has_out) {
    if (decode)
      c.check(out, {"B", "H", "D"}, {q.dtype});  // out: (B, H, D)
    else
      c.check(out, {"B", "S_q", "H", "D"}, {q.dtype});  // out: (B, S_q, H, D)
    c.writable(out);
    result = py::reinterpret_borrow<py::object>(out_obj);
  } else if (cuda) {
    c.fail("argument 'out' is required for CUDA inputs: pass a preallocated tensor shaped like q " + q.describe());
  } else {
    py::array_t<float> arr(std::vector<py::ssize_t>(q.shape.begin(), q.shape.end()));
    out = rsvlm_edge::tensor_arg(arr, "out");
    result = arr;
  }
  p.q = q.data;
  p.out = out.data;
  p.q_lens = decode ? nullptr : q_lens.ptr<const int32_t>();
  p.kv_lens = kv_lens.ptr<const int32_t>();
  p.act_dtype = q.dtype;
  p.batch = c.dim_int("B", q);
  p.s_q = decode ? 1 : c.dim_int("S_q", q);
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  p.bf16_products = bf16_products;
  p.num_splits = decode ? num_splits : 1;
  rsvlm_edge::bind::run(
      op, impl, q, stream, [&] { return rsvlm_edge::attention_cpu(p); },
      [&] { return rsvlm_edge::attention_reference(p); }, [&](void* st) { return rsvlm_edge::attention_cuda(p, st); });
  return result;
}

const char* kAppendDoc = R"doc(Write new K/V rows into a preallocated cache, in place.

k_new, v_new: (B, S_new, H_kv, D), or (B, H_kv, D) for one token per sequence (B = 0 or S_new = 0: nothing).
Row s of sequence b goes to cache position start_pos[b] + s, for s < new_lens[b] (default S_new).
start_pos, new_lens: (B,) int32 (on the CPU any integer array or list; every value is range-checked,
never truncated, and must stay within the cache).
Contiguous cache: k_cache, v_cache (B_cache >= B, H_kv, S_max, D); sequence b uses slot b.
Paged cache: k_cache, v_cache (num_pages, H_kv, 16, D) and page_table (B, max_pages_per_seq) int32:
position p of sequence b is row p % 16 of page page_table[b, p // 16].
INT8 cache: k_cache/v_cache int8 plus k_scale/v_scale float32 (B_cache, H_kv, S_max) or
(num_pages, H_kv, 16): one symmetric scale per (KV head, token), set here (scale = max|row| / 127).
RoPE fused in (optional): rope_positions (B, S_new) (or (B,)), int32 >= 0: each K row is stored rotated
at its position (rope's rotate-half with rope_theta; k_new itself is not changed), and rope_q
(B, S_new, H, D) (or (B, H, D)), H a multiple of H_kv, is rotated in place at the same positions, every
row of it: what rope(q, k, positions) followed by kv_append does, in one call (one CUDA launch).
CPU: float32 activations (cache float32 or int8). CUDA tensors: float16/bfloat16 (cache same dtype
or int8); `stream` is a cudaStream_t as an integer (0 = legacy default).)doc";

const char* kPrefillDoc = R"doc(Attention of new queries over the KV cache (prefill, chunked prefill), causal by default.

q: (B, S_q, H, D); q_lens: (B,) valid queries per sequence (<= S_q); kv_lens: (B,) tokens in the
cache per sequence including the q_lens[b] new ones (append them first with kv_append).
Query i of sequence b sits at position kv_lens[b] - q_lens[b] + i and attends to keys [0, that
position] (causal=True), or to all kv_lens[b] keys (causal=False: bidirectional, a ViT's attention).
Query head h uses KV head h // (H // H_kv). Rows i >= q_lens[b] are set to 0. Cache arguments as for kv_append. scale: softmax scale, 0 = 1/sqrt(D).
bf16_products=True allows bf16 products on a CPU with AMX-BF16 (kernel set amx, float32 cache): q * scale,
k, the softmax weights and v rounded to bf16, summed in fp32 (rsvlm_edge/kv_attention.h); elsewhere it
changes nothing (the reference ignores it).
Returns out (B, S_q, H, D); pass out= to write into an existing array (required for CUDA).)doc";

const char* kDecodeDoc = R"doc(Attention of one new query per sequence over the KV cache (decode step).

q: (B, H, D); seq_lens: (B,) tokens in the cache per sequence including the new one (append it
first with kv_append at start_pos = seq_lens - 1). Cache arguments as for kv_append.
scale: softmax scale, 0 = 1/sqrt(D). num_splits: CUDA split-KV chunks (0 = automatic, 1 = off);
ignored on CPU. Returns out (B, H, D); pass out= to write into an existing array (required for CUDA).)doc";

}  // namespace

void bind_kv_attention(py::module_& m) {
  for (Impl impl : {Impl::kFast, Impl::kReference}) {
    const bool ref = impl == Impl::kReference;
    const std::string ref_doc =
        "Naive reference (kernels/kv_attention/kv_attention_ref.cpp: plain loops, fp64 "
        "softmax), CPU float32 / int8 cache only; same arguments and checks as ";
    m.def(
        rsvlm_edge::bind::op_name("kv_append", impl).c_str(),
        [impl](py::handle k_cache, py::handle v_cache, py::handle k_new, py::handle v_new, py::handle start_pos,
               py::handle new_lens, py::handle page_table, py::handle k_scale, py::handle v_scale,
               py::handle rope_positions, py::handle rope_q, double rope_theta, int64_t stream) {
          kv_append(impl, k_cache, v_cache, k_new, v_new, start_pos, new_lens, page_table, k_scale, v_scale,
                    rope_positions, rope_q, rope_theta, stream);
        },
        py::arg("k_cache"), py::arg("v_cache"), py::arg("k_new"), py::arg("v_new"), py::arg("start_pos"), py::kw_only(),
        py::arg("new_lens") = py::none(), py::arg("page_table") = py::none(), py::arg("k_scale") = py::none(),
        py::arg("v_scale") = py::none(), py::arg("rope_positions") = py::none(), py::arg("rope_q") = py::none(),
        py::arg("rope_theta") = 10000.0, py::arg("stream") = 0,
        ref ? (ref_doc + "kv_append.").c_str() : kAppendDoc);
    m.def(
        rsvlm_edge::bind::op_name("attention_prefill", impl).c_str(),
        [impl](py::handle q, py::handle k_cache, py::handle v_cache, py::handle q_lens, py::handle kv_lens,
               py::handle out, py::handle page_table, py::handle k_scale, py::handle v_scale, double scale,
               int64_t stream, bool causal, bool bf16_products) {
          if (q_lens.is_none())
            throw std::invalid_argument(rsvlm_edge::bind::op_name("attention_prefill", impl) +
                                        ": argument 'q_lens' is required but got None");
          return attention(impl, "attention_prefill", q, k_cache, v_cache, q_lens, kv_lens, out, page_table, k_scale,
                           v_scale, scale, 1, stream, causal, bf16_products);
        },
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("q_lens"), py::arg("kv_lens"), py::kw_only(),
        py::arg("out") = py::none(), py::arg("page_table") = py::none(), py::arg("k_scale") = py::none(),
        py::arg("v_scale") = py::none(), py::arg("scale") = 0.0, py::arg("stream") = 0, py::arg("causal") = true,
        py::arg("bf16_products") = false, ref ? (ref_doc + "attention_prefill.").c_str() : kPrefillDoc);
    m.def(
        rsvlm_edge::bind::op_name("attention_decode", impl).c_str(),
        [impl](py::handle q, py::handle k_cache, py::handle v_cache, py::handle seq_lens, py::handle out,
               py::handle page_table, py::handle k_scale, py::handle v_scale, double scale, int num_splits,
               int64_t stream) {
          return attention(impl, "attention_decode", q, k_cache, v_cache, py::none(), seq_lens, out, page_table,
                           k_scale, v_scale, scale, num_splits, stream);
        },
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("seq_lens"), py::kw_only(),
        py::arg("out") = py::none(), py::arg("page_table") = py::none(), py::arg("k_scale") = py::none(),
        py::arg("v_scale") = py::none(), py::arg("scale") = 0.0, py::arg("num_splits") = 0, py::arg("stream") = 0,
        ref ? (ref_doc + "attention_decode.").c_str() : kDecodeDoc);
  }
}
