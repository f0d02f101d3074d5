"""export --rotate (models/llava/rotate.py): the rotations are orthogonal, the fast Walsh-Hadamard transform is
Sylvester's matrix, a rotated decoder computes the same logits (fp32, with every kind of bias, grouped-query
and plain heads, power-of-two and other widths), unknown tensors are refused, and an exported VLM bundle
gives the same answers through the image path."""

from __future__ import annotations

import numpy as np
import pytest

from rsvlm_edge.backends import decoder_numpy
from rsvlm_edge.models.llava.config import DecoderConfig
from rsvlm_edge.models.llava.decoder import LlamaDecoder
from rsvlm_edge.models.llava.rotate import DecoderRotation, Rotation, _walsh_hadamard, rotate_decoder
from rsvlm_edge.models.llava.tensor_layout import decoder_layout


def sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize("n", [1, 2, 8, 64, 96, 100])
def test_rotations_are_orthogonal_and_seeded(n):
    r = Rotation.seeded(n, 7)
    assert r.kind == ("hadamard" if n & (n - 1) == 0 else "orthogonal")
    m = r.matrix().astype(np.float64)
    np.testing.assert_allclose(m @ m.T, np.eye(n), atol=2e-6)
    np.testing.assert_array_equal(m, Rotation.seeded(n, 7).matrix())
    assert n == 1 or not np.array_equal(m, Rotation.seeded(n, 8).matrix())
    x = np.random.default_rng(0).standard_normal((5, n)).astype(np.float32)
    np.testing.assert_allclose(r.right(x), x @ m, rtol=1e-5, atol=1e-5)
    w = np.random.default_rng(1).standard_normal((n, 3)).astype(np.float32)
    np.testing.assert_allclose(r.left_transposed(w), m.T @ w, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="applied to rows of shape"):
        r.right(np.zeros((2, n + 1), np.float32))


def test_walsh_hadamard_is_sylvesters_matrix():
    x = np.random.default_rng(2).standard_normal((3, 128)).astype(np.float32)
    np.testing.assert_allclose(_walsh_hadamard(x), x @ sylvester(128), rtol=1e-5, atol=1e-4)


