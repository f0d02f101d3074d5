// CpuDecodeStep (rsvlm_edge/cpu_decoder.h): decoder.py's decode_step over the native op set, in C++.
// Every op is the CPU launcher the Python op set calls, on the same values in the same order; the only
// differences are exact: the residual adds run inside the RMSNorm after them, RoPE inside the KV append,
// and at batch 1 q / k / v (gate / up) are read straight out of the fused projection's output rows
// where Python makes no copy either.
#include <algorithm>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "rsvlm_edge/cpu_decoder.h"
#include "rsvlm_edge/kv_attention.h"
#include "rsvlm_edge/linear.h"
#include "rsvlm_edge/qlinear.h"
#include "rsvlm_edge/rms_norm.h"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {

struct CpuDecodeStep::Buffers {
  std::vector<float> h;        // (B, C) normed residual stream
  std::vector<float> qkv;      // (B, H D + 2 H_kv D) a fused q/k/v projection's output
  std::vector<float> q, k, v;  // (B, H D), (B, H_kv D) x 2: contiguous q / k / v (batch > 1, or unfused)
  std::vector<float> attn;     // (B, H D)
  std::vector<float> proj;     // (B, C) o / down projection output, added into x by the next RMSNorm
  std::vector<float> gate_up;  // (B, 2 I)
  std::vector<float> gate, up; // (B, I) each
  std::vector<float> act;      // (B, I)
  std::vector<float> block_x;  // (B, max K / S) a column block's slice of x (batch > 1)
  std::vector<float> block_y;  // (B, max N) a later column block's product
  std::vector<int32_t> seq_lens;  // (B) positions + 1
};

namespace {

std::string dims(int n, int k) { return "N " + std::to_string(n) + " x K " + std::to_string(k); }

// `what` (e.g. "layer 3 o") against the expected (n, k); the format's own rules.
Status check_linear(const CpuLinearWeights& l, const std::string& what, int n, int k) {
  if (!l.present()) return Status::Invalid(what + ": no weights");
  if (l.n != n || l.k != k) return Status::Invalid(what + ": " + dims(n, k) + " expected, got " + dims(l.n, l.k));
  const bool floating = l.dtype == DType::f32 || l.dtype == DType::f16;
  if (!floating && !l.quantised())
    return Status::Invalid(what + ": weights must be f32, f16, i8 (w8) or u8 (w4), got " + dtype_name(l.dtype));
  if (l.quantised() != (l.scale != nullptr))
    return Status::Invalid(what + (l.quantised() ? ": quantised weights need their scales" : ": float weights take no scales"));
  if (l.blocks < 1 || k % l.blocks != 0 || (l.blocks > 1 && !floating))
    return Status::Invalid(what + ": " + std::to_string(l.blocks) + " column blocks do not divide K " + std::to_string(k) +
                           (floating ? "" : " (quantised weights have none)"));
  if (l.quantised() && (l.groups < 1 || k % l.groups != 0 || (l.groups > 1 && (k / l.groups) % kQActBlock != 0)))
    return Status::Invalid(what + ": " + std::to_string(l.groups) + " scale groups do not split K " + std::to_string(k) +
                           " into whole rows or multiples of " + std::to_string(kQActBlock) + " inputs (qlinear.h)");
  return Status::Ok();
}

Status check_cache(const KvCacheView& c, const DecoderShape& s, int max_batch, int layer) {
  const std::string what = "layer " + std::to_string(layer) + " KV cache";
  if (c.k == nullptr || c.v == nullptr) return Status::Invalid(what + ": no K / V arrays");
  if (c.paged()) return Status::Invalid(what + ": must be contiguous (the paged cache is the CUDA decoder's)");
  if (c.num_kv_heads != s.num_kv_heads || c.head_dim != s.head_dim)
    return Status::Invalid(what + ": H_kv " + std::to_string(s.num_kv_heads) + " x D " + std::to_string(s.head_dim) +
                           " expected, got " + std::to_string(c.num_kv_heads) + " x " + std::to_string(c.head_dim));
  if (c.slots < max_batch || c.s_max < 1)
    return Status::Invalid(what + ": holds " + std::to_string(c.slots) + " sequences x " + std::to_string(c.s_max) +
                           " positions, max_batch " + std::to_string(max_batch) + " needs at least that many sequences");
  if (c.dtype == DType::i8 ? (c.k_scale == nullptr || c.v_scale == nullptr) : c.dtype != DType::f32)
    return Status::Invalid(what + ": f32, or i8 with k_scale and v_scale");
  return Status::Ok();
}

template <typename T>
Status sized(std::vector<T>& v, int64_t n) {
  try {
    v.assign(static_cast<size_t>(n), T{});
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory("CpuDecodeStep: cannot allocate its buffers");
  }
  return Status::Ok();
}

// Rows [0, m) of x (m, ld) columns [c0, c0 + cols) as a contiguous (m, cols) array: x itself at one row.
const float* columns(const float* x, int64_t m, int64_t ld, int64_t c0, int64_t cols, float* scratch) {
  if (m == 1) return x + c0;
  for (int64_t r = 0; r < m; ++r) std::copy_n(x + r * ld + c0, cols, scratch + r * cols);
  return scratch;
}

}  // namespace

