"""Peak memory and wall time of `rsvlm-edge export clip`, run as a user runs it (a child process).

Weights cannot be downloaded here, so the checkpoint is open_clip's own architecture with seeded random
weights (``--arch``, saved once under ``--workdir``), or ``--checkpoint`` for a real one. The peak is
the child's ``ru_maxrss`` (what GNU time reports); the CLI runs with its defaults plus ``--precision``
and, where given, ``--calib-batch``. Issue 12's goal: ViT-L/14-336 int8 export <= 6 GB.

    python bench/bench_export_memory.py --arch ViT-L-14-336 --precision int8 --json out/export_mem.json
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import add_output_args, run_sweep, with_notes  # noqa: E402


def seeded_checkpoint(arch: str, workdir: Path) -> Path:
    """open_clip ``arch`` with seeded random weights, saved as a bare state dict (RemoteCLIP's layout)."""
    path = workdir / f"{arch}.seeded.pt"
    if not path.exists():
        import open_clip
        import torch

        torch.manual_seed(0)
        model = open_clip.create_model(arch)
        torch.save(model.state_dict(), path)
        del model
    return path


def run_export(checkpoint: Path, out: Path, precision: str, calib_batch: int | None) -> dict:
    cmd = [sys.executable, "-m", "rsvlm_edge.cli", "export", "clip", str(checkpoint), "-o", str(out),
           "--precision", precision, "--overwrite"]
    if calib_batch is not None:
        cmd += ["--calib-batch", str(calib_batch)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"export failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far: one run each
    return {"cmd": " ".join(cmd[1:]), "peak_rss_gb": peak_kib * 1024 / 1e9, "wall_s": wall,
            "summary": [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "cosine" in line]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-L-14-336", help="open_clip architecture of the seeded checkpoint")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a real checkpoint instead of a seeded one")
    ap.add_argument("--precision", default="int8", choices=["fp32", "fp16", "int8"])
    ap.add_argument("--calib-batch", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=Path("out/export_memory"))
    add_output_args(ap)
    a = ap.parse_args()

    def sweep() -> dict:
        a.workdir.mkdir(parents=True, exist_ok=True)
        ckpt = a.checkpoint or seeded_checkpoint(a.arch, a.workdir)
        row = run_export(ckpt, a.workdir / "bundle.rsvlm", a.precision, a.calib_batch)
        row.update(checkpoint=str(ckpt), checkpoint_gb=ckpt.stat().st_size / 1e9, precision=a.precision,
                   arch=a.arch if a.checkpoint is None else None)
        return {"rows": [row], "cpus": os.cpu_count(),
                "notes": ["peak = the export process's ru_maxrss (GNU time's 'Maximum resident set size')",
                          "seeded random weights: timing and memory do not depend on the values"]}

    def markdown(result: dict) -> str:
        lines = ["| checkpoint | precision | checkpoint GB | peak RSS GB | wall s |", "|---|---|---:|---:|---:|"]
        for r in result["rows"]:
            lines.append(f"| {Path(r['checkpoint']).name} | {r['precision']} | {r['checkpoint_gb']:.2f} | "
                         f"{r['peak_rss_gb']:.2f} | {r['wall_s']:.0f} |")
        lines += [""] + [s for r in result["rows"] for s in r["summary"]]
        return with_notes(lines, result)

    run_sweep(a, sweep, markdown)


if __name__ == "__main__":
    main()
