#!/usr/bin/env python3
"""CPU decoder vs llama.cpp on the same weights, cores and thread count, in one run.

Workload (issue 12): a TinyLlama-1.1B-shape LLaMA decoder (hidden 2048, MLP 5632, 22 layers, 32 heads /
4 KV heads, vocab 32000) with seeded random weights, saved once as a transformers checkpoint (fp16
safetensors + a sentencepiece tokenizer built in place: nothing is downloaded). From that checkpoint:

* ours: the decoder part of a bundle per precision (fp16 / w8 / w4, written with the exporter's own
  conversion ``export.llava.decoder_tensors``), loaded by the runtime (``LlamaDecoder``, native
  backend) in a fresh process per precision: prefill of a --prompt token sequence, greedy decode of
  --new tokens at batch 1, and at batch 8 after --bs8-prompt tokens per sequence (each decode step as the
  runtime runs it: one C++ call, ``RSVLM_EDGE_DECODE_STEP``); peak RSS; a per-op profile of the batch-1
  prefill and decode step from one more, untimed, generation run op by op from Python.
* llama.cpp (``--peer llamacpp``, built on request by bench/llamacpp_peer.py from the
  llama-cpp-python sdist): GGUF F16 and Q8_0 from its own ``convert_hf_to_gguf.py``, Q4_0 from
  ``llama-quantize`` (its defaults, as a user runs them); ``llama-bench`` (pp / tg at batch 1) and
  ``llama-batched-bench`` (batch 8) with the same thread count.
* the machine's read bandwidth from an independent multi-threaded read benchmark
  (bench/native/read_bandwidth.c), so decode is also reported as % of what reading the weights once
  per token allows.

    python bench/bench_decoder_cpu.py --peer llamacpp --rounds 2 --json bench/out/decoder_cpu.json
    python bench/bench_decoder_cpu.py --layers 4 --precision w4 --new 16      # a quick look

Timing only (random weights). Both sides run --threads threads (ours: the kernels' thread pool,
OMP_NUM_THREADS; llama.cpp: -t). Per precision ours and llama.cpp run back to back after a
read-bandwidth reading; --rounds N repeats that N times and keeps each cell's best.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
                 vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0)
GGUF_TYPES = {"fp16": "F16", "w8": "Q8_0", "w4": "Q4_0"}


# ---------------------------------------------------------------- the checkpoint (torch, once)


def _sentencepiece_model(path: Path, vocab: int) -> None:
    """A valid LLaMA-style sentencepiece BPE model of exactly `vocab` pieces (<unk>, <s>, </s>, the
    256 byte pieces, then synthetic pieces): what convert_hf_to_gguf reads for a LLaMA checkpoint."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as sp
    except ImportError:
        sys.exit("error: this benchmark builds a sentencepiece tokenizer, and sentencepiece is not installed\n"
                 "fix: pip install sentencepiece protobuf")

    m = sp.ModelProto()
    m.trainer_spec.model_type = sp.TrainerSpec.BPE
    m.trainer_spec.vocab_size = vocab
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.escape_whitespaces = True
    for text, kind in (("<unk>", sp.ModelProto.SentencePiece.UNKNOWN), ("<s>", sp.ModelProto.SentencePiece.CONTROL),
                       ("</s>", sp.ModelProto.SentencePiece.CONTROL)):
        p = m.pieces.add()
        p.piece, p.score, p.type = text, 0.0, kind
    for b in range(256):
        p = m.pieces.add()
        p.piece, p.score, p.type = f"<0x{b:02X}>", 0.0, sp.ModelProto.SentencePiece.BYTE
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(m.pieces) < vocab:
        word, j = "", i
        while True:
            word = letters[j % 26] + word
            j = j // 26 - 1
            if j < 0:
                break
        p = m.pieces.add()
        p.piece, p.score, p.type = "\u2581" + word, -float(i), sp.ModelProto.SentencePiece.NORMAL
        i += 1
    path.write_bytes(m.SerializeToString())


