"""Graft Studio: explore merges of domain-expert Qwen2-VL models (Graft, arXiv 2506.23940)."""

__version__ = "0.1.0"