def config(hidden: int, heads: int, kv_heads: int, head_dim: int, bias: bool) -> DecoderConfig:
    return DecoderConfig(model_type="qwen2" if bias else "llama", vocab_size=200, hidden_size=hidden,
                         intermediate_size=160, num_layers=2, num_heads=heads, num_kv_heads=kv_heads,
                         head_dim=head_dim, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=64,
                         attention_bias=bias, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("cfg", [config(128, 4, 2, 32, True), config(96, 3, 3, 32, False), config(64, 4, 1, 16, True)],
                         ids=["gqa-bias-hadamard", "mha-orthogonal", "mqa-bias"])
def test_rotated_decoder_computes_the_same_logits(cfg):
    rng = np.random.default_rng(3)

    def w(o: int, i: int) -> np.ndarray:
        return (rng.standard_normal((o, i)) * 0.1).astype(np.float32)

    t = decoder_layout(cfg, embed=lambda: w(cfg.vocab_size, cfg.hidden_size), lm_head=lambda: w(cfg.vocab_size, cfg.hidden_size),
                       linear=w, norm=lambda: (1 + 0.3 * rng.standard_normal(cfg.hidden_size)).astype(np.float32),
                       bias=lambda n: (0.1 * rng.standard_normal(n)).astype(np.float32))
    # Biases on every other linear too: the writers' (o, down) are rotated, the readers' kept.
    for i in range(cfg.num_layers):
        for name, n in (("o_proj", cfg.hidden_size), ("down_proj", cfg.hidden_size), ("gate_proj", 160),
                        ("up_proj", 160)):
            t[f"layers.{i}.{name}.bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
    t["lm_head.bias"] = (0.1 * rng.standard_normal(cfg.vocab_size)).astype(np.float32)
    rot = rotate_decoder(cfg, t, DecoderRotation.seeded(cfg, 5), dtype=np.float32)
    assert sorted(rot) == sorted(t)
    assert all((rot[n] == 1).all() for n in rot if n.endswith("norm.weight"))
    ids = rng.integers(3, cfg.vocab_size, (2, 9))
    logits = []
    for tensors in (t, rot):
        dec = LlamaDecoder(cfg, tensors, max_batch=2, max_seq=16, ops=decoder_numpy.NUMPY)
        first = dec.prefill(dec.embed_tokens(ids), np.array([9, 6]))
        logits.append((first, dec.decode(first.argmax(-1))))
    for want, got in zip(*logits):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_rotation_refuses_a_tensor_it_has_no_rule_for():
    cfg = config(64, 4, 2, 16, False)
    rng = np.random.default_rng(4)
    t = decoder_layout(cfg, embed=lambda: rng.standard_normal((200, 64)).astype(np.float32),
                       lm_head=lambda: rng.standard_normal((200, 64)).astype(np.float32),
                       linear=lambda o, i: rng.standard_normal((o, i)).astype(np.float32),
                       norm=lambda: np.ones(64, np.float32))
    with pytest.raises(ValueError, match="'layers.0.extra.weight' has no rule"):
        rotate_decoder(cfg, {**t, "layers.0.extra.weight": np.zeros((4, 4), np.float32)}, DecoderRotation.seeded(cfg, 0))


# ---- export --rotate ------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llava_fixtures import TinySpec, make_tiny_llava  # noqa: E402
from util import assert_contract, run_cli  # noqa: E402

from rsvlm_edge.bundle import Bundle, open_bundle  # noqa: E402
from rsvlm_edge.export.llava import export_vlm  # noqa: E402
from rsvlm_edge.models.llava.runtime import VlmRuntime  # noqa: E402


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def checkpoint(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("rotate")
    make_tiny_llava(root / "hf", layout="hf", spec=TinySpec(text_model_type=request.param))
    return root / "hf"


def first_step(bundle: Bundle) -> np.ndarray:
    rt = VlmRuntime(bundle, max_batch=2)
    images = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(2)]
    chunks = [rt.tokenize(rt.build_prompt(q)) for q in ("How many ships are in the harbour?", "Describe it.")]
    return rt.first_step_logits(images, chunks)


def test_rotated_fp32_bundle_answers_as_the_plain_one(checkpoint, tmp_path):
    """Through the image path too: the projector's last linear writes into the rotated basis."""
    from safetensors.numpy import load_file

    plain = export_vlm(checkpoint, tmp_path / "plain.rsvlm", weights="fp32", verify=False)
    steps: list[str] = []
    rotated = export_vlm(checkpoint, tmp_path / "rot.rsvlm", weights="fp32", verify=True, rotate=True,
                         progress=steps.append)
    record = rotated.manifest.parts["decoder"].rotation
    assert record.residual == "hadamard" and record.heads == "hadamard" and record.seed == 0
    assert plain.manifest.parts["decoder"].rotation is None
    assert any("rotating" in s for s in steps)
    tensors = load_file(str(rotated.file("decoder.safetensors")))
    assert (tensors["layers.0.input_layernorm.weight"] == 1).all()
    want, got = first_step(plain), first_step(rotated)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_rotated_w4_bundle_runs_with_gptq(checkpoint, tmp_path):
    fp32 = first_step(export_vlm(checkpoint, tmp_path / "fp32.rsvlm", weights="fp32", verify=False))
    b = export_vlm(checkpoint, tmp_path / "w4.rsvlm", weights="w4", verify=False, rotate=True, w4_method="gptq")
    assert b.manifest.parts["decoder"].rotation is not None and b.manifest.parts["decoder"].quantization.method == "gptq"
    got = first_step(b)
    cos = [float(a @ g / np.linalg.norm(a) / np.linalg.norm(g)) for a, g in zip(fp32, got)]
    assert min(cos) > 0.5, cos  # a real approximation, as test_vlm_parity asks of w4


def test_cli_exports_with_rotate(checkpoint, tmp_path):
    r = run_cli("export", "vlm", str(checkpoint), "-o", str(tmp_path / "c.rsvlm"), "--weights", "w8", "--rotate",
                "--no-verify")
    assert r.returncode == 0, r.stderr
    assert open_bundle(tmp_path / "c.rsvlm").manifest.parts["decoder"].rotation.seed == 0
    r = run_cli("export", "vlm", str(checkpoint), "-o", str(tmp_path / "d.rsvlm"), "--rotate", "--w4-method", "gptq")
    assert_contract(r, "apply to --weights w4", "--weights w4")
