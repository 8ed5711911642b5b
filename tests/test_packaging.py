"""fastimg.kernels comes from the top-level kernels/ folder, editable and as a wheel; every
package is installed."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / "kernels" / "__init__.py"


def _installed_env() -> dict:
    """This environment with PYTHONPATH minus source checkouts (running the tests with
    PYTHONPATH=checkout instead of an install): the tests are about the installed package."""
    keep = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and not (Path(p) / "kernels" / "__init__.py").is_file()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(keep)}


def _import_kernels(cwd, *flags, first_on_path=None):
    """Run ``import kernels`` in a fresh interpreter; return (file it came from or None, stderr)."""
    code = "import sys\n"
    if first_on_path is not None:
        code += f"sys.path.insert(0, {str(first_on_path)!r})\n"
    code += "import kernels; print(kernels.__file__)"
    done = subprocess.run([sys.executable, *flags, "-c", code], cwd=cwd, capture_output=True,
                          text=True, env=_installed_env())
    lines = done.stdout.splitlines()
    return (Path(lines[-1]).resolve() if done.returncode == 0 and lines else None), done.stderr


def test_kernels_import_as_fastimg_kernels_from_outside_the_repo(tmp_path):
    code = "import fastimg.kernels as k; print(k.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env=_installed_env())
    if "No module named 'fastimg'" in done.stderr:
        pytest.skip("fastimg is not installed (only on PYTHONPATH): nothing to check")
    assert Path(done.stdout.splitlines()[0]).parent.name == "kernels"
    # the unrelated PyPI name (Hugging Face's hub kernels) is not shadowed by ours
    found, stderr = _import_kernels(tmp_path)
    assert found != OURS and (found is not None or "No module named 'kernels'" in stderr)


def test_the_checkouts_kernels_folder_hands_a_bare_import_kernels_over(tmp_path):
    """``python -m pytest`` or ``python -m benchmarks`` in the checkout puts its root on
    sys.path, where kernels/ would shadow the PyPI package ``kernels`` that transformers >= 5.25
    imports: ``import kernels`` gets that package, or fails as if the folder were not there."""
    found, stderr = _import_kernels(ROOT)  # '' (the checkout) first on sys.path
    assert found != OURS and (found is not None or "No module named 'kernels'" in stderr)
    # -S: no site-packages, so only the checkout's folder is there to find
    found, stderr = _import_kernels(tmp_path, "-S", first_on_path=ROOT)
    assert found is None and "ModuleNotFoundError: No module named 'kernels'" in stderr


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


def test_pyproject_lists_every_package():
    """setuptools installs a package missing from pyproject's list as mere package data, with
    a warning that a later version will leave it out: a new subpackage must be listed."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "fastimg").rglob("__init__.py")}
    found |= {f"fastimg.{'.'.join(p.parent.relative_to(ROOT).parts)}"
              for p in (ROOT / "kernels").rglob("__init__.py")}
    assert setuptools["package-dir"] == {"fastimg.kernels": "kernels"}
    assert set(setuptools["packages"]) == found
