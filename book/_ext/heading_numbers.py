"""Drop a chapter notebook's own section numbers ("## 1. The pieces") in the book.

Jupyter Book numbers the sections of the numbered part itself ("3.2."), so a heading the notebook numbered
too reads "3.2. 1. The pieces". The notebooks keep their numbers (they help in Jupyter and on Colab); this
transform removes them from the chapters' section titles (and so from the page's table of contents) when the
book is built. Only a leading "1." / "1.2." / "1.2 " followed by text is removed.

The chapters' prose refers to those numbers ("section 6"), which the book no longer shows and which differ
from the book's own ("3.7." when an unnumbered section comes first). So each stripped number is kept on its
section, and once Sphinx has numbered the sections, "section 6" / "sections 4 and 5" in the chapter's text
become the book's numbers ("section 3.7"). Text in code and literal blocks is left alone.
"""
from __future__ import annotations

import re

from docutils import nodes
from sphinx.transforms import SphinxTransform

_NUMBER = re.compile(r"^\s*(?:\d+(?:\.\d+)*\.|\d+(?:\.\d+)+)\s+(?=\S)")
#: "section 6", "Section 6", "sections 4 and 5", "sections 4, 5 and 8" in a chapter's prose
_REF = re.compile(r"(?<![\w-])([Ss]ections?)\s+(\d+(?!\w|\.\d)(?:\s*(?:,|and|or)\s*\d+(?!\w|\.\d))*)")
_KEY = "facestudy_number"


def strip_number(text: str) -> str:
    """``"1. The pieces"`` -> ``"The pieces"``; ``"2026 results"`` and ``"3D faces"`` are left alone."""
    return _NUMBER.sub("", text, count=1)


class StripHeadingNumbers(SphinxTransform):
    default_priority = 200  # before the table-of-contents collector reads the titles

    def apply(self, **kwargs) -> None:
        if not self.env.docname.startswith("book/executed/"):
            return
        for title in self.document.findall(nodes.title):
            if not isinstance(title.parent, nodes.section) or not title.children:
                continue
            first = title.children[0]
            if isinstance(first, nodes.Text):
                new = strip_number(str(first))
                if new != str(first):
                    title.parent[_KEY] = str(first)[: len(str(first)) - len(new)].strip().rstrip(".")
                    title.replace(first, nodes.Text(new))


def renumber_references(text: str, numbers: dict[str, str]) -> str:
    """Replace the notebook's section numbers in ``text`` by the book's (``numbers``: "6" -> "3.7"); a number
    with no section of its own is left as it is."""
    def one(m: re.Match) -> str:
        return m.group(1) + " " + re.sub(r"\d+", lambda d: numbers.get(d.group(0), d.group(0)), m.group(2))

    return _REF.sub(one, text)


def _book_numbers(app, doctree, docname: str) -> None:
    if not docname.startswith("book/executed/"):
        return
    secnumbers = getattr(app.env, "toc_secnumbers", {}).get(docname, {})
    numbers = {}
    for sec in doctree.findall(nodes.section):
        if _KEY in sec and sec["ids"]:
            num = secnumbers.get("#" + sec["ids"][0])
            if num:
                numbers[sec[_KEY]] = ".".join(str(n) for n in num)
    if not numbers:
        return
    for text in list(doctree.findall(nodes.Text)):
        parent = text.parent
        if parent is None or isinstance(parent, (nodes.literal, nodes.literal_block, nodes.FixedTextElement)):
            continue
        new = renumber_references(str(text), numbers)
        if new != str(text):
            parent.replace(text, nodes.Text(new))


def setup(app):
    app.add_transform(StripHeadingNumbers)
    app.connect("doctree-resolved", _book_numbers)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
