"""scripts/gpu_report.py and bench/profile_decoder_cuda.py's report code, on the CPU (the GPU runs them on
scripts/gpu-check.sh's outputs; a report that breaks there costs a GPU session)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from profile_decoder_cuda import markdown, short_name  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="{f}"
skipped="1" tests="{t}"><testcase classname="tests.test_a" name="test_ok"/>{failed}<testcase classname="tests.test_c"
name="test_skip"><skipped message="no TensorRT"/></testcase></testsuite></testsuites>"""


def profile_run(fmt: str, batch: int) -> dict:
    kernels = [dict(kernel="linear_kernel<__half, __half, true>", launches=712, us=7846.4, launches_per_step=89.0,
                    us_per_step=980.8, pct=57.8),
               dict(kernel="rms_norm_kernel<__half>", launches=360, us=1645.6, launches_per_step=45.0,
                    us_per_step=205.7, pct=12.1)]
    return dict(fmt=fmt, batch=batch, prompt=608, steps=8, step_ms_direct=2.124, step_ms_graph=1.796,
                kernel_us_per_step=1698.0, kernels=kernels)


def test_kernel_names_lose_namespaces_and_argument_lists():
    assert short_name("void rsvlm_edge::(anonymous namespace)::attention_kernel<64, __half, __half>"
                      "(rsvlm_edge::AttentionParams, float, int, float*, float*)") == "attention_kernel<64, __half, __half>"
    assert short_name("add_inplace_kernel(__half*, __half const*, long)") == "add_inplace_kernel"
    assert short_name("void rsvlm_edge::rms_norm_kernel<__half>(__half const*, __half const*, __half*, int, float)") \
        == "rms_norm_kernel<__half>"


def test_profile_markdown_has_a_row_per_kernel_and_the_step_times():
    md = markdown(dict(runs=[profile_run("fp16", 1)]))
    assert "**fp16, batch 1** (context 608): step 1.796 ms from its CUDA graph, 2.124 ms launched directly" in md
    assert "kernels sum to 1.698 ms per step" in md
    assert "| `linear_kernel<__half, __half, true>` | 89 | 980.8 | 57.8 |" in md
    assert "| `rms_norm_kernel<__half>` | 45 | 205.7 | 12.1 |" in md


def report(tmp_path: Path, pytest_rc: int, failures: int) -> tuple[int, str, dict]:
    work = tmp_path / "work"
    work.mkdir()
    steps = [dict(step="build", rc=0, seconds=22.0), dict(step="pytest", rc=pytest_rc, seconds=75.0),
             dict(step="sanitize-memcheck", rc=0, seconds=1.0), dict(step="profile-decoder", rc=0, seconds=31.0)]
    (work / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (work / "profile_decoder.json").write_text(json.dumps(dict(runs=[profile_run("w8", 8)])))
    decoder = dict(layers=22, device="NVIDIA H100 80GB HBM3", copy_bandwidth_gbs=2973.0, step_weight_bytes=2.07e9,
                   bandwidth_floor_tok_s_batch1=1436.0,
                   rows=[dict(peer="rsvlm-edge fp16", batch=1, prompt=608, ttft_ms=22.7, decode_tok_s=549.0,
                              ms_per_step=1.82)])
    (work / "decoder.json").write_text(json.dumps(decoder))
    (work / "decoder_nopdl.json").write_text(json.dumps({**decoder, "programmatic_launch": "off"}))
    (work / "sampling.json").write_text(json.dumps(dict(temperature=0.8, top_p=0.9, scale=3.0, rows=[
        dict(impl="cuda", batch=8, vocab=32000, ms=0.081, speedup_vs_numpy=241.6, same_tokens_as_numpy=True,
             nucleus_tokens=[334, 559])])))
    (work / "vit_cuda.json").write_text(json.dumps(dict(
        arch="ViT-B-32", device="NVIDIA H100 80GB HBM3", when="2026-11-27T06:00+00:00", notes=["seeded weights"],
        rows=[dict(batch=8, ours_ms=2.5, ours_img_s=3200.0, peer_ms=3.0, peer_img_s=2666.7, speedup_vs_peer=1.2,
                   min_cosine_vs_fp32=0.99971)])))
    failed = ('<testcase classname="tests.test_b" name="test_bad"><failure message="assert 0.81 &gt;= 0.999"/>'
              "</testcase>") if failures else ""
    (tmp_path / "junit.xml").write_text(JUNIT.format(f=failures, t=2 + failures, failed=failed))
    log = tmp_path / "gpu-check.log"
    log.write_text("date: 2026-11-26T06:05:34Z\nNVIDIA H100 80GB HBM3\n===== sanitize-memcheck (limit 120s): x\n"
                   "========= ERROR SUMMARY: 0 errors\n===== sanitize-memcheck rc=0\n")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_report.py"), "--work", str(work), "--log", str(log),
                          "--junit", str(tmp_path / "junit.xml"), "--seconds", "272", "--json", str(tmp_path / "r.json"),
                          "--md", str(tmp_path / "r.md")], capture_output=True, text=True, cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, (tmp_path / "r.md").read_text(), json.loads((tmp_path / "r.json").read_text())


def test_report_passes_with_the_profile_section(tmp_path):
    rc, md, js = report(tmp_path, pytest_rc=0, failures=0)
    assert rc == 0 and js["passed"] is True
    assert md.startswith("## GPU acceptance: PASSED (272 s)")
    assert "pytest -m cuda: 1 passed, 0 failed, 1 skipped." in md
    assert "- memcheck: ========= ERROR SUMMARY: 0 errors" in md
    assert "### Where a decode step's time goes (TinyLlama-1.1B shape, per kernel)" in md
    assert "**w8, batch 8** (context 608)" in md
    assert js["benches"]["profile_decoder"]["runs"][0]["kernels"][0]["us_per_step"] == 980.8
    assert "### CLIP image tower on our CUDA kernels (cuda-vit) vs open_clip fp16" in md
    assert "### Decode with plain launches (RSVLM_EDGE_CUDA_PDL=off), to compare with the table above" in md
    assert "programmatic dependent launch off (sm_90+)" in md and "programmatic dependent launch on" in md
    assert "| rsvlm-edge fp16 | 1 | 608 | 22.7 | 549 | 1.82 | 38 |" in md
    assert "### Nucleus sampling of one token: numpy, native CPU, CUDA (top_p_sample)" in md
    assert "| cuda | 8 | 32000 | 0.081 | 241.60x | True | 334-559 |" in md
    assert "| 8 | 2.50 | 3200.0 | 3.00 | 2666.7 | 1.20x | 0.999710 |" in md


def test_report_fails_and_names_the_failed_test(tmp_path):
    rc, md, js = report(tmp_path, pytest_rc=1, failures=1)
    assert rc == 1 and js["passed"] is False
    assert md.startswith("## GPU acceptance: FAILED (272 s)")
    assert "- FAILED tests.test_b::test_bad: assert 0.81 >= 0.999" in md
