"""Sphinx extension: every image in a page's body loads lazily (``loading="lazy"``, ``decoding="async"``).

A chapter carries up to a dozen training GIFs and many figures; with lazy loading the browser fetches only what is
on (or near) the screen, so a page opens after its first screen's images, not after all of them. Images already on
the first screen load at once, as without the attribute.
"""
import re

_IMG = re.compile(r"<img(?![^>]*\bloading=)")


def _lazy(app, pagename, templatename, context, doctree):
    if "body" in context:
        context["body"] = _IMG.sub('<img loading="lazy" decoding="async"', context["body"])


def setup(app):
    app.connect("html-page-context", _lazy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
