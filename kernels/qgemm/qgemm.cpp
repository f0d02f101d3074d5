// qgemm: argument checks shared by every implementation, the packed weight format (layout, header,
// qgemm_pack) and the activation quantisation every implementation uses (its one definition). CPU
// only: there is no CUDA launcher to stub (see rsvlm_edge/qgemm.h).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/qgemm.h"
#include "rsvlm_edge/qlinear.h"

namespace rsvlm_edge {

namespace {

// The first bytes of a packed buffer (little-endian, as on x86-64 and aarch64); the rest of the 64
// header bytes are zero.
struct QGemmHeader {
  uint32_t magic;
  uint32_t version;
  int32_t n;
  int32_t k;
  int32_t k4;
  int32_t panels;
  int64_t total;      // the buffer's size in bytes
  uint32_t checksum;  // FNV-1a of the bytes above
};
static_assert(sizeof(QGemmHeader) <= kQGemmHeaderBytes, "the header fits its 64 bytes");

uint32_t fnv1a(const void* data, size_t bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 16777619u;
  return h;
}

uint32_t header_checksum(const QGemmHeader& h) { return fnv1a(&h, offsetof(QGemmHeader, checksum)); }

std::string dims(int64_t m, int64_t n, int64_t k) {
  return "M=" + std::to_string(m) + ", N=" + std::to_string(n) + ", K=" + std::to_string(k);
}

}  // namespace

QGemmLayout qgemm_layout(int n, int k) {
  QGemmLayout l;
  if (n < 1 || k < 1 || k > kQGemmMaxK) {
    l.total = -1;
    return l;
  }
  l.k4 = (k + kQGemmKStep - 1) / kQGemmKStep * kQGemmKStep;
  l.panels = (n + kQGemmPanel - 1) / kQGemmPanel;
  const int64_t lanes = int64_t(l.panels) * kQGemmPanel;  // every section is a multiple of 64 bytes
  l.weights = kQGemmHeaderBytes;
  l.colsum = l.weights + lanes * l.k4;
  l.scale = l.colsum + lanes * int64_t(sizeof(int32_t));
  l.total = l.scale + lanes * int64_t(sizeof(float));
  return l;
}

int64_t qgemm_packed_bytes(int n, int k) { return qgemm_layout(n, k).total; }

Status qgemm_pack(const int8_t* w, const float* w_scale, int n, int k, uint8_t* packed, int64_t packed_bytes) {
  const QGemmLayout l = qgemm_layout(n, k);
  if (l.total < 0)
    return Status::Invalid("qgemm_pack: needs N >= 1 and 1 <= K <= " + std::to_string(kQGemmMaxK) +
                           " (exact int32 dots), got N=" + std::to_string(n) + ", K=" + std::to_string(k));
  if (w == nullptr || w_scale == nullptr || packed == nullptr)
    return Status::Invalid("qgemm_pack: w, w_scale and packed must be given");
  if (packed_bytes != l.total)
    return Status::Invalid("qgemm_pack: argument 'packed' must have qgemm_packed_bytes(N=" + std::to_string(n) +
                           ", K=" + std::to_string(k) + ") = " + std::to_string(l.total) + " bytes, got " +
                           std::to_string(packed_bytes));
  if (host::overlaps(packed, packed_bytes, w, int64_t(n) * k) || host::overlaps(packed, packed_bytes, w_scale, int64_t(n) * 4))
    return Status::Invalid("qgemm_pack: argument 'packed' must not overlap w or w_scale");
  for (int64_t i = 0; i < int64_t(n) * k; ++i)
    if (w[i] == -128)
      return Status::Invalid(
          "qgemm_pack: argument 'w' must hold int8 values in [-127, 127] (the symmetric w8 "
          "format), got -128 at (" +
          std::to_string(i / k) + ", " + std::to_string(i % k) + ")");
  std::memset(packed, 0, size_t(l.total));
  QGemmHeader h{};
  h.magic = kQGemmMagic;
  h.version = kQGemmVersion;
  h.n = n;
  h.k = k;
  h.k4 = l.k4;
  h.panels = l.panels;
  h.total = l.total;
  h.checksum = header_checksum(h);
  std::memcpy(packed, &h, sizeof(h));
  int8_t* wp = reinterpret_cast<int8_t*>(packed + l.weights);
  const int64_t panel_bytes = int64_t(l.k4) * kQGemmPanel;
  const int64_t step_bytes = kQGemmPanel * kQGemmKStep;  // 64
  for (int j = 0; j < n; ++j) {
    int8_t* dst = wp + (j / kQGemmPanel) * panel_bytes + (j % kQGemmPanel) * kQGemmKStep;
    const int8_t* src = w + int64_t(j) * k;
    int32_t sum = 0;
    for (int i = 0; i < k; ++i) {
      dst[(i / kQGemmKStep) * step_bytes + i % kQGemmKStep] = src[i];
      sum += src[i];
    }
    std::memcpy(packed + l.colsum + int64_t(j) * 4, &sum, 4);
    std::memcpy(packed + l.scale + int64_t(j) * 4, &w_scale[j], 4);
  }
  return Status::Ok();
}

Status qgemm_packed_shape(const uint8_t* packed, int64_t packed_bytes, int* n, int* k) {
  if (packed == nullptr) return Status::Invalid("qgemm: argument 'packed' must be given");
  if (packed_bytes < kQGemmHeaderBytes)
    return Status::Invalid("qgemm: argument 'packed' has " + std::to_string(packed_bytes) +
                           " bytes, fewer than the 64 of a qgemm_pack header; pass the buffer qgemm_pack returned");
  QGemmHeader h;
  std::memcpy(&h, packed, sizeof(h));
  if (h.magic != kQGemmMagic || h.checksum != header_checksum(h))
    return Status::Invalid(
        "qgemm: argument 'packed' is not a qgemm_pack buffer (bad magic or header checksum); "
        "pass the buffer qgemm_pack returned");
  if (h.version != kQGemmVersion)
    return Status::Invalid("qgemm: argument 'packed' has format version " + std::to_string(h.version) +
                           ", this build reads version " + std::to_string(kQGemmVersion) + "; pack the weights again");
  const QGemmLayout l = qgemm_layout(h.n, h.k);
  if (l.total < 0 || l.k4 != h.k4 || l.panels != h.panels || l.total != h.total)
    return Status::Invalid("qgemm: argument 'packed' has an inconsistent header (N=" + std::to_string(h.n) +
                           ", K=" + std::to_string(h.k) + "); pack the weights again");
  if (packed_bytes != l.total)
    return Status::Invalid("qgemm: argument 'packed' must have " + std::to_string(l.total) +
                           " bytes for N=" + std::to_string(h.n) + ", K=" + std::to_string(h.k) +
                           " (its header), got " + std::to_string(packed_bytes) + " (truncated or padded)");
  *n = h.n;
  *k = h.k;
  return Status::Ok();
}

Status qgemm_validate(const QGemmParams& p, bool packed) {
  const char* op = packed ? "qgemm" : "qgemm_reference";
  if (p.m < 0 || p.n < 1 || p.k < 1)
    return Status::Invalid(std::string(op) + ": needs M >= 0, N >= 1 and K >= 1, got " + dims(p.m, p.n, p.k));
  if (p.k > kQGemmMaxK)
    return Status::Invalid(std::string(op) + ": K=" + std::to_string(p.k) + " is more than " +
                           std::to_string(kQGemmMaxK) + ", the largest K whose int8 dots (K * 127 * 127) fit int32");
  const int64_t x_bytes = host::checked_mul(host::checked_mul(p.m, p.k), 4);
  const int64_t out_bytes = host::checked_mul(host::checked_mul(p.m, p.n), 4);
  if (x_bytes < 0 || out_bytes < 0)
    return Status::Invalid(std::string(op) + ": sizes overflow: " + dims(p.m, p.n, p.k));
  if (packed) {
    int n = 0, k = 0;
    RSVLM_RETURN_IF_ERROR(qgemm_packed_shape(p.packed, p.packed_bytes, &n, &k));
    if (n != p.n || k != p.k)
      return Status::Invalid("qgemm: argument 'packed' holds weights of N=" + std::to_string(n) +
                             ", K=" + std::to_string(k) + " but the call has " + dims(p.m, p.n, p.k));
  } else if (p.w == nullptr || p.w_scale == nullptr) {
    return Status::Invalid("qgemm_reference: w and w_scale must be given");
  }
  if (p.m > 0 && (p.x == nullptr || p.out == nullptr))
    return Status::Invalid(std::string(op) + ": x and out must be given");
  if (host::overlaps(p.out, out_bytes, p.x, x_bytes))
    return Status::Invalid(std::string(op) + ": argument 'out' must not overlap x (no in-place qgemm)");
  if (host::overlaps(p.out, out_bytes, p.bias, int64_t(p.n) * 4))
    return Status::Invalid(std::string(op) + ": argument 'out' must not overlap bias");
  if (packed && host::overlaps(p.out, out_bytes, p.packed, p.packed_bytes))
    return Status::Invalid("qgemm: argument 'out' must not overlap packed");
  return Status::Ok();
}

float qgemm_quantize_row(const float* x, int k, int8_t* xq) { return quantize_activation_block(x, k, xq); }

}  // namespace rsvlm_edge
