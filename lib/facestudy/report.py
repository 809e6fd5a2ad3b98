"""Claims, glue helpers and figure style (chapter 0, "How claims are judged", explains the verdicts).

A chapter records each paper claim it tests with :func:`claim`. The verdict is never typed: it comes from
one of the calibrated rule functions below (:func:`effect`, :func:`noninferior`, :func:`equivalent`,
:func:`correlation`, :func:`exact`, combined with :func:`gate` / :func:`all_of`) applied to a
:class:`facestudy.stats.Estimate`, and the rule's text is stored with it. Each claim is glued into the notebook
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

from . import stats
from .stats import Estimate

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "untestable here")
ICONS = {"reproduced": "✅", "not reproduced": "❌", "inconclusive": "❔", "untestable here": "⊘"}

_state: dict[str, Any] = {"chapter": None, "profile": None, "claims": []}


@dataclass
class Verdict:
    """A rule's decision. ``why`` says why a claim is untestable / inconclusive, ``needs`` what would
    make it testable or change it; ``estimate`` is the effect the rule read (None for exact counts)."""

    verdict: str
    rule: str
    why: str = ""
    needs: str = ""
    estimate: Estimate | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


# ----------------------------------------------------------------------------------------- rules
# Every rule below is calibrated: tests/test_stats_calibration.py simulates it with no effect at the sample
# sizes the chapters use (stats.DESIGNS, read from profiles.TABLE) and checks P("reproduced") <= 2.5 %.
# Four verdicts: reproduced / not reproduced (a real contradiction: the effect is significantly in the other
# direction, or significantly smaller than the smallest effect of interest) / inconclusive (tested with
# enough power, interval spans the decision point) / untestable here (a precondition fails: too few units,
# too little power for the paper's effect, or a mechanism gate).
def _num(v: float) -> str:
    return f"{v:.4g}" if np.isfinite(v) else ("-inf" if v < 0 else "inf")


def _power_or_inconclusive(est: Estimate, smallest: float | None, rule: str, what: str) -> Verdict:
    if smallest is not None and smallest > 0 and np.isfinite(est.mde) and est.mde > smallest:
        need = stats.seeds_needed(est, smallest)
        more = f"about {need} {est.unit}" if need else f"more {est.unit} or less noise"
        return Verdict("untestable here", rule,
                       why=f"too little power: this design detects only effects >= {_num(est.mde)} "
                           f"(80 % power), the effect of interest is {_num(smallest)}",
                       needs=f"{more} (the interval spans the decision point)", estimate=est)
    return Verdict("inconclusive", rule, why=f"the 95 % interval of {what or 'the effect'} spans the decision "
                   "point", needs=f"more {est.unit} would narrow the interval", estimate=est)


def _too_few(est: Estimate, minimum: int, rule: str) -> Verdict:
    if est.extra.get("degenerate"):
        return Verdict("untestable here", rule, why=f"all {est.n} {est.unit} gave exactly the same value, so the "
                       "interval has no spread to rest on (values measured more coarsely than they vary)",
                       needs="a finer measurement (more pairs or images per unit) or its resolution",
                       estimate=est)
    return Verdict("untestable here", rule, why=f"only {est.n} {est.unit}: the {est.method} rule needs >= "
                   f"{minimum} to reach the 2.5 % one-sided level", needs=f">= {minimum} {est.unit}", estimate=est)


def effect(est: Estimate, *, what: str, margin: float = 0.0, smallest: float | None = None) -> Verdict:
    """Directional claim "effect > margin" from an :class:`~facestudy.stats.Estimate`.

    reproduced: the 95 % interval lies above ``margin`` (sign-flip: one-sided p < 2.5 %);
    not reproduced: the interval lies below 0, or entirely below ``smallest`` (the smallest effect of
    interest, usually the paper's effect — our data exclude it); untestable here: too few units, or the
    design's minimal detectable effect exceeds ``smallest``; otherwise inconclusive.
    """
    rule = (f"{what}: {est.method} 95% interval over {est.n} {est.unit} [{_num(est.low)}, {_num(est.high)}]; "
            f"reproduced if it lies above {_num(margin)}, not reproduced if below 0"
            + (f" or below the smallest effect of interest {_num(smallest)}" if smallest is not None else "")
            + "; otherwise untestable (power) or inconclusive")
    if est.extra.get("too_few") or est.extra.get("degenerate"):
        return _too_few(est, stats.MIN_N_SIGNFLIP if est.method == "signflip" else stats.MIN_N_T, rule)
    if est.method == "signflip":  # decided by the exact permutation p-values (the t interval is shown)
        up = est.p < stats.ALPHA and est.estimate > margin
        down = est.extra.get("p_less", 1.0) < stats.ALPHA
    else:
        up, down = est.low > margin, est.high < 0
    if up:
        return Verdict("reproduced", rule, estimate=est)
    if down:
        return Verdict("not reproduced", rule, why="the effect is significantly in the opposite direction",
                       estimate=est)
    if smallest is not None and est.high < smallest:
        return Verdict("not reproduced", rule, why=f"the interval excludes the effect of interest "
                       f"({_num(smallest)}): the effect here is smaller", estimate=est)
    return _power_or_inconclusive(est, smallest, rule, what)


def noninferior(est: Estimate, *, delta: float, what: str) -> Verdict:
    """"A matches B": effect (A - B) > -delta, delta stated. reproduced if the interval's low end is above
    -delta; not reproduced if its high end is below -delta; untestable if the design cannot resolve delta."""
    rule = (f"{what}: non-inferiority margin {_num(delta)}; {est.method} 95% interval over {est.n} {est.unit} "
            f"[{_num(est.low)}, {_num(est.high)}]; reproduced if its low end > -{_num(delta)}, "
            f"not reproduced if its high end < -{_num(delta)}")
    if est.extra.get("too_few") or est.extra.get("degenerate"):
        return _too_few(est, stats.MIN_N_T, rule)
    if est.low > -delta:
        return Verdict("reproduced", rule, estimate=est)
    if est.high < -delta:
        return Verdict("not reproduced", rule, why=f"worse by more than the margin {_num(delta)}", estimate=est)
    return _power_or_inconclusive(est, delta, rule, what)


def equivalent(est: Estimate, *, delta: float, what: str) -> Verdict:
    """"No change": |effect| < delta (two one-sided tests = the 95 % interval inside (-delta, delta))."""
    rule = (f"{what}: equivalence margin ±{_num(delta)}; {est.method} 95% interval over {est.n} {est.unit} "
            f"[{_num(est.low)}, {_num(est.high)}]; reproduced if inside the margin, not reproduced if "
            "entirely outside it")
    if est.extra.get("too_few") or est.extra.get("degenerate"):
        return _too_few(est, stats.MIN_N_T, rule)
    if -delta < est.low and est.high < delta:
        return Verdict("reproduced", rule, estimate=est)
    if est.low > delta or est.high < -delta:
        return Verdict("not reproduced", rule, why=f"the change exceeds the margin {_num(delta)}", estimate=est)
    return _power_or_inconclusive(est, delta, rule, what)


def correlation(est: Estimate, *, sign: int, what: str) -> Verdict:
    """A claimed correlation of sign ``sign`` (+1 / -1), decided by the permutation p-value of
    :func:`facestudy.stats.spearman`; the bootstrap interval is shown."""
    if sign not in (1, -1):
        raise ValueError("sign must be +1 or -1")
    p_claim = est.p if sign > 0 else est.extra.get("p_less", 1.0)
    p_other = est.extra.get("p_less", 1.0) if sign > 0 else est.p
    rule = (f"{what}: Spearman rho {_num(est.estimate)} over {est.n} {est.unit}, 95% bootstrap interval "
            f"[{_num(est.low)}, {_num(est.high)}], one-sided permutation p = {p_claim:.3g}; reproduced if "
            f"p < {stats.ALPHA} in the claimed ({'positive' if sign > 0 else 'negative'}) direction, not "
            "reproduced if significant in the other")
    if est.extra.get("too_few") or est.extra.get("degenerate"):
        return Verdict("untestable here", rule, why=f"only {est.n} {est.unit} (or no variation)",
                       needs=">= 4 units with varying values", estimate=est)
    if p_claim < stats.ALPHA:
        return Verdict("reproduced", rule, estimate=est)
    if p_other < stats.ALPHA:
        return Verdict("not reproduced", rule, why="significant correlation of the opposite sign", estimate=est)
    return Verdict("inconclusive", rule, why="the correlation is not significant", needs=f"more {est.unit}",
                   estimate=est)


def exact(value: float, *, at_most: float | None = None, at_least: float | None = None, what: str) -> Verdict:
    """For deterministic quantities only (parameter counts from the architecture: no sampling noise)."""
    if (at_most is None) == (at_least is None):
        raise ValueError("exact() takes exactly one of at_most / at_least")
    ok = value <= at_most if at_most is not None else value >= at_least
    bound = f"<= {_num(at_most)}" if at_most is not None else f">= {_num(at_least)}"
    rule = f"{what} {_num(value)} {bound} (a deterministic quantity: no sampling noise)"
    return Verdict("reproduced" if ok else "not reproduced", rule)


def untestable(*, why: str, needs: str, what: str = "") -> Verdict:
    """A claim this design cannot test at all (say why and what would make it testable)."""
    return Verdict("untestable here", f"{what}: untestable here — {why}" if what else f"untestable here — {why}",
                   why=why, needs=needs)


def gate(ok: bool, verdict: Verdict, *, why: str, needs: str) -> Verdict:
    """A mechanism precondition: ``verdict`` when ``ok``, else "untestable here" with why / needs
    (e.g. KP-RPE's claims need a model whose embeddings move with its keypoints)."""
    rule = (f"precondition met; then {verdict.rule}" if ok
            else f"precondition failed ({why}); the rule it gates: {verdict.rule}")
    if ok:
        return Verdict(verdict.verdict, rule, verdict.why, verdict.needs, verdict.estimate)
    return Verdict("untestable here", rule, why=why, needs=needs, estimate=verdict.estimate)


def requires(value: float, minimum: float, verdict: Verdict, *, what: str, needs: str = "") -> Verdict:
    """:func:`gate` on ``value >= minimum`` (kept for readability in the chapters)."""
    return gate(value >= minimum, verdict, why=f"{what} is {_num(value)} < {_num(minimum)}",
                needs=needs or f"{what} >= {_num(minimum)}")


def all_of(verdicts: Sequence[Verdict], *, what: str = "") -> Verdict:
    """Every part must hold (intersection-union: no multiplicity correction needed). Any part not
    reproduced -> not reproduced; all reproduced -> reproduced; any untestable -> untestable; else
    inconclusive."""
    kinds = [v.verdict for v in verdicts]
    rule = (f"{what}: " if what else "") + "all of [" + "; ".join(v.rule for v in verdicts) + "]"
    whys = "; ".join(v.why for v in verdicts if v.why and v.verdict != "reproduced")
    needs = "; ".join(dict.fromkeys(v.needs for v in verdicts if v.needs and v.verdict != "reproduced"))
    first = next((v.estimate for v in verdicts if v.estimate is not None), None)
    if any(k == "not reproduced" for k in kinds):
        return Verdict("not reproduced", rule, why=whys, estimate=first)
    if all(k == "reproduced" for k in kinds):
        return Verdict("reproduced", rule, estimate=first)
    if any(k == "untestable here" for k in kinds):
        return Verdict("untestable here", rule, why=whys, needs=needs, estimate=first)
    return Verdict("inconclusive", rule, why=whys, needs=needs, estimate=first)



# ----------------------------------------------------------------------------------------- glue
def _in_kernel() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except Exception:
        return False


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Glue ``value`` under ``name`` for the book (``{glue:text}`name``` in markdown). Returns value.

    A numpy scalar is glued as the Python number it holds: its repr (``np.float64(0.5)``) is not a number the
    book's ``{glue:text}`name:.3f``` format can read, which ``-W`` turns into a failed build."""
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
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
    why: str = ""
    needs: str = ""
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    unit: str = ""
    method: str = ""
    scale: str = ""


def _begin_chapter(chapter: str, profile: str) -> None:
    _state.update(chapter=chapter, profile=profile, claims=[], rehearsal=False)


def records_dir() -> Path:
    """Where claim records go: $FACESTUDY_RECORDS (set by ``facestudy run``), else the cache's records/."""
    if os.environ.get("FACESTUDY_RECORDS"):
        return Path(os.environ["FACESTUDY_RECORDS"]).resolve()
    cache = os.environ.get("FACESTUDY_CACHE") or Path.home() / ".cache" / "facestudy"
    return Path(cache).expanduser().resolve() / "records"


def _finite(v: float) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def claim(id: str, statement: str, *, paper: str, ours: Any = None, verdict: Verdict, evidence: str = "",
          scale: str = "") -> Claim:
    """Record one paper claim with our measured number and a rule-derived verdict.

    ``verdict`` must come from a rule function of this module (a :class:`Verdict`); a bare string is
    refused so that no verdict is ever typed by hand. ``ours`` defaults to the rule's estimate with its
    interval; ``scale`` names the effect's unit (e.g. "LFW accuracy points") for the scorecard's forest plot.
    """
    if not isinstance(verdict, Verdict):
        raise TypeError("claim(verdict=...) takes a Verdict from a rule function (effect, noninferior, ...), "
                        "never a typed string")
    est = verdict.estimate
    if ours is None:
        ours = est.text(with_n=False) if est is not None else ""
    ours_text = ours if isinstance(ours, str) else fmt(ours)
    c = Claim(id=id, statement=statement, paper=paper, ours=ours_text, verdict=verdict.verdict,
              rule=verdict.rule, evidence=evidence, chapter=_state["chapter"], profile=_state["profile"],
              why=verdict.why, needs=verdict.needs, scale=scale)
    if est is not None:
        c.estimate, c.low, c.high = _finite(est.estimate), _finite(est.low), _finite(est.high)
        c.n, c.unit, c.method = int(est.n), est.unit, est.method
    if _state.get("rehearsal"):  # runtime.start(rehearse=True): capped work, the verdict means nothing
        print(f"[{id}] rehearsal: claim not recorded")
        return c
    _state["claims"] = [x for x in _state["claims"] if x.id != id] + [c]
    glue(f"{id}_ours", ours_text)
    glue(f"{id}_verdict", c.verdict)
    _write_records()
    extra = f"\n    why: {c.why}" if c.why else ""
    extra += f"\n    would change it: {c.needs}" if c.needs else ""
    print(f"[{id}] {ICONS[c.verdict]} {c.verdict}: {statement} | paper: {paper} | ours: {ours_text}\n"
          f"    rule: {c.rule}{extra}")
    return c


def claims() -> list[Claim]:
    return list(_state["claims"])


def claims_table():
    """The chapter's claims as a DataFrame (for display at the end of a chapter)."""
    import pandas as pd

    rows = [{"claim": c.id, "statement": c.statement, "paper": c.paper, "ours": c.ours,
             "verdict": f"{ICONS[c.verdict]} {c.verdict}", "why / what would change it":
             " — ".join(x for x in (c.why, c.needs) if x)} for c in _state["claims"]]
    return pd.DataFrame(rows, columns=["claim", "statement", "paper", "ours", "verdict",
                                       "why / what would change it"])


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
