"""Simulated arena voters with known truths against the real vote store and fitting code.

    .venv/bin/python bench/bench_arena_sim.py                 # seeded, bounded: a few minutes on 2 cores
    .venv/bin/python bench/bench_arena_sim.py --seed 3 --json sim.json

Variants have true log-strengths; their answers are synthetic texts whose length (and a little
markdown) varies per answer, and one variant ("verbose") answers about three times longer than the
rest. Honest voters prefer the stronger answer (`P(A) = sigmoid(theta_A - theta_B + bias * z_len)`,
a length bias on the z-scored length difference). Adversarial voter sessions are of two kinds:
contrarians vote for the weaker side, and riggers push one weak variant (as in arXiv 2501.17858's
target-only attack: they skip every battle without it and always vote for it). Every
vote goes through `VoteStore.record_vote` into a temporary SQLite store (loopback: nothing leaves
the machine), and is read back before fitting with the app's code. Four figures:

1. rank correlation (Spearman) of the style-controlled, quality-filtered fit with the truth;
2. adaptive vs uniform pairing (honest, unbiased voters; new variants joining a settled arena, and a fresh
   arena for contrast): the votes adaptive pairing needs to reach the
   mean 95% interval width uniform pairing reached after `--uniform-votes` votes (target <= 0.7x);
3. the verbose variant's rating error against its truth, raw and style-controlled, and whether the
   truth lies in its controlled interval;
4. share of adversarial voter sessions flagged by the e-value test (target >= 90%) and of honest ones
   (target <= 5%).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graft_ui.arena.pairing import ADAPTIVE, UNIFORM, draw_pair, pair_weights  # noqa: E402
from graft_ui.arena.quality import check_votes  # noqa: E402
from graft_ui.arena.ratings import SCALE, bootstrap, bradley_terry  # noqa: E402
from graft_ui.arena.store import VoteStore  # noqa: E402
from graft_ui.arena.style import style_controlled  # noqa: E402

WORDS = "the a model answer value result step so then we find check because number sum total".split()
VERBOSE = "verbose"
CONTRARIAN, RIGGER = "contrarian", "rigger"  # adversarial voter kinds; honest voters have kind None


class World:
    """True strengths, answer lengths, voters; draws answers and votes from one seeded RNG."""

    def __init__(self, k: int, spread: float, bias: float, seed: int):
        self.rng = random.Random(seed)
        self.names = [f"v{i}" for i in range(k - 1)] + [VERBOSE]
        theta = np.linspace(-spread / 2, spread / 2, k)
        order = list(range(k))
        self.rng.shuffle(order)
        self.theta = {n: float(theta[order[i]]) for i, n in enumerate(self.names)}
        # the verbose variant sits mid-field, so its raw inflation moves it past neighbours
        mid = sorted(self.theta.values())[k // 2 - 1]
        swap = next(n for n, t in self.theta.items() if t == mid)
        self.theta[swap], self.theta[VERBOSE] = self.theta[VERBOSE], mid
        self.mean_words = {n: (150 if n == VERBOSE else 50) for n in self.names}
        self.bias = bias
        self.log_len_sd = 0.5

    def answer(self, name: str) -> str:
        n = max(3, int(self.mean_words[name] * math.exp(self.rng.gauss(0, self.log_len_sd))))
        words = " ".join(self.rng.choice(WORDS) for _ in range(n))
        if self.rng.random() < 0.3:
            words += "\n- " + "\n- ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 4)))
        return words

    @property
    def target(self) -> str:
        """The variant riggers push: the second weakest."""
        return sorted(self.names, key=self.theta.get)[1]

    def vote(self, a: str, b: str, ans_a: str, ans_b: str, kind: str | None) -> str:
        if kind == CONTRARIAN:
            return "a" if self.theta[a] < self.theta[b] else "b"
        if kind == RIGGER:
            return "a" if a == self.target else "b"
        la, lb = len(ans_a.split()), len(ans_b.split())
        d = (la - lb) / (la + lb + 1) / 0.45  # ~ z-scored: sd of d between a verbose and a plain answer
        p = 1 / (1 + math.exp(-(self.theta[a] - self.theta[b] + self.bias * d)))
        u = self.rng.random()
        if abs(u - p) < 0.04:
            return "tie"
        return "a" if u < p else "b"

    def truth_rating(self, names) -> dict[str, float]:
        mean = np.mean([self.theta[n] for n in names])
        return {n: 1000 + SCALE * (self.theta[n] - mean) for n in names}


def play(world: World, store: VoteStore, n_votes: int, *, pairing: str, voters: list[tuple[str, str | None]],
         reweigh_every: int = 25, tag: str = "", pool: list[str] | None = None) -> None:
    """Cast n_votes votes into the store: voter sessions take turns in blocks of 5-25 votes."""
    rng = world.rng
    pool = pool or world.names
    weights = pair_weights(store.votes(blind=True), pool, mode=pairing)
    cast, turn = 0, 0
    while cast < n_votes:
        voter, kind = rng.choice(voters)
        for _ in range(rng.randint(5, 25)):
            if cast >= n_votes:
                break
            if pairing == ADAPTIVE and cast % reweigh_every == 0:
                weights = pair_weights(store.votes(blind=True), pool, mode=ADAPTIVE)
            a, b = draw_pair(weights, rng)
            while kind == RIGGER and world.target not in (a, b):  # a rigger skips battles without its target
                a, b = draw_pair(weights, rng)
            ans_a, ans_b = world.answer(a), world.answer(b)
            store.record_vote(turn_id=f"{tag}{turn}", battle_id=f"{tag}{turn}", variant_a=a, variant_b=b,
                              vote=world.vote(a, b, ans_a, ans_b, kind), prompt="p", answer_a=ans_a,
                              answer_b=ans_b, voter_id=voter, read_s=30.0)
            cast += 1
            turn += 1


def mean_width(votes, n_bootstrap: int, seed: int) -> float:
    ci = bootstrap(votes, n=n_bootstrap, seed=seed)
    return float(np.mean([hi - lo for lo, hi in ci.values()]))


def pairing_figure(args, tmp: Path, seed: int, history: int) -> dict:
    """Votes adaptive pairing needs for the mean interval width uniform pairing reaches.

    The usual arena situation: `--history` votes already settle the first variants when the last
    `--new` variants join (fused variants arrive over time). From copies of that store, uniform
    pairing casts `--uniform-votes` more votes; adaptive pairing casts votes in steps until its
    mean 95% interval width (over all variants, same bootstrap) is no wider."""
    honest = [(f"h{i}", None) for i in range(50)]
    world = World(args.variants, args.spread, 0.0, seed)
    old = world.names[: len(world.names) - args.new]
    for name in ("history", "uniform", "adaptive"):
        (tmp / f"{name}.sqlite").unlink(missing_ok=True)
    with VoteStore.open(tmp / "history.sqlite", synchronous="NORMAL") as store:
        play(world, store, history, pairing=UNIFORM, voters=honest, tag="h", pool=old)
    out = {"seed": seed, "history_votes": history, "new_variants": args.new}
    shutil.copy(tmp / "history.sqlite", tmp / "uniform.sqlite")
    shutil.copy(tmp / "history.sqlite", tmp / "adaptive.sqlite")
    with VoteStore.open(tmp / "uniform.sqlite", synchronous="NORMAL") as store:
        play(world, store, args.uniform_votes, pairing=UNIFORM, voters=honest, tag="u")
        target = mean_width(store.votes(), args.bootstrap, seed)
    out["uniform_votes"], out["uniform_width"] = args.uniform_votes, target
    step = max(args.uniform_votes // 20, 25)
    with VoteStore.open(tmp / "adaptive.sqlite", synchronous="NORMAL") as store:
        n, width = 0, math.inf
        while width > target and n < 2 * args.uniform_votes:
            play(world, store, step, pairing=ADAPTIVE, voters=honest, tag=f"a{n}-")
            n += step
            if n >= args.uniform_votes // 5:
                width = mean_width(store.votes(), args.bootstrap, seed)
    out["adaptive_votes"], out["adaptive_width"] = n, width
    out["ratio"] = n / args.uniform_votes
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", type=int, default=12)
    ap.add_argument("--spread", type=float, default=6.0, help="true log-strengths span this many nats")
    ap.add_argument("--votes", type=int, default=4000, help="votes of the main run (style, quality, rank)")
    ap.add_argument("--honest", type=int, default=200, help="honest voter sessions")
    ap.add_argument("--adversarial", type=int, default=20, help="adversarial voter sessions (half contrarians, half riggers)")
    ap.add_argument("--bias", type=float, default=0.5, help="honest voters' length bias, nats per sd")
    ap.add_argument("--history", type=int, default=3000, help="votes among the first variants before the new ones join")
    ap.add_argument("--new", type=int, default=4, help="variants that join after the history")
    ap.add_argument("--uniform-votes", type=int, default=1500, help="votes uniform pairing casts after the history")
    ap.add_argument("--repeats", type=int, default=5, help="pairing comparisons (seeds) averaged")
    ap.add_argument("--bootstrap", type=int, default=60)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="arena-sim-") as d:
        tmp = Path(d)
        world = World(args.variants, args.spread, args.bias, args.seed)
        voters = [(f"h{i}", None) for i in range(args.honest)]
        voters += [(f"x{i}", CONTRARIAN if i % 2 else RIGGER) for i in range(args.adversarial)]
        with VoteStore.open(tmp / "main.sqlite", synchronous="NORMAL") as store:
            play(world, store, args.votes, pairing=UNIFORM, voters=voters)
            votes = store.votes()
            hashed = {store.hash_client(v): kind for v, kind in voters}  # the store keeps voter ids hashed
        quality = check_votes(votes)
        flagged = {c.voter for c in quality.flagged}
        seen = {v.voter for v in votes}
        tested = {kind: [v for v, k in hashed.items() if k == kind and v in quality.checks]
                  for kind in (None, CONTRARIAN, RIGGER)}
        adv, hon = tested[CONTRARIAN] + tested[RIGGER], tested[None]
        counted = quality.keep(votes)
        raw = bradley_terry(counted)
        fit = style_controlled(counted, n_bootstrap=args.bootstrap, seed=args.seed)
        ctrl = fit.ratings()
        truth = world.truth_rating(fit.variants)
        i = fit.variants.index(VERBOSE)
        figures = {
            "votes": len(votes), "voter_sessions": len(seen),
            "spearman_controlled_vs_truth": float(spearmanr([ctrl[n] for n in fit.variants],
                                                            [truth[n] for n in fit.variants]).statistic),
            "spearman_raw_vs_truth": float(spearmanr([raw[n] for n in fit.variants],
                                                     [truth[n] for n in fit.variants]).statistic),
            "verbose_truth": truth[VERBOSE], "verbose_raw": raw[VERBOSE], "verbose_controlled": ctrl[VERBOSE],
            "verbose_ci": [float(fit.ci_low[i]), float(fit.ci_high[i])],
            "verbose_truth_in_ci": bool(fit.ci_low[i] <= truth[VERBOSE] <= fit.ci_high[i]),
            "length_coef": float(fit.coef[0]),
            "adversarial_tested": len(adv), "adversarial_flagged": sum(v in flagged for v in adv) / max(len(adv), 1),
            "contrarians_flagged": sum(v in flagged for v in tested[CONTRARIAN]) / max(len(tested[CONTRARIAN]), 1),
            "riggers_flagged": sum(v in flagged for v in tested[RIGGER]) / max(len(tested[RIGGER]), 1),
            "honest_tested": len(hon), "honest_flagged": sum(v in flagged for v in hon) / max(len(hon), 1),
        }
        figures["length_bias_removed"] = 1 - abs(ctrl[VERBOSE] - truth[VERBOSE]) / max(abs(raw[VERBOSE] - truth[VERBOSE]), 1e-9)
        runs = [pairing_figure(args, tmp, args.seed + 1 + r, args.history) for r in range(args.repeats)]
        figures["pairing_runs"] = runs
        figures["ratio"] = float(np.mean([r["ratio"] for r in runs]))
        figures["fresh_arena"] = pairing_figure(args, tmp, args.seed + 1, 0)
    figures["seconds"] = time.perf_counter() - t0
    f = figures
    print(f"votes {f['votes']} from {f['voter_sessions']} voter sessions; {f['seconds']:.0f} s")
    print(f"rank correlation with the truth: {f['spearman_controlled_vs_truth']:.3f} style-controlled, "
          f"{f['spearman_raw_vs_truth']:.3f} raw")
    for r in f["pairing_runs"]:
        print(f"pairing (seed {r['seed']}): {r['new_variants']} variants join after {r['history_votes']} votes; uniform "
              f"{r['uniform_votes']} votes -> mean interval {r['uniform_width']:.0f}; adaptive reached "
              f"{r['adaptive_width']:.0f} after {r['adaptive_votes']} votes: {r['ratio']:.2f}x")
    fa = f["fresh_arena"]
    print(f"pairing, all {args.variants} variants new (no history): adaptive {fa['ratio']:.2f}x the votes of uniform "
          f"(no settled pairs to skip: a fresh arena gains less)")
    print(f"adaptive pairing needs {f['ratio']:.2f}x the votes of uniform for the same mean interval width, mean over "
          f"{len(f['pairing_runs'])} seeds (target <= 0.70x)")
    print(f"length bias: verbose truth {f['verbose_truth']:.0f}, raw {f['verbose_raw']:.0f}, controlled "
          f"{f['verbose_controlled']:.0f} [{f['verbose_ci'][0]:.0f}, {f['verbose_ci'][1]:.0f}]: "
          f"{f['length_bias_removed']:.0%} of the bias removed, truth in interval: {f['verbose_truth_in_ci']}; "
          f"fitted length coefficient {f['length_coef']:.2f}")
    print(f"adversarial voters flagged: {f['adversarial_flagged']:.0%} of {f['adversarial_tested']} (target >= 90%; "
          f"contrarians {f['contrarians_flagged']:.0%}, riggers {f['riggers_flagged']:.0%}); "
          f"honest voters flagged: {f['honest_flagged']:.1%} of {f['honest_tested']} (target <= 5%)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
