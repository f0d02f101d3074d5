// Python bindings of the patch_embed op family (C++ API: rsvlm_edge/patch_embed.h): patch_embed,
// patch_embed_reference, interpolate_pos_embed. Thin: validate every argument (tensor_arg.h), then
// call the launcher.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <vector>

#include "bind_util.h"
#include "rsvlm_edge/patch_embed.h"
#include "rsvlm_edge/qgemm.h"
#include "rsvlm_edge/version.h"
#include "tensor_arg.h"

using rsvlm_edge::bind::maybe;

namespace {

// mean / std: any sequence of 3 numbers (tuple, list, numpy array).
void rgb_triple(const ArgChecker& c, py::handle obj, const char* name, float dst[3]) {
  std::vector<float> v;
  try {
    v = obj.cast<std::vector<float>>();
  } catch (const py::cast_error&) {
    c.fail(std::string("argument '") + name + "' must be 3 floats (R, G, B) in 0..1 units");
  }
  if (v.size() != 3)
    c.fail(std::string("argument '") + name + "' must be 3 floats (R, G, B) in 0..1 units, got " +
           std::to_string(v.size()) + " values");
  for (int i = 0; i < 3; ++i) dst[i] = v[i];
}

py::object patch_embed(Impl impl, py::handle images_obj, py::handle weight_obj, py::handle bias_obj,
                       py::handle class_obj, py::handle pos_obj, py::handle mean_obj, py::handle std_obj,
                       py::handle gamma_obj, py::handle beta_obj, double eps, py::handle out_obj, int64_t stream) {
  ArgChecker c(rsvlm_edge::bind::op_name("patch_embed", impl));
  const TensorArg images = rsvlm_edge::tensor_arg(images_obj, "images", stream);
  const TensorArg weight = rsvlm_edge::tensor_arg(weight_obj, "weight", stream);
  const TensorArg class_emb = rsvlm_edge::tensor_arg(class_obj, "class_emb", stream);
  const TensorArg pos_emb = rsvlm_edge::tensor_arg(pos_obj, "pos_emb", stream);
  TensorArg bias, gamma, beta, out;
  const bool has_bias = !bias_obj.is_none(), has_ln = !gamma_obj.is_none();
  if (has_bias) bias = rsvlm_edge::tensor_arg(bias_obj, "bias", stream);
  if (has_ln != !beta_obj.is_none()) c.fail("ln_gamma and ln_beta must be given together (or neither)");
  if (has_ln) {
    gamma = rsvlm_edge::tensor_arg(gamma_obj, "ln_gamma", stream);
    beta = rsvlm_edge::tensor_arg(beta_obj, "ln_beta", stream);
  }
  const bool has_out = !out_obj.is_none();
  if (has_out) out = rsvlm_edge::tensor_arg(out_obj, "out", stream);
  rsvlm_edge::bind::check_devices(c, impl,
                                  {&images, &weight, maybe(bias, has_bias), &class_emb, &pos_emb, maybe(gamma, has_ln),
                                   maybe(beta, has_ln), maybe(out, has_out)});
  const bool cuda = images.device.type == DeviceType::cuda;

  c.check(images, {"B", "H", "W", 3}, {DType::u8});  // images: (B, H, W, 3) uint8
  // weight: (D, 3, P, P) float, or (CPU) the (D, 3*P*P) int8 weight packed by qgemm_pack: (bytes,) uint8
  const bool packed = weight.dtype == DType::u8 && weight.ndim() == 1;
  int64_t D = 0, P = 0;
  DType act = weight.dtype;  // dtype of bias, class_emb, pos_emb, ln_*, out
  if (packed) {
    RSVLM_CHECK(c, !cuda, "a packed int8 conv weight (qgemm_pack) runs on the CPU only; pass the float (D, 3, P, P) "
                          "weight with CUDA tensors");
    c.check(weight, {"bytes"}, {DType::u8});
    int n = 0, k = 0;
    const rsvlm_edge::Status st =
        rsvlm_edge::qgemm_packed_shape(weight.ptr<const uint8_t>(), c.dim("bytes"), &n, &k);
    RSVLM_CHECK(c, st.ok(), "argument 'weight' is not a buffer from qgemm_pack: " + st.message);
    P = int64_t(std::lround(std::sqrt(double(k) / 3.0)));
    RSVLM_CHECK(c, P >= 1 && 3 * P * P == k,
                "argument 'weight' packs a (" + std::to_string(n) + ", " + std::to_string(k) +
                    ") weight; a conv weight has 3*P*P inputs (the (D, 3, P, P) weight reshaped to (D, 3*P*P))");
    D = n;
    c.bind("D", D);  // the other arguments' D is checked against the packed weight's
    act = DType::f32;
  } else {
    if (cuda)
      c.check(weight, {"D", 3, "P", "P"}, {DType::f32, DType::f16, DType::bf16});
    else
      c.check(weight, {"D", 3, "P", "P"}, {DType::f32});
    D = c.dim("D");
    P = c.dim("P");
  }
  const int64_t B = c.dim("B"), H = c.dim("H"), W = c.dim("W");
  // Sizes first, so that nothing below divides by zero (P) or makes empty rows (D).
  RSVLM_CHECK(c, P >= 1 && P <= (int64_t(1) << 20),
              "argument 'weight' must have shape (D, 3, P, P) with 1 <= P <= 2^20, got " +
                  (packed ? "P=" + std::to_string(P) : weight.describe()));
  RSVLM_CHECK(c, D >= 1 && D <= (int64_t(1) << 30),
              "argument 'weight' must have shape (D, 3, P, P) with 1 <= D <= 2^30, got " +
                  (packed ? "D=" + std::to_string(D) : weight.describe()));
  RSVLM_CHECK(c, H >= P && W >= P,
              "argument 'images' must have shape (B, H, W, 3) with H, W >= the patch size P=" + std::to_string(P) +
                  ", got " + images.describe());
  if (H % P != 0 || W % P != 0)
    c.fail("images of " + std::to_string(H) + "x" + std::to_string(W) + " are not a multiple of the patch size " +
           std::to_string(P) + " (from weight (D, 3, P, P)); resize the images to the model resolution");
  const int64_t N = (H / P) * (W / P);
  if (has_bias) c.check(bias, {"D"}, {act});
  c.check(class_emb, {"D"}, {act});
  if (pos_emb.ndim() == 2 && pos_emb.shape[0] != N + 1)
    c.fail("argument 'pos_emb' has " + std::to_string(pos_emb.shape[0]) + " rows but " + std::to_string(H) + "x" +
           std::to_string(W) + " images with patch " + std::to_string(P) + " give N+1 = " + std::to_string(N + 1) +
           " tokens; resize the images to the model resolution or resize the position embedding with "
           "interpolate_pos_embed(pos_emb, new_grid)");
  c.check(pos_emb, {Dim("N+1", N + 1), "D"}, {act});
  if (has_ln) {
    c.check(gamma, {"D"}, {act});
    c.check(beta, {"D"}, {act});
  }

  py::object result;
  if (has_out) {
    c.check(out, {"B", Dim("N+1", N + 1), "D"}, {act});
    c.writable(out);
    result = py::reinterpret_borrow<py::object>(out_obj);
  } else if (cuda) {
    c.fail("argument 'out' is required for CUDA inputs: pass a preallocated (B, N+1, D) = (" + std::to_string(B) +
           ", " + std::to_string(N + 1) + ", " + std::to_string(D) + ") " + rsvlm_edge::dtype_name(act) +
           " tensor on the same device (rsvlm_edge.native.patch_embed allocates it for you)");
  } else {
    py::array_t<float> arr({B, N + 1, D});
    out = rsvlm_edge::tensor_arg(arr, "out");
    result = arr;
  }

  rsvlm_edge::PatchEmbedParams p;
  p.images = images.ptr<const uint8_t>();
  p.weight = packed ? nullptr : weight.data;
  p.packed_weight = packed ? weight.ptr<const uint8_t>() : nullptr;
  p.packed_bytes = packed ? weight.numel() : 0;
  p.bias = has_bias ? bias.data : nullptr;
  p.class_emb = class_emb.data;
  p.pos_emb = pos_emb.data;
  p.ln_gamma = has_ln ? gamma.data : nullptr;
  p.ln_beta = has_ln ? beta.data : nullptr;
  p.out = out.data;
  rgb_triple(c, mean_obj, "mean", p.mean);
  rgb_triple(c, std_obj, "std", p.std);
  for (int i = 0; i < 3; ++i) {
    RSVLM_CHECK(c, std::isfinite(p.mean[i]), "argument 'mean' must be 3 finite floats (R, G, B) in 0..1 units");
    RSVLM_CHECK(c, std::isfinite(p.std[i]) && p.std[i] != 0.f,
                "argument 'std' must be 3 finite, non-zero floats (R, G, B) in 0..1 units");
  }
  RSVLM_CHECK(c, eps > 0.0 && eps < 3.4e38, "argument 'eps' must be > 0 and finite, got " + std::to_string(eps));
  p.eps = static_cast<float>(eps);
  p.batch = B;
  p.height = H;
  p.width = W;
  p.patch = P;
  p.dim = D;
  p.dtype = act;

  if (cuda && !rsvlm_edge::built_with_cuda())
    throw std::runtime_error(
        "patch_embed: got CUDA tensors but this build of rsvlm_edge has no CUDA kernels "
        "(built without CUDA); rebuild with nvcc available or pass CPU arrays");
  rsvlm_edge::bind::run(
      "patch_embed", impl, images, stream, [&] { return rsvlm_edge::patch_embed_cpu(p); },
      [&] { return rsvlm_edge::patch_embed_reference(p); },
      [&](void* st) { return rsvlm_edge::patch_embed_cuda(p, st); });
  return result;
}

py::object interpolate_pos_embed(py::handle pos_obj, int64_t new_grid, py::handle out_obj) {
  ArgChecker c("interpolate_pos_embed");
  const TensorArg pos = rsvlm_edge::tensor_arg(pos_obj, "pos");
  if (pos.device.type != DeviceType::cpu)
    c.fail("argument 'pos' is on " + pos.device_str() +
           "; this op runs once at load time on the CPU: pass a "
           "CPU array (e.g. pos.cpu())");
  c.check(pos, {"T", "D"}, {DType::f32});
  const int64_t T = c.dim("T"), D = c.dim("D");
  const auto G = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(T > 0 ? T - 1 : 0))));
  if (T < 2 || G * G != T - 1)
    c.fail("argument 'pos' has " + std::to_string(T) + " rows; expected 1 + G*G (class token + a square G x G grid)");
  RSVLM_CHECK(c, new_grid >= 1 && new_grid <= 4096,
              "argument 'new_grid' must be >= 1 and <= 4096, got " + std::to_string(new_grid));
  RSVLM_CHECK(c, D >= 1, "argument 'pos' must have D >= 1 columns, got " + pos.describe());
  py::object result;
  TensorArg out;
  if (!out_obj.is_none()) {
    out = rsvlm_edge::tensor_arg(out_obj, "out");
    c.same_device({&pos, &out});
    c.check(out, {Dim("1+new_grid^2", 1 + new_grid * new_grid), "D"}, {DType::f32});
    c.writable(out);
    result = py::reinterpret_borrow<py::object>(out_obj);
  } else {
    py::array_t<float> arr({1 + new_grid * new_grid, D});
    out = rsvlm_edge::tensor_arg(arr, "out");
    result = arr;
  }
  rsvlm_edge::PosEmbedInterpParams p;
  p.pos = pos.ptr<const float>();
  p.out = out.ptr<float>();
  p.grid = G;
  p.new_grid = new_grid;
  p.dim = D;
  rsvlm_edge::Status s;
  {
    py::gil_scoped_release nogil;
    s = rsvlm_edge::interpolate_pos_embed_cpu(p);
  }
  rsvlm_edge::throw_if_error(s);
  return result;
}

}  // namespace

