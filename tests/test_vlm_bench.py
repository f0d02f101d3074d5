"""``bench_vlm`` on a tiny bundle (never the 1.1B builtin in tests): row fields and the peer."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from llava_fixtures import make_tiny_llava  # noqa: E402

from rsvlm_edge.bench.llava import bench_vlm  # noqa: E402
from rsvlm_edge.errors import InputError  # noqa: E402
from rsvlm_edge.export.llava import export_vlm  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_bench")
    make_tiny_llava(root / "hf", layout="hf")
    return export_vlm(root / "hf", root / "tiny.rsvlm", weights="fp16", verify=False).path


def test_bench_rows_have_the_reported_fields(bundle):
    result = bench_vlm(str(bundle), [1, 3], warmup=0, iters=1, max_new_tokens=4)
    assert result["model"] == str(bundle) and result["device"].startswith("cpu") and result["kind"] == "vlm"
    rows = result["rows"]
    assert [r["batch"] for r in rows] == [1, 3]
    for r in rows:
        assert r["backend"].startswith("rsvlm-edge") and r["precision"] == "fp16"
        assert r["prompt_tokens"] > 16  # the 16 image tokens plus the prompt
        assert r["vision_ms"] > 0 and r["ttft_ms"] >= r["vision_ms"] and r["decode_tok_s"] > 0
        assert r["peak_rss_mb"] > 0 and r["bandwidth_floor_pct"] > 0
        assert r["bandwidth_floor_pct"] == pytest.approx(100 * r["weights_gb_s"] / result["read_gb_s"])
    assert not any("random weights" in n for n in result["notes"])  # a real bundle, not a builtin


def test_bench_peer_times_transformers_on_the_same_checkpoint(bundle):
    result = bench_vlm(str(bundle), [2], warmup=0, iters=1, max_new_tokens=3, peer=True)
    engines = [r["backend"].split()[0] for r in result["rows"]]
    assert engines == ["rsvlm-edge", "transformers"]
    assert result["rows"][0]["decode_vs_peer"] > 0 and result["rows"][1]["decode_tok_s"] > 0


def test_bench_refuses_bad_arguments(bundle):
    with pytest.raises(InputError):
        bench_vlm(str(bundle), [0], warmup=0, iters=1, max_new_tokens=4)
    with pytest.raises(InputError, match="unknown built-in model"):
        bench_vlm("builtin:giant-vlm", [1], warmup=0, iters=1, max_new_tokens=4)
