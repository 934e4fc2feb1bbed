"""Sphinx configuration of the demandkit documentation.

Build (warnings are errors, tutorials executed): ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import demandkit

HERE = Path(__file__).resolve().parent

project = "demandkit"
author = "the demandkit developers"
copyright = "2026, the demandkit developers"
release = demandkit.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "myst_nb",
]

smartquotes_action = "qe"  # curly quotes and ellipses, but "--save" stays two hyphens (the CLI's options)
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}  # .md pages are MyST notebooks, run when built
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# API reference: one page per public name, generated from the numpydoc docstrings.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autoclass_content = "class"
toc_object_entries_show_parents = "hide"  # "compute_costs()" in the page's table of contents, not the full path
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = False
napoleon_use_param = True

# MyST markdown and executed notebooks.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("DEMANDKIT_DOCS_EXECUTE", "cache")  # 'off' for a quick look at the text
nb_execution_timeout = 600
nb_execution_raise_on_error = True  # a failing cell fails the build (and CI)
nb_execution_show_tb = True
nb_merge_streams = True

# Math: MathJax from its CDN (Sphinx's default). DEMANDKIT_DOCS_MATHJAX may name a local single-file MathJax build
# (e.g. es5/tex-svg.js of the npm package mathjax@3), which is then copied into the site so it reads offline.
_local_mathjax = os.environ.get("DEMANDKIT_DOCS_MATHJAX")
if _local_mathjax:
    _static_mathjax = HERE / "_build" / "mathjax_static"
    _static_mathjax.mkdir(parents=True, exist_ok=True)
    shutil.copy(_local_mathjax, _static_mathjax / "mathjax.js")
    mathjax_path = "mathjax.js"
    html_static_path_extra = [str(_static_mathjax)]
else:
    html_static_path_extra = []

html_theme = "furo"
html_title = f"demandkit {release}"
html_static_path = ["_static", *html_static_path_extra]
html_css_files = ["custom.css"]
html_theme_options = {"navigation_with_keys": True}


def _check_api_reference(app: object) -> None:
    """Warn (an error under -W) when a public name of ``import demandkit as dk`` is missing from the API reference.

    A name counts as documented when ``api/index.rst`` lists it, or a member of it (``frac.estimate``), in an
    autosummary table.
    """
    from sphinx.util import logging

    listed = {line.strip().split(".")[0] for line in (HERE / "api" / "index.rst").read_text().splitlines()}
    missing = [name for name in demandkit.__all__ if not name.startswith("__") and name not in listed]
    if missing:
        logging.getLogger(__name__).warning(
            "docs/api/index.rst lists no entry for the public name(s) %s of demandkit.__all__: add them to a table.",
            ", ".join(missing),
        )


_PROPERTY_SUMMARIES: dict[str, list[str]] = {}


def _keep_property_summary(app: object, what: str, name: str, obj: object, options: object, lines: list) -> None:
    """Napoleon reads a property's first line ``text: more text`` as ``type: description`` (for example
    ``Formulation.numeric_variables``). Such docstrings are kept before napoleon runs and put back after it."""
    if what == "property" and lines and ": " in lines[0]:
        _PROPERTY_SUMMARIES[name] = list(lines)


def _restore_property_summary(app: object, what: str, name: str, obj: object, options: object, lines: list) -> None:
    if name in _PROPERTY_SUMMARIES:
        lines[:] = _PROPERTY_SUMMARIES.pop(name)


def setup(app: object) -> None:
    app.connect("builder-inited", _check_api_reference)
    app.connect("autodoc-process-docstring", _keep_property_summary, priority=400)  # before napoleon (500)
    app.connect("autodoc-process-docstring", _restore_property_summary, priority=600)  # after it
