"""`make install` is idempotent: once installed, make considers it up to date."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("make") is None or not (ROOT / ".venv" / ".installed").exists(),
    reason="needs make and an installed .venv",
)
def test_second_make_install_does_nothing():
    r = subprocess.run(["make", "-q", "install"], cwd=ROOT)
    assert r.returncode == 0  # -q: exit 0 only when nothing would be rebuilt
    r = subprocess.run(["make", "-n", "install"], cwd=ROOT, capture_output=True, text=True)
    assert "pip" not in r.stdout
