"""Drop a chapter notebook's own section numbers ("## 1. The pieces") in the book.

Jupyter Book numbers the sections of the numbered part itself ("3.2."), so a heading the notebook numbered
too reads "3.2. 1. The pieces". The notebooks keep their numbers (they help in Jupyter and on Colab); this
transform removes them from the chapters' section titles (and so from the page's table of contents) when the
book is built. Only a leading "1." / "1.2." / "1.2 " followed by text is removed.
"""
from __future__ import annotations

import re

from docutils import nodes
from sphinx.transforms import SphinxTransform

_NUMBER = re.compile(r"^\s*(?:\d+(?:\.\d+)*\.|\d+(?:\.\d+)+)\s+(?=\S)")


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
                    title.replace(first, nodes.Text(new))


def setup(app):
    app.add_transform(StripHeadingNumbers)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
