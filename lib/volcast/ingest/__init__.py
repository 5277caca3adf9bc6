"""Ingest (moving into a package: the next commit splits parse.py, the former ingest.py, by concern)."""
from . import parse as _impl

globals().update({k: v for k, v in vars(_impl).items() if not k.startswith("__")})
