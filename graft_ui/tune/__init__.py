"""Auto-tune: search a method's parameters on a dev split, check the best on held-out data.

    splits.py   the dev split of a domain (the manifest's datasets have none: carved from the train
                split, deterministically) and the dev/eval disjointness check
    space.py    what is searched per method (parameters and scope) and how a trial becomes a recipe
    tuner.py    the optuna TPE loop (seeded, ask/tell, time budget, Stop), held-out scoring of the best few
    report.py   tune.json, tune.md, the recipes, the Pareto figure
    plots.py    the Pareto figure: dev accuracy on domain A vs B per trial, experts and defaults marked

Above models, study (its model holder) and zoo (the evaluation harness); no gradio.
"""
