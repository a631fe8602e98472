"""Model building (tiny offline Qwen2-VL), loading and generation helpers."""