def make_checkpoint(dest: Path, layers: int, seed: int) -> Path:
    """transformers LlamaForCausalLM of the TinyLlama shape, seeded random init, fp16 safetensors."""
    if (dest / "model.safetensors").exists():
        return dest
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    print(f"checkpoint: TinyLlama shape, {layers} layers, seed {seed} -> {dest}", flush=True)
    torch.manual_seed(seed)
    cfg = LlamaConfig(num_hidden_layers=layers, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, **TINYLLAMA)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(torch.float16)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
    _sentencepiece_model(tmp / "tokenizer.model", cfg.vocab_size)
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,
                                                          "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tmp.rename(dest)
    return dest


# ---------------------------------------------------------------- ours: one precision per process


def decoder_file(ckpt: Path, precision: str, dest: Path) -> Path:
    """The bundle's decoder.safetensors for `precision`, converted as `rsvlm-edge export llava` does."""
    path = dest / f"decoder-{precision}.safetensors"
    if path.exists():
        return path
    from safetensors.numpy import load_file, save_file

    from rsvlm_edge.export.llava import decoder_tensors

    hf = load_file(str(ckpt / "model.safetensors"))
    canonical = {}
    for name, t in hf.items():
        name = name.removeprefix("model.")
        name = re.sub(r"^layers\.(\d+)\.(self_attn|mlp)\.", r"layers.\1.", name)
        canonical[name] = t
    tensors = decoder_tensors(canonical, precision)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.rename(path)
    return path


class OpProfile:
    """Wraps an op set: wall time per op over the calls made while `active`."""

    def __init__(self, ops) -> None:
        from rsvlm_edge.backends.decoder_numpy import OP_NAMES

        self.ops, self.seconds, self.calls, self.active = ops, {}, {}, False
        for name in OP_NAMES:  # every op of the op-set contract
            setattr(self, name, self._timed(name, getattr(ops, name)))
        self.name, self.half_weights = ops.name, ops.half_weights
        self.weight_placement = getattr(ops, "weight_placement", None)  # as the runtime places the weights
        # the timed runs decode as the runtime does (native: one C++ call per step); the profile run goes op by op
        self.whole_decode_step = getattr(ops, "whole_decode_step", None)

    def _timed(self, name, fn):
        def run(*a, **kw):
            if not self.active:
                return fn(*a, **kw)
            t0 = time.perf_counter()
            r = fn(*a, **kw)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.calls[name] = self.calls.get(name, 0) + 1
            return r
        return run


