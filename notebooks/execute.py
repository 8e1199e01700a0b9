"""Run the story notebooks in a Jupyter kernel and store their outputs in place (`make notebooks`).

Each runs on the embedded default, so what is stored is what a reader gets with no configuration;
`make test` runs them again and checks the stored outputs still have the same shape.
"""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

STORIES = ("array-numerics.ipynb", "bag-text-analytics.ipynb", "scaling-and-cost.ipynb")

if __name__ == "__main__":
    here = Path(__file__).parent
    for name in sys.argv[1:] or STORIES:
        book = nbformat.read(here / name, as_version=4)
        started = time.perf_counter()
        NotebookClient(book, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(here)}}).execute()
        nbformat.write(book, here / name)
        print(f"{name}: {time.perf_counter() - started:.1f} s")