CpuDecodeStep::~CpuDecodeStep() = default;

Status CpuDecodeStep::create(const DecoderShape& shape, int max_batch, std::vector<CpuDecoderLayer> layers,
                             const float* final_norm, const CpuLinearWeights& lm_head, bool bf16x3,
                             std::unique_ptr<CpuDecodeStep>* out) {
  RSVLM_RETURN_IF_ERROR(decoder_shape_validate(shape));
  if (out == nullptr) return Status::Invalid("CpuDecodeStep::create: out is null");
  if (max_batch < 1) return Status::Invalid("CpuDecodeStep: max_batch must be >= 1, got " + std::to_string(max_batch));
  if (static_cast<int64_t>(layers.size()) != shape.num_layers)
    return Status::Invalid("CpuDecodeStep: " + std::to_string(shape.num_layers) + " layers expected, got " +
                           std::to_string(layers.size()));
  if (final_norm == nullptr) return Status::Invalid("CpuDecodeStep: no final norm weight");
  const int c = shape.hidden_size, qd = shape.num_heads * shape.head_dim, kvd = shape.num_kv_heads * shape.head_dim;
  const int inter = shape.intermediate_size;
  RSVLM_RETURN_IF_ERROR(check_linear(lm_head, "lm_head", shape.vocab_size, c));
  int max_k_block = c, max_n = shape.vocab_size;
  for (int i = 0; i < shape.num_layers; ++i) {
    const CpuDecoderLayer& l = layers[i];
    const std::string p = "layer " + std::to_string(i) + " ";
    if (l.input_norm == nullptr || l.post_norm == nullptr) return Status::Invalid(p + "norms: no weights");
    if (l.qkv.present()) {
      RSVLM_RETURN_IF_ERROR(check_linear(l.qkv, p + "qkv", qd + 2 * kvd, c));
    } else {
      RSVLM_RETURN_IF_ERROR(check_linear(l.q, p + "q", qd, c));
      RSVLM_RETURN_IF_ERROR(check_linear(l.k, p + "k", kvd, c));
      RSVLM_RETURN_IF_ERROR(check_linear(l.v, p + "v", kvd, c));
    }
    RSVLM_RETURN_IF_ERROR(check_linear(l.o, p + "o", c, qd));
    if (l.gate_up.present()) {
      RSVLM_RETURN_IF_ERROR(check_linear(l.gate_up, p + "gate_up", 2 * inter, c));
    } else {
      RSVLM_RETURN_IF_ERROR(check_linear(l.gate, p + "gate", inter, c));
      RSVLM_RETURN_IF_ERROR(check_linear(l.up, p + "up", inter, c));
    }
    RSVLM_RETURN_IF_ERROR(check_linear(l.down, p + "down", c, inter));
    RSVLM_RETURN_IF_ERROR(check_cache(l.cache, shape, max_batch, i));
    for (const CpuLinearWeights* w : {&l.qkv, &l.q, &l.k, &l.v, &l.o, &l.gate_up, &l.gate, &l.up, &l.down})
      if (w->present()) {
        max_k_block = std::max(max_k_block, w->k / w->blocks);
        max_n = std::max(max_n, w->n);
      }
  }
  std::unique_ptr<CpuDecodeStep> d(new (std::nothrow) CpuDecodeStep());
  std::unique_ptr<Buffers> b(new (std::nothrow) Buffers());
  if (!d || !b) return Status::OutOfMemory("CpuDecodeStep: cannot allocate");
  const int64_t mb = max_batch;
  for (auto [vec, n] : {std::pair{&b->h, mb * c}, {&b->qkv, mb * (qd + 2 * kvd)}, {&b->q, mb * qd}, {&b->k, mb * kvd},
                        {&b->v, mb * kvd}, {&b->attn, mb * qd}, {&b->proj, mb * c}, {&b->gate_up, mb * 2 * inter},
                        {&b->gate, mb * inter}, {&b->up, mb * inter}, {&b->act, mb * inter},
                        {&b->block_x, mb * max_k_block}, {&b->block_y, mb * max_n}})
    RSVLM_RETURN_IF_ERROR(sized(*vec, n));
  RSVLM_RETURN_IF_ERROR(sized(b->seq_lens, mb));
  d->shape_ = shape;
  d->max_batch_ = max_batch;
  d->bf16x3_ = bf16x3;
  d->layers_ = std::move(layers);
  d->final_norm_ = final_norm;
  d->lm_head_ = lm_head;
  d->buf_ = std::move(b);
  *out = std::move(d);
  return Status::Ok();
}

