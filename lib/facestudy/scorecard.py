"""The claims scorecard page: every chapter's recorded claims in one table, generated at build time."""
from __future__ import annotations

import json
from pathlib import Path

from .report import ICONS, atomic_write_text, load_records

ICON = {k: f"{v} {k}" for k, v in ICONS.items()}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_scorecard(records: Path, out: Path) -> Path:
    rows = load_records(records)
    runs = {}
    for f in sorted(Path(records).glob("*.run.json")):
        d = json.loads(f.read_text())
        runs[d["chapter"]] = d
    lines = [
        "# Claims scorecard", "",
        "Every paper claim the chapters test, with the paper's number, ours, and a verdict computed from our "
        "measured values by the rule shown (never typed by hand). This page is generated from the executed "
        "chapters' records when the book is built; the profile column says at which size each chapter ran — "
        "`default` numbers come from small CPU models and are not the paper's scale.", "",
    ]
    if not rows:
        lines.append("*No chapter has recorded a claim yet.*")
    else:
        counts = {k: sum(r["verdict"] == k for r in rows) for k in ICON}
        lines.append(f"**{len(rows)} claims**: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".")
        lines += ["", "| chapter | claim | statement | paper | ours | verdict | rule |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {_cell(r.get('chapter'))} ({_cell(r.get('profile'))}) | {_cell(r['id'])} | "
                         f"{_cell(r['statement'])} | {_cell(r['paper'])} | {_cell(r['ours'])} | "
                         f"{ICON.get(r['verdict'], r['verdict'])} | {_cell(r['rule'])} |")
    if runs:
        lines += ["", "## How the chapters ran", "", "| chapter | profile | status | wall time (s) | finished |",
                  "|---|---|---|---|---|"]
        for d in runs.values():
            lines.append(f"| {d['chapter']} | {d['profile']} | {d['status']} | {d['wall_s']:.1f} | "
                         f"{d.get('finished', '')} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
