"""The merge advisor: which experts to fuse, with a predicted gain and its error.

    fit.py       ridge regression of the gain on standardised pair signals, leave-one-pair-out metrics
    source.py    where the fitted study comes from (explicit path, $GRAFT_ADVISOR_STUDY, the committed
                 docs/results/zoo-full/study.json), and the predictor per kind fitted on it
    forecast.py  every pair of one kind on a target dataset: its signals, predicted gain ± held-out error,
                 the ranking and the one-line recommendation
    plots.py     the pair heatmap (plotly)

The advisor sits above study (it reads study.json), analysis, models and zoo; only the UI and
the `advise` command import it. No gradio here.
"""
