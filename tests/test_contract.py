"""The contract: generated code matches the .proto, and buf lint passes."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("generate", REPO / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generated = _generator().generate(tmp_path)  # type: ignore[attr-defined]
    committed = sorted(p.relative_to(REPO / "gen") for p in (REPO / "gen").rglob("*") if p.is_file())
    committed = [p for p in committed if "__pycache__" not in p.parts]
    assert generated == committed
    for relative in generated:
        assert (tmp_path / relative).read_bytes() == (REPO / "gen" / relative).read_bytes(), (
            f"gen/{relative} is stale: run `make proto`"
        )


def test_buf_lint_passes() -> None:
    buf = shutil.which("buf", path=str(Path(sys.executable).parent))
    if buf is None:
        pytest.fail("buf is not installed (it comes with the dev extras: pip install -e '.[dev]')")
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
