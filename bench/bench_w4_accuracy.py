"""w4 / w8 accuracy against fp32 over many seeded decoders with realistic weight statistics (issue 12's goal:
logits cosine >= 0.98 over 32 teacher-forced decode steps). The model and the measure are in
``rsvlm_edge/bench/w4_accuracy.py``; each cell runs export's own quantisation code (``--weights w8`` or
``--weights w4 --w4-method M`` [``--rotate``]) and the native kernels (``--backend``).

Per setting (embedding spectrum, outlier input channels, method, rotation) over ``--seeds`` models: the
worst step of the worst model, the mean over models of their worst step, the mean step, and how many
models have every step >= 0.98.

    python bench/bench_w4_accuracy.py --seeds 10 --json out/w4_accuracy.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import add_output_args, run_sweep, with_notes  # noqa: E402

GOAL = 0.98


def main() -> None:
    from rsvlm_edge.bench.w4_accuracy import METHODS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10, help="models per setting (seeds 0..N-1)")
    ap.add_argument("--spectra", default="1.0,0.0", help="embedding spectrum powers (1: realistic, 0: isotropic)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(METHODS)}")
    ap.add_argument("--rotate", default="no,yes", help="no | yes | no,yes")
    ap.add_argument("--backend", default="native", choices=["native", "numpy"])
    add_output_args(ap)
    a = ap.parse_args()

    def sweep() -> dict:
        from rsvlm_edge.backends import decoder_numpy
        from rsvlm_edge.bench.w4_accuracy import teacher_forced_cosines
        from rsvlm_edge.progress import progress

        if a.backend == "native":
            from rsvlm_edge.backends.decoder_native import native_ops

            ops = native_ops()
        else:
            ops = decoder_numpy.NUMPY
        methods = a.methods.split(",")
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise SystemExit(f"error: unknown method {unknown[0]}\nfix: use some of {', '.join(METHODS)}")
        settings = [(float(p), outliers, m, rot == "yes") for p in a.spectra.split(",") for outliers in (False, True)
                    for m in methods for rot in a.rotate.split(",")]
        rows = []
        with progress() as bar:
            task = bar.add_task("w4 accuracy", total=len(settings) * a.seeds)
            for spectrum, outliers, method, rotate in settings:
                for seed in range(a.seeds):
                    cos = teacher_forced_cosines(method, ops, outliers, seed=seed, rotate=rotate,
                                                 embedding_spectrum=spectrum)
                    rows.append({"spectrum": spectrum, "outlier_inputs": outliers, "method": method, "rotate": rotate,
                                 "seed": seed, "worst_step": float(cos.min()), "mean_step": float(cos.mean())})
                    bar.advance(task)
        return {"rows": rows, "backend": a.backend, "seeds": a.seeds, "cpus": os.cpu_count(), "notes": [
            "each model: seeded decoder (rsvlm_edge/bench/w4_accuracy.py), 16-token prompt, 32 teacher-forced steps",
            "w8 and w4 as export writes them; embeddings / lm_head fp16 on both sides",
            f"goal (issue 12): every step >= {GOAL} against fp32"]}

    def markdown(result: dict) -> str:
        lines = ["| embeddings | outlier inputs | method | rotate | worst step (worst model) | "
                 "worst step (mean of models) | mean step | models >= 0.98 |", "|---|---|---|---|---:|---:|---:|---:|"]
        groups: dict[tuple, list[dict]] = {}
        for r in result["rows"]:
            groups.setdefault((r["spectrum"], r["outlier_inputs"], r["method"], r["rotate"]), []).append(r)
        for (spectrum, outliers, method, rotate), rs in groups.items():
            worst = np.array([r["worst_step"] for r in rs])
            kind = "anisotropic (p=1)" if spectrum == 1.0 else "isotropic" if spectrum == 0 else f"p={spectrum}"
            lines.append(f"| {kind} | {'yes' if outliers else 'no'} | {method} | {'yes' if rotate else 'no'} | "
                         f"{worst.min():.4f} | {worst.mean():.4f} | {np.mean([r['mean_step'] for r in rs]):.4f} | "
                         f"{int((worst >= GOAL).sum())}/{len(rs)} |")
        return with_notes(lines, result)

    run_sweep(a, sweep, markdown)


if __name__ == "__main__":
    main()