void bind_patch_embed(py::module_& m) {
  m.def(
      "patch_embed",
      [](py::handle images, py::handle weight, py::handle bias, py::handle class_emb, py::handle pos_emb,
         py::handle mean, py::handle std, py::handle ln_gamma, py::handle ln_beta, double eps, py::handle out,
         int64_t stream) {
        return patch_embed(Impl::kFast, images, weight, bias, class_emb, pos_emb, mean, std, ln_gamma, ln_beta, eps,
                           out, stream);
      },
      py::arg("images"), py::arg("weight"), py::arg("bias"), py::arg("class_emb"), py::arg("pos_emb"), py::arg("mean"),
      py::arg("std"), py::arg("ln_gamma") = py::none(), py::arg("ln_beta") = py::none(), py::arg("eps") = 1e-5,
      py::arg("out") = py::none(), py::arg("stream") = 0,
      R"doc(Fused patch embedding: uint8 images -> ViT input tokens (open_clip conv1 + class + pos + ln_pre).

images (B, H, W, 3) uint8 RGB at model resolution (B = 0 is valid); weight (D, 3, P, P), or on the CPU the
conv weight reshaped to (D, 3*P*P), quantised to int8 per output channel and packed by qgemm_pack (a 1-D
uint8 buffer): the conv GEMM then runs as qgemm (each normalised patch row quantised to int8); bias (D) or None;
class_emb (D); pos_emb (N+1, D) with N = (H/P)*(W/P); mean, std: 3 floats in 0..1 units;
ln_gamma, ln_beta (D) or None (no ln_pre); out (B, N+1, D) or None.
CPU: float32 parameters, returns a new numpy array unless `out` is given.
CUDA (DLPack / __cuda_array_interface__ tensors): float32/float16/bfloat16 parameters, `out` required,
`stream` is a cudaStream_t as an integer (0 = legacy default). Returns `out`.)doc");
  m.def(
      "patch_embed_reference",
      [](py::handle images, py::handle weight, py::handle bias, py::handle class_emb, py::handle pos_emb,
         py::handle mean, py::handle std, py::handle ln_gamma, py::handle ln_beta, double eps, py::handle out) {
        return patch_embed(Impl::kReference, images, weight, bias, class_emb, pos_emb, mean, std, ln_gamma, ln_beta,
                           eps, out, 0);
      },
      py::arg("images"), py::arg("weight"), py::arg("bias"), py::arg("class_emb"), py::arg("pos_emb"), py::arg("mean"),
      py::arg("std"), py::arg("ln_gamma") = py::none(), py::arg("ln_beta") = py::none(), py::arg("eps") = 1e-5,
      py::arg("out") = py::none(),
      "Naive reference of patch_embed (kernels/patch_embed/patch_embed_ref.cpp: plain loops, fp64), CPU float32 "
      "only; same arguments and checks as patch_embed.");
  m.def("interpolate_pos_embed", &interpolate_pos_embed, py::arg("pos"), py::arg("new_grid"),
        py::arg("out") = py::none(),
        R"doc(Resize a position embedding (1 + G*G, D) float32 to (1 + new_grid^2, D): bicubic,
align_corners=True (exactly torch.nn.functional.interpolate's), class token row passed through. CPU.)doc");
}
