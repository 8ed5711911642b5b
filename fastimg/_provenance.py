"""The versions of installed packages, recorded in a store as its provenance."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed_versions(*packages: str) -> dict:
    """``{package: version}`` of those of ``packages`` that are installed."""
    out = {}
    for package in packages:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out
