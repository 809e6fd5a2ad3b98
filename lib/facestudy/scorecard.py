"""The claims scorecard page: every chapter's recorded claims, generated at build time (``facestudy scorecard``).

For each chapter: the counts per verdict, then one row per claim with the paper's number, ours with its
interval, the number of units (seeds, identities, folds), the verdict and — for untestable and inconclusive
claims — why and what would change it. The rule text of every claim sits in a collapsible block. Two figures
(verdict counts per chapter; a forest plot of every effect's interval against its decision point) and a CSV
export of the whole table are written beside the page.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .report import ICONS, VERDICTS, atomic_write_text, load_records

ICON = {k: f"{v} {k}" for k, v in ICONS.items()}
COLUMNS = ["chapter", "profile", "id", "statement", "paper", "ours", "estimate", "low", "high", "n", "unit",
           "method", "verdict", "why", "needs", "rule", "evidence", "scale"]
COLOURS = {"reproduced": "#2e7d32", "not reproduced": "#c62828", "inconclusive": "#f9a825",
           "untestable here": "#9e9e9e"}


def _cell(text) -> str:
    return str("" if text is None else text).replace("|", "\\|").replace("\n", " ")


def _chapter_titles() -> dict[str, str]:
    try:
        from . import chapters

        return {c.id: c.title for c in chapters.chapters()}
    except Exception:  # noqa: BLE001 - titles are a nicety; ids are enough
        return {}


def _figures(rows: list[dict], out_dir: Path) -> list[str]:
    """Verdict counts per chapter and a forest plot; returns the image file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = []
    chapters = list(dict.fromkeys(r.get("chapter") or "?" for r in rows))
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(chapters) + 1.0))
    left = np.zeros(len(chapters))
    for v in VERDICTS:
        counts = np.array([sum(1 for r in rows if (r.get("chapter") or "?") == c and r["verdict"] == v)
                           for c in chapters])
        ax.barh(chapters, counts, left=left, color=COLOURS[v], label=v)
        left += counts
    ax.invert_yaxis()
    ax.set_xlabel("claims")
    ax.legend(loc="lower right", fontsize=7, ncol=2)
    ax.set_title("verdicts per chapter")
    fig.tight_layout()
    fig.savefig(out_dir / "scorecard_verdicts.png", dpi=110)
    plt.close(fig)
    names.append("scorecard_verdicts.png")

    eff = [r for r in rows if r.get("low") is not None and r.get("high") is not None
           and r.get("estimate") is not None]
    if eff:
        fig, ax = plt.subplots(figsize=(7.0, 0.32 * len(eff) + 1.0))
        for i, r in enumerate(eff):
            lo, hi, est = float(r["low"]), float(r["high"]), float(r["estimate"])
            scale = max(abs(lo), abs(hi), abs(est), 1e-12)  # each row on its own scale: zero is what matters
            ax.plot([lo / scale, hi / scale], [i, i], color=COLOURS[r["verdict"]], lw=2.5)
            ax.plot(est / scale, i, "o", color="k", ms=3)
            ax.text(1.05, i, f"{est:+.3g} [{lo:.3g}, {hi:.3g}] {r.get('scale') or ''}", va="center", fontsize=6,
                    transform=ax.get_yaxis_transform())
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(eff)), [f"{r['id']} ({r.get('n')} {r.get('unit', '')})" for r in eff], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(-1.05, 1.05)
        ax.set_xticks([-1, 0, 1], ["−", "0", "+ (paper's direction)"])
        ax.set_title("each effect's 95 % interval against 0 (rows scaled to their own range; colour = verdict)",
                     fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "scorecard_forest.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        names.append("scorecard_forest.png")
    return names


def write_csv(rows: list[dict], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in COLUMNS})
    atomic_write_text(path, buf.getvalue())
    return path


def write_scorecard(records: Path, out: Path, figures: bool = True) -> Path:
    rows = load_records(records)
    runs = {}
    for f in sorted(Path(records).glob("*.run.json")):
        d = json.loads(f.read_text())
        runs[d["chapter"]] = d
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Claims scorecard", "",
        "Every headline claim the chapters test, with the paper's number, ours with its 95 % interval, the number "
        "of independent units behind it (training seeds, identities, folds), and a verdict computed by a "
        "calibrated rule — never typed by hand (see [How claims are judged](00_setup.ipynb) in chapter 0). "
        "This page is generated from the executed chapters' records when the book is built; the profile says at "
        "which size each chapter ran: `default` numbers come from CPU-sized models, not the paper's scale, and "
        "claims that cannot be tested at that scale say so (⊘) instead of blaming the paper.", "",
    ]
    if not rows:
        lines.append("*No chapter has recorded a claim yet.*")
    else:
        counts = {k: sum(r["verdict"] == k for r in rows) for k in VERDICTS}
        lines.append(f"**{len(rows)} claims**: " + ", ".join(f"{v} {ICON[k]}" for k, v in counts.items()) + ".")
        csv_path = write_csv(rows, out.parent / "scorecard.csv")
        lines += ["", f"Machine-readable: {{download}}`the whole table as CSV <{csv_path.name}>` "
                  "(and the per-chapter JSON records beside the executed notebooks).", ""]
        if figures:
            for name in _figures(rows, out.parent):
                lines += [f"![{name}]({name})", ""]
        titles = _chapter_titles()
        for chapter in dict.fromkeys(r.get("chapter") for r in rows):
            crow = [r for r in rows if r.get("chapter") == chapter]
            prof = crow[0].get("profile")
            title = titles.get(chapter or "", "")
            cc = {k: sum(r["verdict"] == k for r in crow) for k in VERDICTS}
            lines += [f"## {chapter}{(' — ' + title) if title else ''}", "",
                      f"Profile `{prof}` · " + " · ".join(f"{ICONS[k]} {v}" for k, v in cc.items() if v), "",
                      "| claim | statement | paper | ours (95 % interval) | n | verdict | why / what would change it |",
                      "|---|---|---|---|---|---|---|"]
            for r in crow:
                n = f"{r.get('n')} {r.get('unit') or ''}".strip() if r.get("n") is not None else ""
                why = " — ".join(x for x in (r.get("why", ""), r.get("needs", "")) if x)
                lines.append(f"| {_cell(r['id'])} | {_cell(r['statement'])} | {_cell(r['paper'])} | "
                             f"{_cell(r['ours'])} | {_cell(n)} | {ICON.get(r['verdict'], r['verdict'])} | "
                             f"{_cell(why)} |")
            lines += ["", f":::{{dropdown}} The rules of {chapter}", ""]
            for r in crow:
                lines += [f"- **{r['id']}** — {r['rule']}" + (f" *Evidence:* {r['evidence']}" if r.get("evidence")
                                                               else ""), ""]
            lines += [":::", ""]
    if runs:
        lines += ["", "## How the chapters ran", "", "| chapter | profile | status | wall time (s) | finished |",
                  "|---|---|---|---|---|"]
        for d in runs.values():
            lines.append(f"| {d['chapter']} | {d['profile']} | {d['status']} | {d['wall_s']:.1f} | "
                         f"{d.get('finished', '')} |")
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
