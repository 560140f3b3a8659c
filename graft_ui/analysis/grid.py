"""Per-module values laid out as a heatmap grid: rows = layers, columns = module types.

Shared by the analysis figures (plots.py) and the gate maps (gate_plots.py); the rows and
columns are modules.py's `row_order` / `column_order`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from graft_ui.analysis.modules import column_order, module_keys, row_order


def grid(modules: Mapping[str, Mapping[str, float] | float], value: str = "rho_n") -> tuple[list[str], list[str], np.ndarray, list[list[str]]]:
    """(row labels, column labels, z (rows, cols) with NaN where no module, hover text)."""
    if not modules:
        raise ValueError("no modules to draw")
    keys = module_keys(modules)
    rows, cols = row_order(keys.values()), column_order(keys.values())
    ri, ci = {r: i for i, r in enumerate(rows)}, {c: j for j, c in enumerate(cols)}
    z = np.full((len(rows), len(cols)), np.nan)
    hover = [["" for _ in cols] for _ in rows]
    for name, vals in modules.items():
        k = keys[name]
        i, j = ri[k.row_label], ci[k.column_label]
        if isinstance(vals, Mapping):
            if value not in vals:
                raise ValueError(f"module {name!r} has no value {value!r}; it has {sorted(vals)}")
            z[i, j] = float(vals[value])
            extra = "<br>".join(f"{kk} = {fmt(vv)}" for kk, vv in vals.items() if isinstance(vv, (int, float)) and kk != value)
        else:
            z[i, j] = float(vals)
            extra = ""
        hover[i][j] = f"{name}<br><b>{value} = {fmt(z[i, j])}</b>" + (f"<br>{extra}" if extra else "")
    return rows, cols, z, hover


def fmt(x: Any) -> str:
    """A number for hover text: 4 decimals in [1e-3, 1e4), else 4 significant digits in e-notation."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x == 0 or (1e-3 <= abs(x) < 1e4):
        return f"{x:.4f}"
    return f"{x:.3e}"
