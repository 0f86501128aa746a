"""Re-execute notebooks in place and drop what differs from machine to machine (`make notebooks`).

    .venv/bin/python notebooks/execute.py notebooks/0*.ipynb

Run with OMP_NUM_THREADS=1, as the nbval check does: the numbers the notebooks print depend on torch's
thread count. Widget state (random model ids, images, audio) is dropped; it is re-made by running.
"""

import argparse
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("notebooks", nargs="+", type=Path, help="notebooks to execute and rewrite in place")
for path in parser.parse_args().notebooks:
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - started
    notebook.metadata.pop("widgets", None)
    notebook.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3",
                                          "codemirror_mode": {"name": "ipython", "version": 3}}
    notebook.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                       "name": "python3"}
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    nbformat.validate(notebook)
    nbformat.write(notebook, path)
    print(f"{path.name}: executed in {seconds:.1f} s, {path.stat().st_size / 1e6:.2f} MB", flush=True)
