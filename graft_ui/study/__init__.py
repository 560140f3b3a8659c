"""The fusion-quality study: every method on every expert pair of a zoo.

    python -m graft_ui study --zoo full --out docs/results/zoo-full

Layout, one job per module:

    pairs.py       which pairs (with relatedness) and which method variants
    worker.py      one unit of work (single-expert eval, pair compatibility, fuse + eval), cached
    weights.py     task-vector cosine / sign agreement of two experts
    runner.py      plan what is not cached, run it (optionally in worker processes), collect
    predictors.py  Table 1 / Table 2 rows, kept fractions, gains, predictors' Spearman rho + bootstrap CI
    report.py      study.json, study.md
    plots.py       the figures (HTML + PNG)
    lookup.py      for the app: find a zoo's study by build fingerprint, read a pair's gain

The study sits above models, analysis and zoo; nothing below it imports it. `lookup` needs
no torch, so the UI can use it cheaply.
"""
