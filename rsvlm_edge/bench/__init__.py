"""Benchmarks behind ``rsvlm-edge bench``: ``clip`` (image encoding vs open_clip), ``llava`` (vision,
TTFT, decode tok/s vs transformers) and the shared ``timing`` helpers."""
