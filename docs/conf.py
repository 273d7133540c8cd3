"""Sphinx configuration: MyST pages, autodoc_traits for every configurable."""

import jupyter_gpu_meter

project = "jupyter_gpu_meter"
author = "the jupyter_gpu_meter developers"
copyright = "2026, " + author  # noqa: A001
release = version = jupyter_gpu_meter.__version__

extensions = [
    "myst_parser",
    "autodoc_traits",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx_copybutton",
]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
# Upstream classes (DockerSpawner, Spawner) have docstrings we do not control.
autodoc_inherit_docstrings = False
nitpicky = False
html_theme = "alabaster"
html_title = "jupyter_gpu_meter"
