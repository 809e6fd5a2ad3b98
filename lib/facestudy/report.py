"""Claims scorecard, glue helpers and figure style (chapter 0 explains the scorecard).

A chapter records each paper claim it tests with :func:`claim`. The verdict is never typed: it comes from
one of the rule functions below (:func:`greater`, :func:`ci_excludes_zero`, :func:`at_least`, ...) applied
to measured values, and the rule's text is stored with it. Each claim is glued into the notebook
(``<ID>_ours``, ``<ID>_verdict``) and appended to ``<records>/<chapter>.claims.json`` where ``records`` is
``$FACESTUDY_RECORDS`` (set by ``facestudy run``) or ``<cache>/records``. ``facestudy scorecard`` gathers
all chapters' records into the book's scorecard page.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

VERDICTS = ("reproduced", "not reproduced", "inconclusive")

_state: dict[str, Any] = {"chapter": None, "profile": None, "claims": []}


@dataclass
class Verdict:
    verdict: str
    rule: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


# ----------------------------------------------------------------------------------------- rules
def greater(a: float, b: float, *, margin: float = 0.0, tolerance: float = 0.0, what: str = "") -> Verdict:
    """``a > b + margin`` reproduced; ``a < b - tolerance`` not reproduced; in between inconclusive."""
    label = f" ({what})" if what else ""
    rule = f"reproduced if {a:.4g} > {b:.4g} + {margin:.3g}{label}; not reproduced if below {b:.4g} - {tolerance:.3g}"
    if a > b + margin:
        return Verdict("reproduced", rule)
    if a < b - tolerance:
        return Verdict("not reproduced", rule)
    return Verdict("inconclusive", rule)


def at_least(value: float, target: float, *, what: str = "") -> Verdict:
    """``value >= target`` reproduced, else not reproduced."""
    label = f" {what}" if what else ""
    rule = f"reproduced if{label} {value:.4g} >= {target:.4g}"
    return Verdict("reproduced" if value >= target else "not reproduced", rule)


def at_most(value: float, target: float, *, what: str = "") -> Verdict:
    label = f" {what}" if what else ""
    rule = f"reproduced if{label} {value:.4g} <= {target:.4g}"
    return Verdict("reproduced" if value <= target else "not reproduced", rule)


def ci_excludes_zero(low: float, high: float, *, what: str = "difference") -> Verdict:
    """A confidence interval of an effect: above 0 reproduced, below 0 not reproduced, else inconclusive."""
    rule = f"95% CI of {what} [{low:.4g}, {high:.4g}]: reproduced if it lies above 0, not reproduced if below"
    if low > 0:
        return Verdict("reproduced", rule)
    if high < 0:
        return Verdict("not reproduced", rule)
    return Verdict("inconclusive", rule)


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                      paired: bool = False, level: float = 0.95) -> tuple[float, float, float]:
    """Mean(a) - mean(b) with a percentile bootstrap CI: returns (estimate, low, high)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    if paired:
        if a.shape != b.shape:
            raise ValueError("paired bootstrap needs samples of equal length")
        d = a - b
        idx = rng.integers(0, len(d), size=(n_boot, len(d)))
        boots = d[idx].mean(axis=1)
        est = float(d.mean())
    else:
        ia = rng.integers(0, len(a), size=(n_boot, len(a)))
        ib = rng.integers(0, len(b), size=(n_boot, len(b)))
        boots = a[ia].mean(axis=1) - b[ib].mean(axis=1)
        est = float(a.mean() - b.mean())
    alpha = (1 - level) / 2
    return est, float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def all_of(verdicts: Sequence[Verdict], *, what: str = "") -> Verdict:
    """Combine sub-verdicts: all reproduced -> reproduced; any not reproduced -> not reproduced."""
    kinds = [v.verdict for v in verdicts]
    rule = (f"{what}: " if what else "") + "all of [" + "; ".join(v.rule for v in verdicts) + "]"
    if all(k == "reproduced" for k in kinds):
        return Verdict("reproduced", rule)
    if any(k == "not reproduced" for k in kinds):
        return Verdict("not reproduced", rule)
    return Verdict("inconclusive", rule)


