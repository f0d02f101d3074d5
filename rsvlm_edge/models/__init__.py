"""What runs: one package per model family. ``clip`` (open_clip CLIPs: RemoteCLIP, GeoRSCLIP,
SkyCLIP) and ``llava`` (LLaVA-class VLMs: GeoChat, RS-LLaVA). Each holds its runtime, prompts,
image preparation and configuration; where the parts run is the backends' business."""