def run_ours(a: argparse.Namespace) -> dict:
    import resource

    from rsvlm_edge.backends import open_decoder
    from rsvlm_edge.models.llava.config import DecoderConfig
    from rsvlm_edge.models.llava.decoder import LlamaDecoder, load_weights

    cfg_json = json.loads((a.checkpoint / "config.json").read_text())
    cfg = DecoderConfig(model_type="llama", vocab_size=cfg_json["vocab_size"], hidden_size=cfg_json["hidden_size"],
                        intermediate_size=cfg_json["intermediate_size"], num_layers=cfg_json["num_hidden_layers"],
                        num_heads=cfg_json["num_attention_heads"], num_kv_heads=cfg_json["num_key_value_heads"],
                        head_dim=cfg_json["hidden_size"] // cfg_json["num_attention_heads"],
                        rms_norm_eps=cfg_json["rms_norm_eps"], rope_theta=cfg_json.get("rope_theta", 10000.0),
                        max_position_embeddings=cfg_json["max_position_embeddings"], attention_bias=False,
                        bos_token_id=1, eos_token_id=2)
    ops = OpProfile(open_decoder(a.backend))
    from rsvlm_edge.native import _c

    kernels = _c().set_cpu_kernels(a.cpu_kernels)
    batch_max = max(a.batch)
    max_seq = max(a.prompt, a.bs8_prompt) + a.new + 1
    t0 = time.perf_counter()
    tensors = load_weights(a.decoder_file)
    weight_bytes = int(sum(t.nbytes for t in tensors.values()))
    decoder = LlamaDecoder(cfg, tensors, max_batch=batch_max, max_seq=max_seq, ops=ops)
    del tensors
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    row: dict = {"precision": a.worker, "backend": ops.name, "cpu_kernels": kernels, "weight_bytes_per_token": decoder.weight_bytes,
                 "weight_bytes": weight_bytes,  # every tensor of decoder.safetensors (embeddings too)
                 "kv_cache_bytes": int(sum(k.nbytes + v.nbytes for k, v in zip(decoder.cache.k, decoder.cache.v))),
                 "load_s": load_s}

    def generate(batch: int, prompt: int, profile: bool) -> tuple[float, float]:
        ids = rng.integers(3, cfg.vocab_size, size=(batch, prompt))
        t = time.perf_counter()
        logits = decoder.prefill(decoder.embed_tokens(ids), np.full(batch, prompt))
        prefill_s = time.perf_counter() - t
        if profile:
            row["prefill_profile"] = {k: {"ms": 1e3 * v, "share": v / prefill_s}
                                      for k, v in sorted(ops.seconds.items(), key=lambda kv: -kv[1])}
            ops.seconds, ops.calls = {}, {}
        nxt = logits.argmax(-1)
        t = time.perf_counter()
        for _ in range(a.new):
            nxt = decoder.decode(nxt).argmax(-1)
        return prefill_s, time.perf_counter() - t

    for batch in a.batch:
        prompt = a.prompt if batch == 1 else a.bs8_prompt
        runs = [generate(batch, prompt, False) for _ in range(a.repeats)]
        prefill_s = min(r[0] for r in runs)
        decode_s = min(r[1] for r in runs)
        if batch == 1:
            row["prefill_tok_s"] = prompt / prefill_s
        row[f"decode_bs{batch}_tok_s"] = batch * a.new / decode_s
        row[f"prompt_bs{batch}"] = prompt
    # Where the time goes: one more batch-1 generation, not timed, op by op (a whole C++ step hides its ops; the
    # Python calls between them then cost ~2-4 ms per token that the timed runs do not pay).
    row["decode_step"] = "whole" if decoder.whole_step is not None else "ops"
    whole_step, decoder.whole_step = decoder.whole_step, None
    ops.active = True
    generate(1, a.prompt, True)
    ops.active = False
    decoder.whole_step = whole_step
    total = sum(ops.seconds.values())
    row["decode_profile"] = {k: {"ms_per_token": 1e3 * v / a.new, "share": v / total, "calls_per_token": ops.calls[k] / a.new}
                             for k, v in sorted(ops.seconds.items(), key=lambda kv: -kv[1])}
    # VmHWM: this process's own high-water mark (ru_maxrss survives exec: it would report the parent's)
    hwm = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    row["peak_rss_bytes"] = int(hwm.group(1)) * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


# ---------------------------------------------------------------- llama.cpp


def gguf_file(peer, ckpt: Path, precision: str, dest: Path, log: Path) -> Path:
    path = dest / f"model-{GGUF_TYPES[precision]}.gguf"
    if path.exists():
        return path
    if precision == "w4":
        src = gguf_file(peer, ckpt, "fp16", dest, log)
        cmd = [str(peer.tool("llama-quantize")), str(src), str(path), "Q4_0"]
        env = None
    else:
        cmd = [sys.executable, str(peer.converter), str(ckpt), "--outtype", GGUF_TYPES[precision].lower(),
               "--outfile", str(path)]
        env = peer.python_env()
    print(f"llama.cpp: {path.name} ...", flush=True)
    with open(log, "a") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        sys.exit(f"error: making {path.name} failed (exit {r.returncode})\nfix: see {log}")
    return path


def _max_rss_run(cmd: list[str], exit_on_error: bool = True) -> tuple[str, int] | None:
    """stdout of `cmd` and its peak RSS in bytes (GNU time); None when it fails and not `exit_on_error`."""
    r = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        if not exit_on_error:
            return None
        sys.exit(f"error: {' '.join(cmd[:3])} ... failed (exit {r.returncode}): {r.stderr[-400:]}\nfix: see the message")
    m = re.search(r"MAXRSS_KB=(\d+)", r.stderr)
    return r.stdout, int(m.group(1)) * 1024 if m else 0