def requires(value: float, minimum: float, verdict: Verdict, *, what: str) -> Verdict:
    """``verdict`` only when a precondition holds (``value >= minimum``), else inconclusive: for claims that
    are vacuous without it (chapter 3: "robust to landmark noise" says nothing about a model that ignores
    its landmarks)."""
    rule = f"inconclusive unless {what} {value:.4g} >= {minimum:.4g}; then {verdict.rule}"
    return Verdict(verdict.verdict if value >= minimum else "inconclusive", rule)


# ----------------------------------------------------------------------------------------- glue
def _in_kernel() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except Exception:
        return False


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Glue ``value`` under ``name`` for the book (``{glue:text}`name``` in markdown). Returns value."""
    if _in_kernel():
        from myst_nb import glue as _glue

        _glue(name, value, display=display)
    return value


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


# ----------------------------------------------------------------------------------------- claims
@dataclass
class Claim:
    id: str
    statement: str
    paper: str
    ours: str
    verdict: str
    rule: str
    evidence: str
    chapter: str | None
    profile: str | None


def _begin_chapter(chapter: str, profile: str) -> None:
    _state.update(chapter=chapter, profile=profile, claims=[])


def records_dir() -> Path:
    """Where claim records go: $FACESTUDY_RECORDS (set by ``facestudy run``), else the cache's records/."""
    if os.environ.get("FACESTUDY_RECORDS"):
        return Path(os.environ["FACESTUDY_RECORDS"]).resolve()
    cache = os.environ.get("FACESTUDY_CACHE") or Path.home() / ".cache" / "facestudy"
    return Path(cache).expanduser().resolve() / "records"


def claim(id: str, statement: str, *, paper: str, ours: Any, verdict: Verdict, evidence: str = "") -> Claim:
    """Record one paper claim with our measured number and a rule-derived verdict.

    ``verdict`` must come from a rule function of this module (a :class:`Verdict`); a bare string is
    refused so that no verdict is ever typed by hand.
    """
    if not isinstance(verdict, Verdict):
        raise TypeError("claim(verdict=...) takes a Verdict from a rule function (greater, at_least, ...), "
                        "never a typed string")
    ours_text = ours if isinstance(ours, str) else fmt(ours)
    c = Claim(id=id, statement=statement, paper=paper, ours=ours_text, verdict=verdict.verdict,
              rule=verdict.rule, evidence=evidence, chapter=_state["chapter"], profile=_state["profile"])
    _state["claims"] = [x for x in _state["claims"] if x.id != id] + [c]
    glue(f"{id}_ours", ours_text)
    glue(f"{id}_verdict", c.verdict)
    _write_records()
    icon = {"reproduced": "✔", "not reproduced": "✘", "inconclusive": "?"}[c.verdict]
    print(f"[{id}] {icon} {c.verdict}: {statement} | paper: {paper} | ours: {ours_text}\n    rule: {c.rule}")
    return c


def claims() -> list[Claim]:
    return list(_state["claims"])


def claims_table():
    """The chapter's claims as a DataFrame (for display at the end of a chapter)."""
    import pandas as pd

    rows = [{"claim": c.id, "statement": c.statement, "paper": c.paper, "ours": c.ours, "verdict": c.verdict}
            for c in _state["claims"]]
    return pd.DataFrame(rows, columns=["claim", "statement", "paper", "ours", "verdict"])


def _write_records() -> None:
    chapter = _state["chapter"] or "unknown"
    out = records_dir()
    out.mkdir(parents=True, exist_ok=True)
    payload = {"chapter": chapter, "profile": _state["profile"], "claims": [asdict(c) for c in _state["claims"]]}
    atomic_write_text(out / f"{chapter}.claims.json", json.dumps(payload, indent=2))


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_records(directory: Path) -> list[dict]:
    rows = []
    for f in sorted(Path(directory).glob("*.claims.json")):
        data = json.loads(f.read_text())
        for c in data.get("claims", []):
            rows.append(c)
    return rows


# ----------------------------------------------------------------------------------------- figures
def style() -> None:
    """The book's figure style (call once per notebook)."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 110, "figure.figsize": (7.0, 3.6), "axes.grid": True,
        "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9,
        "axes.titlesize": 10, "legend.fontsize": 8, "image.cmap": "viridis",
    })


def image_grid(images, nrow: int | None = None, titles: Sequence[str] | None = None, size: float = 1.2,
               ax_title: str | None = None):
    """Show a uint8 NHWC batch as a grid; returns the figure."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    n = len(images)
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * size, nrow * size), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if ax_title:
        fig.suptitle(ax_title)
    fig.tight_layout()
    return fig
