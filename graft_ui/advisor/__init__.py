"""The merge advisor: which experts to fuse, with a predicted gain and its error.

    fit.py       ridge regression of the gain on standardised pair signals, leave-one-pair-out metrics
    source.py    where the fitted study comes from (explicit path, $GRAFT_ADVISOR_STUDY, the committed
                 docs/results/zoo-full/study.json), and the predictor per kind fitted on it
    forecast.py  every pair of one kind on a target dataset: its signals, predicted gain ± held-out error,
                 the ranking and the one-line recommendation
    plots.py     the pair heatmaps (plotly): predicted gain, predicted kept fraction per method

The kept-fraction forecast (which pair, with which method, keeps how much; docs/ADVISOR.md):

    weights.py   weights-only signals (LoRA from the factors): cosine, sign agreement, norm ratio, B overlap
    probes.py    greedy answers, teacher-forced log-probs, prompt-loss gradients on a few prompts
    preview.py   the label-free merge preview and the gradient distance (Previewer: per-expert caching)
    signals.py   every signal on every (pair, method) of a zoo, joined with a study's measurements (cached)
    validate.py  the ridge model, leave-one-expert-out, bootstrap intervals over experts
    kept.py      build / save / load the fitted forecast (predictors.json); KeptForecast.predict
    report.py    predictors.json, study.md and the predicted-vs-measured plots
    plan.py      every (pair, method) on a target: kept fractions, accuracy, recommendation
    explain.py   what stands beside a compatibility bar (accuracy, forecast, the measured meaning)
    session.py   the app's entry points (plan, one-pair preview)

The advisor sits above study (it reads study.json), analysis, models and zoo; only the UI and
the `advise` command import it. No gradio here.
"""
