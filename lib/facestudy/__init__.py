"""facestudy: the one shared library behind *Inside Face Recognition*, a reproducible study book.

Chapters import it; reusable code lives here and nowhere else. See DESIGN.md for the package map.
"""
__version__ = "0.1.0"

from . import errors, profiles, report, runtime  # noqa: F401  (light modules; heavy ones import lazily)
