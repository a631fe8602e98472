"""The DeepPerception data engine as a pure library: Arrow tables in, Arrow tables out.

collect (single-entity photos) -> label (0-1000 boxes) -> compose (multi-entity KVG images)
-> distill (knowledge-guided CoT) -> filter -> datasets (SFT, GRPO, KVG-Bench in official
formats). Orchestration and storage live elsewhere; nothing here does I/O beyond optional
HTTP calls to an OpenAI-compatible server.
"""