namespace {

// y (m, N) = x (m, K) W^T + bias, as decoder.py's _linear over the native op set (column blocks: the
// first block with the bias into y, each later one into block_y and added, in block order).
Status run_linear(const CpuLinearWeights& l, const float* x, int64_t m, float* y, bool bf16x3,
                  CpuDecodeStep::Buffers& b) {
  if (l.quantised()) {
    QLinearParams p;
    p.x = x;
    p.w = l.w;
    p.w_scale = l.scale;
    p.bias = l.bias;
    p.out = y;
    p.m = m;
    p.n = l.n;
    p.k = l.k;
    p.groups = l.groups;
    p.format = l.dtype == DType::i8 ? QWeight::i8 : QWeight::i4;
    return qlinear_cpu(p);
  }
  const int kb = l.k / l.blocks;
  const int64_t block_elems = int64_t(l.n) * kb;
  const int64_t wsize = l.dtype == DType::f16 ? 2 : 4;
  for (int s = 0; s < l.blocks; ++s) {
    LinearParams p;
    p.x = columns(x, m, l.k, int64_t(s) * kb, kb, b.block_x.data());
    p.w = static_cast<const char*>(l.w) + s * block_elems * wsize;
    p.bias = s == 0 ? l.bias : nullptr;
    p.out = s == 0 ? y : b.block_y.data();
    p.m = m;
    p.n = l.n;
    p.k = kb;
    p.w_dtype = l.dtype;
    p.bf16x3 = bf16x3;
    RSVLM_RETURN_IF_ERROR(linear_cpu(p));
    if (s > 0)
      for (int64_t i = 0; i < m * l.n; ++i) y[i] += b.block_y[i];
  }
  return Status::Ok();
}

// out (rows, dim) = rms_norm(x [+= add]) with `weight`.
Status norm(float* x, const float* add, const float* weight, int64_t rows, int dim, float eps, float* out) {
  RmsNormParams p;
  p.x = x;
  p.add = add;
  p.weight = weight;
  p.out = out;
  p.rows = rows;
  p.dim = dim;
  p.eps = eps;
  return rms_norm_cpu(p);
}

}  // namespace

