"""Point the launch / source buttons of executed chapters at their source notebooks.

The book renders papermill's executed copies from ``book/executed/`` (git-ignored); readers who open a
chapter in Colab or on the repository should land on the committed source in ``notebooks/``.
"""


def _rewrite(obj):
    if isinstance(obj, str):
        return obj.replace("book/executed/", "notebooks/")
    if isinstance(obj, list):
        return [_rewrite(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _rewrite(v) for k, v in obj.items()}
    return obj


def _on_page(app, pagename, templatename, context, doctree):
    if not pagename.startswith("book/executed/"):
        return
    for key in ("header_buttons", "launch_buttons"):
        if key in context:
            context[key] = _rewrite(context[key])


def setup(app):
    app.connect("html-page-context", _on_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
