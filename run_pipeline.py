#!/usr/bin/env python
"""Entry point: `python run_pipeline.py --help`. All logic lives in lib/volcast."""

import sys
from pathlib import Path

# Let a plain checkout run without `pip install -e .` having put lib/ on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

from volcast.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
