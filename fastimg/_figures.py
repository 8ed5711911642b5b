"""Figures saved with the same bytes for the same inputs: no dates, no random ids."""
from __future__ import annotations

from pathlib import Path

from fastimg._files import replace_file

#: the ``metadata`` that leaves the date out of each format's file (PNG has none; PostScript
#: takes its date from ``SOURCE_DATE_EPOCH`` alone)
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def save_figure(fig, out, *, image_format: str | None = None, dpi: int = 110) -> None:
    """``fig.savefig`` to ``out`` in ``image_format`` (default: ``out``'s suffix, PNG without
    one), dateless and with SVG ids from a fixed salt, so that PNG, PDF and SVG files are
    reproducible.

    The figure is written beside ``out`` and moved onto it: a save cut short (Ctrl-C while a
    large SVG is written) leaves the file that was there, not the first half of a new one."""
    import matplotlib

    fmt = (image_format or Path(out).suffix.lstrip(".") or "png").lower()

    def write(path):
        with matplotlib.rc_context({"svg.hashsalt": "fastimg"}):
            fig.savefig(path, dpi=dpi, format=fmt, metadata=_NO_DATE.get(fmt))

    replace_file(out, write)