LLAMACPP_LOAD_MODES = ("mmap", "none")  # its file map (default), and its weights read into its own buffers


def run_llamacpp(peer, model: Path, a: argparse.Namespace) -> dict:
    """llama-bench (prefill, batch-1 decode) and llama-batched-bench (batch > 1) on ``model``, each with the
    weights memory-mapped (its default) and read into its own memory (``--load-mode none``, as ours copies
    them): the faster of the two per number, the winning mode kept in ``load_mode``."""
    cmd = [str(peer.tool("llama-bench")), "-m", str(model), "-p", str(a.prompt), "-n", str(a.new),
           "-t", str(a.threads), "-r", str(a.repeats), "-lm", ",".join(LLAMACPP_LOAD_MODES), "-o", "json"]
    res, repack = _max_rss_run(cmd, exit_on_error=False), True
    if res is None:  # its repacked weights (AMX / interleaved kernels) crash on some CPUs: the run without them
        print(f"llama.cpp: llama-bench failed on {model.name} with repacked weights (its default); again with "
              "--repack 0", flush=True)
        res, repack = _max_rss_run(cmd + ["--repack", "0"]), False
    out, rss = res
    row: dict = {"peak_rss_bytes": rss, "gguf_bytes": model.stat().st_size, "repack": repack, "load_mode": {}}

    def keep(key: str, value: float, mode: str) -> None:
        if value > row.get(key, 0.0):
            row[key], row["load_mode"][key] = value, mode

    for rec in json.loads(out):
        if rec.get("n_prompt") == a.prompt and rec.get("n_gen") == 0:
            keep("prefill_tok_s", rec["avg_ts"], rec.get("load_mode", "mmap"))
        if rec.get("n_gen") == a.new and rec.get("n_prompt") == 0:
            keep("decode_bs1_tok_s", rec["avg_ts"], rec.get("load_mode", "mmap"))
    batches = [b for b in a.batch if b > 1]
    for b in batches:
        ctx = b * (a.bs8_prompt + a.new) + 64
        for mode in LLAMACPP_LOAD_MODES:
            out, _ = _max_rss_run([str(peer.tool("llama-batched-bench")), "-m", str(model), "-c", str(ctx), "-b", "2048",
                                   "-ub", "512", "-npp", str(a.bs8_prompt), "-ntg", str(a.new), "-npl", str(b),
                                   "-t", str(a.threads), "--load-mode", mode, "--output-format", "jsonl",
                                   *([] if repack else ["--no-repack"])])
            recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            keep(f"decode_bs{b}_tok_s", recs[-1]["speed_tg"], mode)
    return row


# ---------------------------------------------------------------- bandwidth


