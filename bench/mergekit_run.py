"""Run mergekit's `run_yaml` on the benchmark's Qwen2-VL checkpoints, in mergekit's own environment.

    /path/to/mergekit-env/bin/python bench/mergekit_run.py CONFIG.yaml OUT_DIR [mergekit options]

mergekit is never a dependency of this project: bench_merge.py `--mergekit-python` points at
a separate environment. transformers 5 keeps Qwen2-VL's language settings under
`text_config`, while mergekit 0.1.5's qwen2_vl definition reads `num_hidden_layers` and
`vocab_size` from the top level; this launcher exposes the text_config values there and
changes nothing else, so mergekit runs its own merge code unmodified.
"""

from __future__ import annotations

import runpy
import sys

from transformers import Qwen2VLConfig


def _text_config_fallback(self, name: str):
    # only called when normal lookup fails, so every real attribute is untouched
    text = self.__dict__.get("text_config")
    if text is not None and name != "text_config" and not name.startswith("__") and hasattr(text, name):
        return getattr(text, name)
    raise AttributeError(name)


Qwen2VLConfig.__getattr__ = _text_config_fallback

if __name__ == "__main__":
    sys.argv = ["mergekit-yaml", *sys.argv[1:]]
    runpy.run_module("mergekit.scripts.run_yaml", run_name="__main__")
