"""The dev split the tuner searches on, and the check that it shares nothing with the held-out eval split.

A manifest's datasets name an `eval` split (held out: the study and the report score on it)
and a `train` split, and no dev split. The dev split of a domain is therefore carved from its
train split, deterministically: the train items that share neither an id nor their content
(messages + answer) with any eval item, in a seeded order (sha256 of seed, domain and item
id), the first `size` of them, kept in file order. The same manifest, size and seed give the
same dev split on every machine.

Caveat, stated in the report: the demo zoo's experts were fine-tuned on their train split,
so dev accuracies are optimistic for an expert on its own domain. That is why the best few
trials are scored again on the held-out split, and only those numbers are compared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from graft_ui.models.manifest import Manifest
from graft_ui.zoo.domains import read_jsonl

DEV_SIZE = 32


class SplitOverlap(ValueError):
    """A dev item is also an eval item: tuning on it would leak the held-out data."""


def content_key(item: dict) -> str:
    """What makes two items the same question: the messages and the answer (not the id)."""
    return hashlib.sha256(json.dumps([item.get("messages"), item.get("answer")], sort_keys=True).encode()).hexdigest()


def _order(seed: int, domain: str, item_id: str) -> str:
    return hashlib.sha256(f"{seed}:{domain}:{item_id}".encode()).hexdigest()


@dataclass(frozen=True)
class DevSplit:
    domain: str
    items: tuple  # dicts as in the JSONL
    root: Path  # folder the items' image paths are relative to
    source: str  # "train split (carved)"
    eval_path: str
    dropped: int = 0  # train items left out because they equal an eval item

    @property
    def ids(self) -> list[str]:
        return [str(x.get("id")) for x in self.items]

    def describe(self) -> dict:
        return {"domain": self.domain, "n": len(self.items), "source": self.source, "ids": self.ids,
                "dropped_as_eval_duplicates": self.dropped, "eval": self.eval_path}


def assert_disjoint(dev: Sequence[dict], heldout: Sequence[dict], domain: str = "") -> None:
    """Raise SplitOverlap when a dev item shares its id or its content with a held-out item."""
    ids = {str(x.get("id")) for x in heldout}
    keys = {content_key(x) for x in heldout}
    same_id = sorted(str(x.get("id")) for x in dev if str(x.get("id")) in ids)
    same_content = sorted(str(x.get("id")) for x in dev if content_key(x) in keys)
    if same_id or same_content:
        raise SplitOverlap(f"the dev split of {domain or 'a domain'} overlaps its held-out eval split: "
                           f"{len(same_id)} shared id(s) {same_id[:5]}, {len(same_content)} shared question(s) "
                           f"{same_content[:5]}; tuning on them would leak the evaluation")


def dev_split(manifest: Manifest, domain: str, size: int = DEV_SIZE, seed: int = 0) -> DevSplit:
    """The dev split of `domain` (see the module docstring); raises ValueError naming what is missing."""
    if size < 1:
        raise ValueError(f"dev split size={size} must be at least 1")
    ds = manifest.dataset(domain)
    if not ds.train:
        raise ValueError(f"domain {domain!r} of manifest {manifest.name!r} has no train split to carve a dev split "
                         "from; add `train:` to its dataset entry")
    train, heldout = read_jsonl(ds.train), read_jsonl(ds.eval)
    ids, keys = {str(x.get("id")) for x in heldout}, {content_key(x) for x in heldout}
    usable = [(i, x) for i, x in enumerate(train) if str(x.get("id")) not in ids and content_key(x) not in keys]
    if not usable:
        raise ValueError(f"every train item of {domain!r} also appears in its eval split: no dev split is possible")
    chosen = sorted(sorted(usable, key=lambda ix: _order(seed, domain, str(ix[1].get("id", ix[0]))))[:size])
    items = tuple(x for _, x in chosen)
    assert_disjoint(items, heldout, domain)
    return DevSplit(domain, items, Path(ds.train).parent, "train split (carved)", str(ds.eval),
                    dropped=len(train) - len(usable))
