"""GPU decode of the TinyLlama-1.1B decoder shape: the torch peers, measured in this run.

Peers (HF transformers, seeded random weights, fp16, on the GPU):
  eager     model.generate with the default dynamic cache (what a user gets from transformers);
  compiled  the static-cache decode loop of gpt-fast: transformers' StaticCache, the one-token forward
            compiled by torch.compile(mode="reduce-overhead", fullgraph=True) (CUDA graphs), greedy
            argmax on the device, torch.compiler.cudagraph_mark_step_begin() per step. (HF's own
            generate(cache_implementation="static") with a compiled forward failed on the H200 run:
            "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run".)
Eager: decode tok/s = batch x (new - 1) tokens / (time of generate(new) - time of generate(1)), so the
prefill is excluded; TTFT = time of generate(1) for a `--prompt`-token prompt. Compiled: the prefill
(eager) and the decode steps are timed separately. The bandwidth floor
is weight bytes / measured copy bandwidth (bench_gemv_cuda.copy_bandwidth_gbs).

Ours (``--ours fp16 w8 w4``): rsvlm_edge._C.CudaDecoder with the same weights (the HF state dict under
the canonical names; w8 / w4 converted by export's own decoder_tensors, lm_head w8),
prefill of the same prompt (TTFT), then greedy decode steps with only the ids coming back, each step
replayed from its CUDA graph; decode tok/s = batch x steps / time of the steps.

    python bench/bench_decoder_cuda.py --peers eager compiled --json bench/out/decoder_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemv_cuda import copy_bandwidth_gbs  # noqa: E402

TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                 rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)


def build_model(torch, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{**TINYLLAMA, "num_hidden_layers": layers})
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16).eval()
    return model


def timed_generate(torch, model, ids, new: int, **kw) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **kw)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(torch, model, batch: int, prompt: int, new: int, reps: int, **kw) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(batch)
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), device="cuda", generator=gen)
    timed_generate(torch, model, ids, new, **kw)  # warm-up (compiles, for the compiled peer)
    timed_generate(torch, model, ids, 1, **kw)
    full = min(timed_generate(torch, model, ids, new, **kw) for _ in range(reps))
    first = min(timed_generate(torch, model, ids, 1, **kw) for _ in range(reps))
    decode_s = max(full - first, 1e-9)
    return dict(batch=batch, prompt=prompt, new_tokens=new, ttft_ms=first * 1e3,
                decode_tok_s=batch * (new - 1) / decode_s, ms_per_step=decode_s / (new - 1) * 1e3)


HF_NAMES = [(re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.(weight|bias)$"), r"layers.\1.\3.\4"),
            (re.compile(r"^model\.layers\.(\d+)\.(\w+layernorm)\.weight$"), r"layers.\1.\2.weight"),
            (re.compile(r"^model\.(embed_tokens|norm)\.weight$"), r"\1.weight"),
            (re.compile(r"^lm_head\.weight$"), "lm_head.weight")]


def canonical_tensors(model) -> dict:
    """The HF model's fp16 tensors as numpy under decoder.safetensors' canonical names."""
    out = {}
    for name, t in model.state_dict().items():
        for pattern, repl in HF_NAMES:
            if pattern.match(name):
                out[pattern.sub(repl, name)] = t.detach().to("cpu").numpy()
                break
    return out


def cuda_decoder(cfg: dict, weights: dict, max_batch: int, max_seq: int):
    """rsvlm_edge._C.CudaDecoder of the HF config ``cfg`` holding ``weights`` (canonical names)."""
    import rsvlm_edge._C as C

    shape = dict(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                 num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                 num_kv_heads=cfg["num_key_value_heads"], head_dim=cfg["hidden_size"] // cfg["num_attention_heads"],
                 rms_norm_eps=cfg["rms_norm_eps"], rope_theta=cfg["rope_theta"])
    dec = C.CudaDecoder(shape, max_batch, max_seq)
    for name, t in weights.items():
        dec.set_tensor(name, t)
    dec.check_complete()
    return dec


def measure_ours(torch, tensors: dict, cfg: dict, fmt: str, batches: list[int], prompt: int, new: int) -> list[dict]:
    import numpy as np

    from rsvlm_edge.export.llava import decoder_tensors

    t0 = time.perf_counter()
    weights = decoder_tensors(tensors, fmt)  # as export writes the bundle (lm_head w8 for w8 / w4)
    quant_s = time.perf_counter() - t0
    dec = cuda_decoder(cfg, weights, max(batches), prompt + new + 1)
    embed = tensors["embed_tokens.weight"]
    rows = []
    for batch in batches:
        rng = np.random.default_rng(batch)
        ids = rng.integers(3, cfg["vocab_size"], (batch, prompt))
        embeds = embed[ids].astype(np.float32)
        lengths = np.full(batch, prompt, np.int64)
        dec.prefill(embeds, lengths)  # warm-up (allocates the prefill buffers)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = dec.prefill(embeds, lengths)
        ttft = time.perf_counter() - t0
        nxt = logits.argmax(axis=1)
        nxt = dec.decode(nxt, logits=False)[1]  # captures this batch size's CUDA graph
        t0 = time.perf_counter()
        for _ in range(new - 1):
            nxt = dec.decode(nxt, logits=False)[1]
        decode_s = time.perf_counter() - t0
        rows.append(dict(peer=f"rsvlm-edge {fmt}", batch=batch, prompt=prompt, new_tokens=new, ttft_ms=ttft * 1e3,
                         decode_tok_s=batch * (new - 1) / decode_s, ms_per_step=decode_s / (new - 1) * 1e3,
                         step_weight_bytes=int(dec.step_weight_bytes), quantise_s=quant_s))
        print(json.dumps(rows[-1]), flush=True)
    del dec
    return rows


def measure_static_loop(torch, model, batch: int, prompt: int, new: int, reps: int, compile_step: bool = True) -> dict:
    """The compiled peer (see the module docstring); compile_step=False runs the same loop eagerly."""
    from transformers import StaticCache

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(batch)
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), device=device, generator=gen)
    cache = StaticCache(config=model.config, max_cache_len=prompt + new + 1)

    def one_token(tok, pos):  # tok (B, 1), pos (1,): next-token logits (B, V)
        return model(input_ids=tok, past_key_values=cache, cache_position=pos, use_cache=True).logits[:, -1]

    step = torch.compile(one_token, mode="reduce-overhead", fullgraph=True) if compile_step else one_token

    def generate() -> tuple[float, float, torch.Tensor]:
        cache.reset()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(prompt, device=device),
                           use_cache=True).logits[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            sync()
            t1 = time.perf_counter()
            out = [nxt]
            for i in range(new - 1):
                if compile_step:
                    torch.compiler.cudagraph_mark_step_begin()
                nxt = step(nxt, torch.tensor([prompt + i], device=device)).argmax(-1, keepdim=True)
                out.append(nxt)
            sync()
        return t1 - t0, time.perf_counter() - t1, torch.cat(out, dim=1)

    generate()  # compiles
    runs = [generate() for _ in range(reps)]
    ttft, decode_s = min(r[0] for r in runs), min(r[1] for r in runs)
    return dict(batch=batch, prompt=prompt, new_tokens=new, ttft_ms=ttft * 1e3,
                decode_tok_s=batch * (new - 1) / decode_s, ms_per_step=decode_s / (new - 1) * 1e3)


def run(args: argparse.Namespace) -> dict:
    """Measure every row; the JSON file is rewritten after each row, so that a run stopped by a time
    limit (torch.compile can take minutes) keeps what it measured."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU visible to torch\nfix: run on a GPU machine")
    bw = copy_bandwidth_gbs(torch)
    model = build_model(torch, args.layers)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    step_bytes = weight_bytes - model.model.embed_tokens.weight.numel() * 2  # one embedding row per token
    rows: list[dict] = []
    meta = dict(bench="decoder_cuda", host=platform.node(), device=torch.cuda.get_device_name(),
                torch=torch.__version__, layers=args.layers, copy_bandwidth_gbs=bw, step_weight_bytes=step_bytes,
                bandwidth_floor_tok_s_batch1=bw * 1e9 / step_bytes,
                programmatic_launch=os.environ.get("RSVLM_EDGE_CUDA_PDL", "on"), rows=rows)

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                        indent=2))

    if args.ours:
        tensors = canonical_tensors(model)
        cfg = {**TINYLLAMA, "num_hidden_layers": args.layers}
        for fmt in args.ours:
            try:
                rows += measure_ours(torch, tensors, cfg, fmt, args.batches, args.prompt, args.new_tokens)
                save()
            except Exception as e:  # reported in the table, and the peers still run
                rows.append(dict(peer=f"rsvlm-edge {fmt}", batch=0, error=f"{type(e).__name__}: {e}"[:300]))
                print(json.dumps(rows[-1]), flush=True)
        del tensors
    for peer in args.peers:
        for batch in args.batches:
            t0 = time.perf_counter()
            try:
                if peer == "compiled":
                    r = measure_static_loop(torch, model, batch, args.prompt, args.new_tokens, args.reps)
                else:
                    r = measure(torch, model, batch, args.prompt, args.new_tokens, args.reps)
            except Exception as e:  # a peer that cannot run here is reported, not fatal
                r = dict(batch=batch, error=f"{type(e).__name__}: {e}"[:300])
            r.update(peer=peer, wall_s=time.perf_counter() - t0)
            rows.append(r)
            save()
            print(json.dumps(r), flush=True)
    save()
    return {**meta, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def markdown(result: dict) -> str:
    lines = [f"Decode, TinyLlama-1.1B shape ({result['layers']} layers, fp16, random weights) on {result['device']}; "
             f"copy bandwidth {result['copy_bandwidth_gbs']:.0f} GB/s; batch-1 bandwidth floor "
             f"{result['bandwidth_floor_tok_s_batch1']:.0f} tok/s; programmatic dependent launch "
             f"{result.get('programmatic_launch', 'on')} (sm_90+).", "",
             "| runtime | batch | prompt | TTFT ms | decode tok/s | ms/step | % of its bandwidth floor (bs1) |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['peer']} | {r['batch']} | — | — | failed: {r['error']} | — | — |")
            continue
        floor = result["copy_bandwidth_gbs"] * 1e9 / r.get("step_weight_bytes", result["step_weight_bytes"])
        pct = 100 * r["decode_tok_s"] / floor if r["batch"] == 1 else None
        lines.append(f"| {r['peer']} | {r['batch']} | {r['prompt']} | {r['ttft_ms']:.1f} | {r['decode_tok_s']:.0f} | "
                     f"{r['ms_per_step']:.2f} | {'—' if pct is None else f'{pct:.0f}'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", nargs="*", default=["fp16", "w8", "w4"], choices=["fp16", "w8", "w4"])
    ap.add_argument("--peers", nargs="*", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=608, help="prompt tokens (608 = GeoChat's image + question)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--json", type=Path, default=Path("bench/out/decoder_cuda.json"))
    args = ap.parse_args(argv)
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
