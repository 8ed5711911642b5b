"""fastimg.kernels comes from the top-level kernels/ folder, editable and as a wheel."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _without_checkouts(pythonpath: str) -> str:
    """PYTHONPATH minus source checkouts: a checkout's root holds the top-level kernels/ folder,
    which is importable as ``kernels`` from there by construction (running the tests with
    PYTHONPATH=checkout instead of an install); the test is about the installed package."""
    keep = [p for p in pythonpath.split(os.pathsep)
            if p and not (Path(p) / "kernels" / "__init__.py").is_file()]
    return os.pathsep.join(keep)


def test_kernels_import_as_fastimg_kernels_from_outside_the_repo(tmp_path):
    code = "import fastimg.kernels as k; print(k.__file__); import kernels"
    env = {**os.environ, "PYTHONPATH": _without_checkouts(os.environ.get("PYTHONPATH", ""))}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env=env)
    if "No module named 'fastimg'" in done.stderr:
        pytest.skip("fastimg is not installed (only on PYTHONPATH): nothing to check")
    assert Path(done.stdout.splitlines()[0]).parent.name == "kernels"
    # the unrelated PyPI name must not be shadowed by ours
    assert "No module named 'kernels'" in done.stderr


@pytest.mark.slow
def test_wheel_maps_kernels_into_fastimg(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("fastimg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastimg/kernels/cpu.py" in names and "fastimg/kernels/cuda.py" in names
    assert "fastimg/layout/layout.py" in names
    assert not any(n.startswith("kernels/") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = "import fastimg.kernels as k, fastimg.layout; print(k.__file__)"
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                           f"{str(target)!r}); {code}"], cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip().startswith(str(target))