def read_bandwidth(threads: int, workdir: Path) -> dict:
    exe = workdir / "read_bandwidth"
    flags = ["-mavx2"] if platform.machine() in ("x86_64", "AMD64") else []
    subprocess.run(["gcc", "-O2", *flags, "-fopenmp", str(HERE / "native" / "read_bandwidth.c"), "-o", str(exe)],
                   check=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return json.loads(subprocess.run([str(exe), "1024", "10"], capture_output=True, text=True, env=env,
                                     check=True).stdout)


# ---------------------------------------------------------------- driver


def _best(old: dict | None, new: dict) -> dict:
    """Rows of two rounds merged: the higher tok/s per cell (with its round's profile), the lower peak
    RSS, every bandwidth reading."""
    if old is None:
        return new
    merged = dict(old)
    for key, value in new.items():
        if key.endswith("_tok_s"):
            if value > old.get(key, 0.0):
                merged[key] = value
                profile = key.replace("_tok_s", "").replace("decode_bs1", "decode") + "_profile"
                if profile in new:
                    merged[profile] = new[profile]
                if key in new.get("load_mode", {}):  # llama.cpp rows: the load mode of the winning run
                    merged["load_mode"] = {**old.get("load_mode", {}), key: new["load_mode"][key]}
        elif key == "peak_rss_bytes":
            merged[key] = min(old.get(key, value), value)
        elif key == "read_bandwidth_gb_s":
            merged[key] = old.get(key, []) + value
    return merged


def _kernels_note(result: dict) -> str:
    """'; our kernel set: X' from the workers' rows (runs saved before the field: nothing)."""
    sets = sorted({ours["cpu_kernels"] for ours in result["ours"].values() if "cpu_kernels" in ours})
    return f"; our CPU kernel set: {', '.join(sets)}" if sets else ""


def markdown(result: dict) -> str:
    readings = [bw for ours in result["ours"].values() for bw in ours.get("read_bandwidth_gb_s", [])]
    readings = readings or [result["read_bandwidth_gb_s"]]  # runs saved before per-precision readings
    rounds = result.get("rounds", 1)
    lines = [f"TinyLlama-1.1B shape ({result['layers']} layers), seeded random weights, {result['cpu']}, "
             f"{result['threads']} threads both sides, {result['date']}; prompt {result['prompt']} tokens "
             f"(batch 8: {result['bs8_prompt']} per sequence), {result['new']} new tokens, best of {result['repeats']}"
             f"{f' x {rounds} rounds' if rounds > 1 else ''}; read bandwidth {min(readings):.1f}-{max(readings):.1f} GB/s "
             "(bench/native/read_bandwidth.c, before each precision; % below: of the highest reading)"
             f"{_kernels_note(result)}.", "",
             "| precision (ours / llama.cpp) | prefill tok/s | decode bs1 tok/s | decode bs8 tok/s | "
             "bs1 weights GB/s (% of read bw) | peak RSS MiB (weights + KV MiB, RSS over them) |",
             "|---|---|---|---|---|---|"]
    bw = max(readings)
    for p, ours in result["ours"].items():
        peer = result.get("llamacpp", {}).get(p, {})

        def cell(key: str) -> str:
            o, t = ours.get(key), peer.get(key)
            if o is None:
                return ""
            return f"{o:.1f}" + (f" vs {t:.1f} (**{o / t:.2f}x**)" if t else "")
        gbs = ours["weight_bytes_per_token"] * ours["decode_bs1_tok_s"] / 1e9
        resident = ours.get("weight_bytes", ours["weight_bytes_per_token"])  # older JSON: per-token bytes
        mem = f"{ours['peak_rss_bytes'] / 2**20:.0f}" + (f" vs {peer['peak_rss_bytes'] / 2**20:.0f}" if peer else "")
        lines.append(f"| {p} / {GGUF_TYPES[p]} | {cell('prefill_tok_s')} | {cell('decode_bs1_tok_s')} | "
                     f"{cell('decode_bs8_tok_s')} | {gbs:.1f} ({100 * gbs / bw:.0f}%) | {mem} "
                     f"({(resident + ours['kv_cache_bytes']) / 2**20:.0f}, "
                     f"{100 * ours['peak_rss_bytes'] / (resident + ours['kv_cache_bytes']) - 100:+.0f}%) |")
    modes = [f"{p} {k.replace('_tok_s', '')}" for p, row in result.get("llamacpp", {}).items()
             for k, m in row.get("load_mode", {}).items() if m != "mmap"]
    if result.get("llamacpp"):
        lines += ["", "llama.cpp: the faster of its load modes per number (`--load-mode mmap`, its default, and `none`: "
                  "weights read into its own memory, as ours are copied onto huge pages); `none` won: "
                  f"{', '.join(modes) if modes else 'nowhere'}."]
    no_repack = [p for p, row in result.get("llamacpp", {}).items() if row.get("repack") is False]
    if no_repack:
        lines += ["", f"llama.cpp ran {', '.join(no_repack)} with `--repack 0` / `--no-repack`: with its default "
                  "repacked weights llama-bench crashed (segfault) on this CPU."]
    steps = {ours.get("decode_step", "ops") for ours in result["ours"].values()}
    lines += ["", f"Our decode steps ran {' / '.join(sorted(steps))} (`whole`: one C++ call per step, "
              "`RSVLM_EDGE_DECODE_STEP`).",
              "", "Where our time goes (batch 1, one extra untimed run op by op from Python; prefill: ms for the whole "
              "prompt, decode: ms per token):", ""]
    for p, ours in result["ours"].items():
        pre = ", ".join(f"{k} {v['ms']:.0f}" for k, v in ours.get("prefill_profile", {}).items())
        dec = ", ".join(f"{k} {v['ms_per_token']:.1f}" for k, v in ours["decode_profile"].items())
        lines.append(f"- {p}: prefill {pre}; decode {dec}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="fp16,w8,w4")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--bs8-prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="repeat ours + llama.cpp per precision; best cell kept")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="native")
    ap.add_argument("--cpu-kernels", default="auto",
                    help="our CPU micro-kernel set (auto | amx | avx512vnni | avx2 | portable): e.g. avx512vnni on an AMX "
                         "machine times what a CPU without AMX runs")
    ap.add_argument("--peer", choices=["none", "llamacpp"], default="none")
    ap.add_argument("--workdir", type=Path, default=HERE / "out" / "decoder-cpu")
    ap.add_argument("--llamacpp-dir", type=Path, default=HERE / "out" / "llamacpp")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--from-json", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--decoder-file", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.batch = [int(b) for b in str(a.batch).split(",")]
    if a.worker:
        print(json.dumps(run_ours(a)))
        return
    if a.from_json:
        print(markdown(json.loads(a.from_json.read_text())))
        return
    a.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(a.workdir / f"tinyllama-shape-l{a.layers}-s{a.seed}", a.layers, a.seed)
    precisions = a.precision.split(",")
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                    "cpu": f"{platform.machine()} {os.cpu_count()} cores", "threads": a.threads, "layers": a.layers,
                    "prompt": a.prompt, "bs8_prompt": a.bs8_prompt, "new": a.new, "repeats": a.repeats,
                    "rounds": a.rounds, "kv_cache": os.environ.get("RSVLM_EDGE_KV_CACHE", "auto"),
                    "weight_memory": os.environ.get("RSVLM_EDGE_WEIGHT_MEMORY", "copy"),
                    "read_bandwidth_gb_s": read_bandwidth(a.threads, a.workdir)["gb_per_s"], "ours": {}}
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    peer = None
    if a.peer == "llamacpp":
        from llamacpp_peer import ensure_llamacpp

        peer = ensure_llamacpp(a.llamacpp_dir)
        result["llamacpp_version"] = f"llama-cpp-python {peer.version} (vendored llama.cpp)"
        result["llamacpp"] = {}
    # This VM's memory bandwidth drifts 2x within minutes (other tenants): each precision runs ours and
    # llama.cpp back to back after its own read-bandwidth reading, and --rounds repeats the whole
    # sequence, keeping each cell's best (tok/s) and each round's bandwidth readings.
    for rnd in range(a.rounds):
        for p in precisions:
            dfile = decoder_file(ckpt, p, ckpt)
            bw = read_bandwidth(a.threads, a.workdir)["gb_per_s"]
            print(f"round {rnd + 1}: ours {p} (read bandwidth {bw:.1f} GB/s) ...", flush=True)
            r = subprocess.run([sys.executable, __file__, "--worker", p, "--checkpoint", str(ckpt), "--decoder-file",
                                str(dfile), "--batch", ",".join(map(str, a.batch)), "--prompt", str(a.prompt),
                                "--bs8-prompt", str(a.bs8_prompt), "--new", str(a.new), "--repeats", str(a.repeats),
                                "--backend", a.backend, "--cpu-kernels", a.cpu_kernels], capture_output=True, text=True,
                               env=env)
            if r.returncode != 0:
                sys.exit(f"error: our {p} worker failed: {r.stderr[-2000:]}")
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row["read_bandwidth_gb_s"] = [bw]
            result["ours"][p] = _best(result["ours"].get(p), row)
            if peer is not None:
                model = gguf_file(peer, ckpt, p, ckpt, a.workdir / "gguf.log")
                print(f"round {rnd + 1}: llama.cpp {p} ...", flush=True)
                result["llamacpp"][p] = _best(result["llamacpp"].get(p), run_llamacpp(peer, model, a))
    result["read_bandwidth_after_gb_s"] = read_bandwidth(a.threads, a.workdir)["gb_per_s"]
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
