"""Merge the results of scripts/gpu-check.sh into one JSON and one Markdown report.

Reads the step records (steps.jsonl: step, rc, seconds), pytest's junit XML, the compute-sanitizer
summaries from the log and the bench JSONs of the work folder. Exit status 0 when the build, pytest
and every sanitizer tool passed (benches are measurements, not pass/fail), else 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
GATING = ("build", "pytest", "sanitize-")


def read_steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def read_junit(path: Path) -> dict:
    if not path.exists():
        return dict(available=False)
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    skipped_reasons: dict[str, int] = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                failed.append(dict(test=name, message=(el.get("message") or "")[:400]))
        el = case.find("skipped")
        if el is not None:
            reason = (el.get("message") or "")[:160]
            skipped_reasons[reason] = skipped_reasons.get(reason, 0) + 1
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return dict(available=True, **total, failed=failed, skipped_reasons=skipped_reasons)


def sanitizer_summaries(log: str) -> dict[str, str]:
    """The last 'ERROR SUMMARY' / 'RACECHECK SUMMARY' line of each sanitizer step in the log."""
    out = {}
    parts = re.split(r"^===== (sanitize-\w+) \(limit.*$", log, flags=re.M)
    for name, body in zip(parts[1::2], parts[2::2]):
        lines = [ln.strip() for ln in body.splitlines() if "SUMMARY" in ln]
        out[name] = lines[-1] if lines else "no summary line (see gpu-check.log)"
    return out


def bench_markdown(work: Path) -> tuple[dict, list[str]]:
    sys.path.insert(0, str(BENCH))
    results: dict = {}
    md: list[str] = []
    gemv = work / "gemv.json"
    if gemv.exists():
        from bench_gemv_cuda import markdown as gemv_md

        results["gemv"] = json.loads(gemv.read_text())
        md += ["### GEMV (linear / qlinear) vs copy bandwidth and cuBLAS", "", gemv_md(results["gemv"]), ""]
    for name, title in (("attention_tinyllama", "Decode attention, TinyLlama heads (H 32, H_kv 4, D 64)"),
                        ("attention_7b", "Decode attention, LLaVA-7B heads (H 32, H_kv 32, D 128)")):
        path = work / f"{name}.json"
        if not path.exists():
            continue
        r = results[name] = json.loads(path.read_text())
        md += [f"### {title}", "", f"Roofline = measured copy bandwidth {r['peak_gbs']:.0f} GB/s.", "",
               "| KV | context | batch | ms | GB/s | % bw | torch SDPA ms | speed vs SDPA |", "|---|---|---|---|---|---|---|---|"]
        for x in r["records"]:
            peer = f"{x['peer_ms']:.4f} | {x['speedup_vs_peer']:.2f}x" if x.get("peer_ms") else "— | —"
            md.append(f"| {x['kv_dtype']} | {x['context']} | {x['batch']} | {x['ms']:.4f} | {x['gbs']:.0f} | "
                      f"{x['roofline_pct']:.0f} | {peer} |")
        md.append("")
    patch = work / "patch_embed.json"
    if patch.exists():
        r = results["patch_embed"] = json.loads(patch.read_text())
        rows = {(x["model"], x["batch"], x["impl"]): x for x in r["rows"]}
        md += ["### Patch embedding (fused) vs torch normalise + conv + cat + add + LayerNorm", "",
               "| model | batch | ours ms | torch ms | speed vs torch | max abs diff |", "|---|---|---|---|---|---|"]
        for (model, batch, impl), x in rows.items():
            if impl != "ours" or (model, batch, "torch") not in rows:
                continue
            t = rows[(model, batch, "torch")]
            md.append(f"| {model} | {batch} | {x['ms']:.4f} | {t['ms']:.4f} | {t['ms'] / x['ms']:.2f}x | "
                      f"{x['max_abs_diff_vs_torch']:.2e} |")
        md.append("")
    # (file stem, section title, the bench module whose markdown() renders it)
    sections = [("profile_decoder", "Where a decode step's time goes (TinyLlama-1.1B shape, per kernel)", "profile_decoder_cuda"),
                ("decoder", "Decode (TinyLlama-1.1B shape)", "bench_decoder_cuda"),
                ("decoder_nopdl", "Decode with plain launches (RSVLM_EDGE_CUDA_PDL=off), to compare with the table above",
                 "bench_decoder_cuda"),
                ("sampling", "Nucleus sampling of one token: numpy, native CPU, CUDA (top_p_sample)", "bench_sampling"),
                ("vit_cuda", "CLIP image tower on our CUDA kernels (cuda-vit) vs open_clip fp16", "bench_vit_cuda")]
    for stem, title, module in sections:
        path = work / f"{stem}.json"
        if path.exists():
            results[stem] = json.loads(path.read_text())
            md += [f"### {title}", "", importlib.import_module(module).markdown(results[stem]), ""]
    return results, md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--junit", type=Path, required=True)
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--md", type=Path, required=True)
    a = ap.parse_args(argv)
    log = a.log.read_text(errors="replace") if a.log.exists() else ""
    steps = read_steps(a.work / "steps.jsonl")
    junit = read_junit(a.junit)
    sanitizers = sanitizer_summaries(log)
    benches, bench_md = bench_markdown(a.work)
    header = log.splitlines()[:5]
    gating = [s for s in steps if s["step"].startswith(GATING)]
    passed = bool(gating) and all(s["rc"] == 0 for s in gating) and any(s["step"] == "pytest" for s in gating)
    report = dict(passed=passed, seconds=a.seconds, environment=header, steps=steps, pytest=junit,
                  sanitizers=sanitizers, benches=benches)
    a.json.write_text(json.dumps(report, indent=2))
    md = [f"## GPU acceptance: {'PASSED' if passed else 'FAILED'} ({a.seconds} s)", "", "```", *header, "```", "",
          "| step | exit | seconds |", "|---|---|---|"]
    md += [f"| {s['step']} | {s['rc']} | {s['seconds']:.0f} |" for s in steps]
    if junit.get("available"):
        md += ["", f"pytest -m cuda: {junit['passed']} passed, {junit['failures'] + junit['errors']} failed, "
                   f"{junit['skipped']} skipped."]
        md += [f"- FAILED {f['test']}: {f['message']}" for f in junit["failed"][:40]]
        md += [f"- skipped x{n}: {reason}" for reason, n in junit["skipped_reasons"].items()]
    if sanitizers:
        md += ["", "compute-sanitizer on tests/native/cuda_smoke.cpp:"]
        md += [f"- {name.removeprefix('sanitize-')}: {line}" for name, line in sanitizers.items()]
    md += ["", *bench_md]
    a.md.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
