"""One small backend registry, used once per stage (layout embedding, rasterisation, ...).

``"auto"`` is resolved in one place, by priority among the available backends, and logged once.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable

logger = logging.getLogger("fastimg")


def has_module(name: str) -> bool:
    """True when ``name`` is importable, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def torch_cuda_available() -> bool:
    """True when torch sees a CUDA GPU (any driver failure counts as no GPU)."""
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - any driver failure means "no GPU"
        return False


@dataclass(frozen=True)
class Backend:
    name: str
    load: Callable[[], Callable]
    available: Callable[[], bool]
    priority: int
    extra: str | None = None


class Registry:
    """Named backends of one stage.

    Parameters
    ----------
    stage : str
        Name used in log lines and error messages.
    setting : str, optional
        The config field that chooses the backend (``raster_backend``): a backend that cannot
        run here is refused naming it (the command line: its flag).
    """

    def __init__(self, stage: str, setting: str | None = None):
        self.stage = stage
        self.setting = setting
        self._backends: dict[str, Backend] = {}
        self._auto: str | None = None

    def add(self, name, load, *, available=lambda: True, priority=0, extra=None):
        self._backends[name] = Backend(name, load, available, priority, extra)

    @property
    def names(self) -> list[str]:
        return list(self._backends)

    def resolve(self, name: str = "auto") -> str:
        """Return a concrete backend name; ``"auto"`` picks the best available one."""
        if name == "auto":
            if self._auto is None:
                ranked = sorted(self._backends.values(), key=lambda b: -b.priority)
                self._auto = next(b.name for b in ranked if b.available())
                logger.info("%s backend 'auto' resolved to %r", self.stage, self._auto)
            return self._auto
        if name not in self._backends:
            raise ValueError(
                f"unknown {self.stage} backend {name!r}; choose one of "
                f"{['auto', *self._backends]}")
        return name

    def check(self, name: str, *, setting: str | None = None) -> None:
        """Raise ValueError when ``name`` (a backend asked for by name, not ``"auto"``) cannot
        run on this machine, or is unknown: a build refuses it before any work, not at its
        stage. ``setting`` names the argument that chose it where that is not the registry's
        config field (``rasterize(backend=...)``)."""
        if name == "auto":
            return
        backend = self._backends[self.resolve(name)]
        if not backend.available():
            hint = f"; it needs pip install 'fastimg[{backend.extra}]'" if backend.extra else ""
            setting = setting or self.setting
            chosen, auto = ((f"{setting}={name!r}", f"{setting}='auto'")
                            if setting else (f"{self.stage} backend {name!r}", "'auto'"))
            raise ValueError(f"{chosen} cannot run here (no CUDA GPU that it can use{hint}); "
                             f"{auto} picks one that can")

    def get(self, name: str = "auto") -> tuple[str, Callable]:
        """Resolve ``name`` and import its implementation (an ImportError names the extra)."""
        resolved = self.resolve(name)
        backend = self._backends[resolved]
        try:
            return resolved, backend.load()
        except ImportError as exc:
            hint = f": pip install 'fastimg[{backend.extra}]'" if backend.extra else ""
            raise ImportError(
                f"{self.stage} backend {resolved!r} is not installed{hint} ({exc})") from exc
