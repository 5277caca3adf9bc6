"""Shared tail of the make_*.py notebook generators: write the cells as a notebook beside them.

The generators write cells only; `python run_pipeline.py refresh-notebooks` then executes the notebooks
to store their outputs.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_notebook

HERE = Path(__file__).resolve().parent
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
}


def write_notebook(cells, name: str) -> Path:
    path = HERE / name
    nbformat.write(new_notebook(cells=cells, metadata=METADATA), path)
    print("wrote", path)
    return path
