"""The in-container bootstrap for ModelArts training jobs (README.md is the manual)."""

__version__ = "0.2.0"  # the one place it is written: pyproject.toml reads it from here
