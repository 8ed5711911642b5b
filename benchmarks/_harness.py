"""Shared timing and reporting for every suite."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version


class BenchmarkError(Exception):
    """A mistake in the command or a missing input (the IMDB reviews, a GPU):
    ``python -m benchmarks`` prints it as one line on stderr and exits with status 2."""


class MissingData(BenchmarkError, FileNotFoundError):
    """Data a suite reads is not where it looks."""


def median_time(fn, *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_START = time.perf_counter()


def step(message: str) -> None:
    """Say on stderr what a suite starts now and how long it has run: the long suites are
    otherwise silent for minutes (stdout keeps the results alone)."""
    print(f"-- {message} ({time.perf_counter() - _START:.0f} s in)", file=sys.stderr, flush=True)


def left_out(columns: str, why: str) -> str:
    """Say on stderr which columns a suite leaves out on this machine, and why (a table
    without its GPU columns read as if the suite had none); the line, for the results."""
    line = f"{columns} left out: {why}"
    print(f"-- {line}", file=sys.stderr, flush=True)
    return line


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("fastimg", "numpy", "numba", "zarr", "openTSNE", "scikit-learn", "torch",
                    "transformers", "pyDeepInsight", "onnx", "onnxruntime"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "gpu": gpu, "python": platform.python_version(),
            "versions": versions}


def _shown(value) -> str:
    """A result's value as printed: floats to 4 significant digits, in dicts (stage times) too;
    the JSON keeps them whole."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return str(value)


def report(result: dict, json_path: str | None) -> dict:
    """Add the ratio and the machine, print a summary, write JSON."""
    result = {**result, "ratio": result["baseline_s"] / result["fastimg_s"], "machine": machine()}
    width = max(len(k) for k in result)
    for key, value in result.items():
        if key != "machine":
            print(f"{key:<{width}}  {_shown(value)}")
    if json_path:  # bench-results/ is not in a fresh clone
        os.makedirs(os.path.dirname(json_path) or ".", exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return result
