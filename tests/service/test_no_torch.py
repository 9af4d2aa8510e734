"""The serving side never imports torch (docs/architecture.md#dependencies): every module of service/, the app it
builds, and the
``seisbind serve`` command path, checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_service_imports_no_torch() -> None:
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import service
        names = sorted(m.name for m in pkgutil.walk_packages(service.__path__, "service."))
        for name in names:
            importlib.import_module(name)
        import cli.main  # the CLI that runs `seisbind serve`
        import index.calibrate, seisbind.readout_fit  # noqa: F401, E401 - `seisbind calibrate`, `fit-readout`
        from service.app import create_app, run  # noqa: F401
        assert len(names) >= 15, names
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("modules", len(names), "torch", leaked)
        sys.exit(1 if leaked else 0)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "torch []" in r.stdout


def test_no_torch_in_service_sources() -> None:
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "service").rglob("*.py")
                 if any(line.strip().startswith(("import torch", "from torch")) for line in p.read_text().splitlines())]
    assert offenders == []
