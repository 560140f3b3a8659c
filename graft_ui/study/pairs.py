"""What the study fuses: expert pairs (with their relatedness) and method variants.

Pairs: every unordered pair of experts of one kind, in manifest order (the first is
Graft's base side). Relatedness by design of the demo zoo:

    same       both experts are of one domain (e.g. math-lora + math-lora-b)
    related    the domain pair is listed in graft_ui.zoo.profiles.RELATED_DOMAINS
    unrelated  any other domain pair of a zoo manifest
    n/a        a manifest that is not a demo zoo (it carries no relatedness)

Variants: every registered method at its defaults, plus Graft's gate ablations
(gates = local / global), its equation-4 global form, and the `scale=2` extension (not in
the paper: Graft's gates sum to 1 per channel, so its fused delta is about half of each
expert's; DESIGN.md §7), labelled `graft[gates=local]` etc.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from graft_ui.merging.registry import METHODS, get_method, validate_params
from graft_ui.models.manifest import Manifest, ModelEntry
from graft_ui.zoo import profiles


GRAFT_ABLATIONS: tuple[dict[str, Any], ...] = ({"gates": "local"}, {"gates": "global"}, {"global_form": "eq4"},
                                               {"scale": 2.0})


def related_domains() -> frozenset:
    return profiles.RELATED_DOMAINS


@dataclass(frozen=True)
class Pair:
    a: ModelEntry
    b: ModelEntry
    relatedness: str

    @property
    def kind(self) -> str:
        return self.a.kind

    @property
    def name(self) -> str:
        return f"{self.a.name}+{self.b.name}"

    @property
    def domains(self) -> list[str]:
        """The pair's domains, each once (a same-domain pair has one)."""
        return list(dict.fromkeys([self.a.domain, self.b.domain]))

    @property
    def target(self) -> str:
        return "+".join(self.domains)


def relatedness(a: ModelEntry, b: ModelEntry, *, is_zoo: bool, related: frozenset | None = None) -> str:
    if a.domain and a.domain == b.domain:
        return "same"
    if not is_zoo:
        return "n/a"
    related = related_domains() if related is None else related
    return "related" if frozenset({a.domain, b.domain}) in related else "unrelated"


def parse_pair(spec: str) -> tuple[str, str]:
    parts = [p.strip() for p in spec.split("+")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"pair {spec!r} must be written A+B (two expert names)")
    return parts[0], parts[1]


def enumerate_pairs(manifest: Manifest, kinds: Sequence[str] = ("lora", "full"), *, is_zoo: bool,
                    only: Sequence[str] | None = None) -> list[Pair]:
    """Every unordered pair of experts of one kind (or just `only`, specs like 'math-lora+code-lora')."""
    for k in kinds:
        if k not in ("lora", "full"):
            raise ValueError(f"kind {k!r} must be 'lora' or 'full'")
    related = related_domains()
    if only:
        pairs = []
        for spec in only:
            a, b = (manifest.expert(n) for n in parse_pair(spec))
            if a.kind != b.kind:
                raise ValueError(f"pair {spec!r} mixes a {a.kind} and a {b.kind} expert; pair experts of one kind")
            pairs.append(Pair(a, b, relatedness(a, b, is_zoo=is_zoo, related=related)))
    else:
        pairs = [Pair(a, b, relatedness(a, b, is_zoo=is_zoo, related=related))
                 for k in kinds
                 for a, b in itertools.combinations([e for e in manifest.experts if e.kind == k], 2)]
    bad = sorted({e.name for p in pairs for e in (p.a, p.b) if not e.domain or e.domain not in manifest.datasets})
    if bad:
        raise ValueError(f"expert(s) {bad} have no domain dataset in manifest {manifest.name!r}")
    if not pairs:
        raise ValueError(f"manifest {manifest.name!r} has no pair of experts of kind(s) {list(kinds)}")
    return pairs


@dataclass(frozen=True)
class Variant:
    method: str
    params: dict = field(default_factory=dict)  # overrides of the method's defaults

    @property
    def label(self) -> str:
        if not self.params:
            return self.method
        return f"{self.method}[{','.join(f'{k}={v}' for k, v in sorted(self.params.items()))}]"

    @property
    def is_ablation(self) -> bool:
        return bool(self.params)


_LABEL = re.compile(r"^(?P<m>[A-Za-z0-9_]+)(\[(?P<p>[^\]]*)\])?$")


def parse_variant(label: str) -> Variant:
    """'ties' or 'graft[gates=local]' -> Variant, parameters checked against the registry."""
    m = _LABEL.match(label.strip())
    if not m:
        raise ValueError(f"method {label!r} must be NAME or NAME[param=value,...]")
    method = get_method(m.group("m")).name
    params: dict[str, Any] = {}
    for item in filter(None, (m.group("p") or "").split(",")):
        key, _, raw = item.partition("=")
        if not _:
            raise ValueError(f"method {label!r}: parameter {item!r} must be key=value")
        params[key.strip()] = _coerce(raw.strip())
    validate_params(method, params)  # raises naming an unknown key or a bad value
    return Variant(method, params)


def _coerce(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def default_variants(methods: Sequence[str] | None = None, *, ablations: bool = True) -> list[Variant]:
    """Every registered method (or `methods`) at its defaults, then Graft's ablations when graft is in.
    mergekit's family (`Method.in_defaults` false) runs when named."""
    get_method("graft")  # importing the package registers every method
    variants = [parse_variant(m) for m in methods] if methods else [Variant(m) for m in sorted(METHODS) if METHODS[m].in_defaults]
    if ablations and any(v.method == "graft" and not v.params for v in variants):
        have = {v.label for v in variants}
        variants += [v for v in (Variant("graft", dict(p)) for p in GRAFT_ABLATIONS) if v.label not in have]
    return variants
