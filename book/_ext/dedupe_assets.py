"""Sphinx extension: drop duplicate <script> entries from every HTML page.

jupyter-book 1.0.4 with Sphinx 7.4 registers the inline scripts of sphinx-thebe and sphinx-togglebutton twice, so
each page declares ``const THEBE_JS_URL`` twice and the browser reports "Identifier 'THEBE_JS_URL' has already
been declared". Keeping the first occurrence of each script fixes the console error.
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", tuple(sorted((k, str(v)) for k, v in script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe, priority=1000)  # after the themes add theirs
    return {"parallel_read_safe": True, "parallel_write_safe": True}
