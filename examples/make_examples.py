"""Regenerate the example images in examples/images/ with the demo zoo's own drawing code.

    .venv/bin/python examples/make_examples.py

The images follow the zoo's synthetic domains (so zoo experts can answer them); the
prompts that use them are in examples/prompts.json.
"""

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from graft_ui.zoo.domains import chart_image, digits_image, shapes_scene, slide_image

HERE = Path(__file__).resolve().parent / "images"


def main() -> None:
    HERE.mkdir(exist_ok=True)
    img, shapes = shapes_scene(random.Random(7))
    img.save(HERE / "math-shapes.png")
    print("math-shapes:", shapes)
    img, a, b = digits_image(random.Random(3))
    img.save(HERE / "math-digits.png")
    print("math-digits:", a, "+", b)
    img, values, kind, color = chart_image(random.Random(11))
    img.save(HERE / "finance-chart.png")
    print("finance-chart:", values, kind, color)
    img, n, k = slide_image(random.Random(6))
    img.save(HERE / "medical-slide.png")
    print("medical-slide:", n, "cells,", k, "abnormal")


if __name__ == "__main__":
    main()
