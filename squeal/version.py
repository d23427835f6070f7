"""squeal's version (pyproject.toml's), importable by any module without importing squeal."""

__version__ = "0.1.0"

__all__ = ["__version__"]