Status CpuDecodeStep::run(float* x, const int32_t* positions, int batch, float* logits) {
  if (x == nullptr || positions == nullptr || logits == nullptr)
    return Status::Invalid("CpuDecodeStep::run: x, positions and logits are required");
  if (batch < 1 || batch > max_batch_)
    return Status::Invalid("CpuDecodeStep::run: batch " + std::to_string(batch) + " is outside [1, max_batch " +
                           std::to_string(max_batch_) + "]");
  const DecoderShape& s = shape_;
  for (int i = 0; i < batch; ++i)
    for (const CpuDecoderLayer& l : layers_)
      if (positions[i] < 0 || positions[i] >= l.cache.s_max)
        return Status::CapacityExceeded("CpuDecodeStep::run: position " + std::to_string(positions[i]) + " of sequence " +
                               std::to_string(i) + " is outside the KV cache's [0, " + std::to_string(l.cache.s_max) +
                               ")");
  Buffers& b = *buf_;
  const int64_t m = batch;
  const int c = s.hidden_size, qd = s.num_heads * s.head_dim, kvd = s.num_kv_heads * s.head_dim;
  const int inter = s.intermediate_size, qkv_n = qd + 2 * kvd;
  for (int i = 0; i < batch; ++i) b.seq_lens[i] = positions[i] + 1;
  const float* pending = nullptr;  // the last projection, not yet added into x
  for (const CpuDecoderLayer& l : layers_) {
    RSVLM_RETURN_IF_ERROR(norm(x, pending, l.input_norm, m, c, s.rms_norm_eps, b.h.data()));
    float *q = b.q.data(), *k = b.k.data(), *v = b.v.data();
    if (l.qkv.present()) {
      RSVLM_RETURN_IF_ERROR(run_linear(l.qkv, b.h.data(), m, b.qkv.data(), bf16x3_, b));
      if (batch == 1) {  // the row's column ranges are contiguous
        q = b.qkv.data();
        k = q + qd;
        v = k + kvd;
      } else {
        for (int64_t r = 0; r < m; ++r) {
          const float* row = b.qkv.data() + r * qkv_n;
          std::copy_n(row, qd, q + r * qd);
          std::copy_n(row + qd, kvd, k + r * kvd);
          std::copy_n(row + qd + kvd, kvd, v + r * kvd);
        }
      }
    } else {
      RSVLM_RETURN_IF_ERROR(run_linear(l.q, b.h.data(), m, q, bf16x3_, b));
      RSVLM_RETURN_IF_ERROR(run_linear(l.k, b.h.data(), m, k, bf16x3_, b));
      RSVLM_RETURN_IF_ERROR(run_linear(l.v, b.h.data(), m, v, bf16x3_, b));
    }
    KvAppendParams ap;  // k, v (B, 1, H_kv, D) at positions, k and q (B, 1, H, D) rotated there first
    ap.k_new = k;
    ap.v_new = v;
    ap.start_pos = positions;
    ap.cache = l.cache;
    ap.act_dtype = DType::f32;
    ap.batch = batch;
    ap.s_new = 1;
    ap.rope.positions = positions;
    ap.rope.q = q;
    ap.rope.num_heads = s.num_heads;
    ap.rope.theta = s.rope_theta;
    RSVLM_RETURN_IF_ERROR(kv_append_cpu(ap));
    AttentionParams at;  // q (B, 1, H, D) over seq_lens tokens -> attn (B, 1, H, D)
    at.q = q;
    at.out = b.attn.data();
    at.kv_lens = b.seq_lens.data();
    at.act_dtype = DType::f32;
    at.batch = batch;
    at.s_q = 1;
    at.num_heads = s.num_heads;
    at.cache = l.cache;
    RSVLM_RETURN_IF_ERROR(attention_cpu(at));
    RSVLM_RETURN_IF_ERROR(run_linear(l.o, b.attn.data(), m, b.proj.data(), bf16x3_, b));
    RSVLM_RETURN_IF_ERROR(norm(x, b.proj.data(), l.post_norm, m, c, s.rms_norm_eps, b.h.data()));
    float *gate = b.gate.data(), *up = b.up.data();
    if (l.gate_up.present()) {
      RSVLM_RETURN_IF_ERROR(run_linear(l.gate_up, b.h.data(), m, b.gate_up.data(), bf16x3_, b));
      if (batch == 1) {
        gate = b.gate_up.data();
        up = gate + inter;
      } else {
        for (int64_t r = 0; r < m; ++r) {
          std::copy_n(b.gate_up.data() + r * 2 * inter, inter, gate + r * inter);
          std::copy_n(b.gate_up.data() + r * 2 * inter + inter, inter, up + r * inter);
        }
      }
    } else {
      RSVLM_RETURN_IF_ERROR(run_linear(l.gate, b.h.data(), m, gate, bf16x3_, b));
      RSVLM_RETURN_IF_ERROR(run_linear(l.up, b.h.data(), m, up, bf16x3_, b));
    }
    SwiGluParams sp;
    sp.gate = gate;
    sp.up = up;
    sp.out = b.act.data();
    sp.n = m * inter;
    RSVLM_RETURN_IF_ERROR(swiglu_cpu(sp));
    RSVLM_RETURN_IF_ERROR(run_linear(l.down, b.act.data(), m, b.proj.data(), bf16x3_, b));
    pending = b.proj.data();
  }
  RSVLM_RETURN_IF_ERROR(norm(x, pending, final_norm_, m, c, s.rms_norm_eps, b.h.data()));
  return run_linear(lm_head_, b.h.data(), m, logits, bf16x3_, b);
}

}  // namespace rsvlm_edge
