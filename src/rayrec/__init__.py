"""rayrec: neural recommenders trained and served on Ray.

The code lives in visible top-level folders mapped into this namespace by
``pyproject.toml`` (``platform/`` -> ``rayrec.platform`` and so on).
"""

__version__ = "0.1.0"
