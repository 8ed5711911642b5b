"""Figures saved with the same bytes for the same inputs: no dates, no random ids."""
from __future__ import annotations

from pathlib import Path

#: the ``metadata`` that leaves the date out of each format's file (PNG has none; PostScript
#: takes its date from ``SOURCE_DATE_EPOCH`` alone)
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def save_figure(fig, out, *, image_format: str | None = None, dpi: int = 110) -> None:
    """``fig.savefig`` to ``out`` in ``image_format`` (default: ``out``'s suffix), dateless
    and with SVG ids from a fixed salt, so that PNG, PDF and SVG files are reproducible."""
    import matplotlib

    fmt = (image_format or Path(out).suffix.lstrip(".")).lower()
    with matplotlib.rc_context({"svg.hashsalt": "fastimg"}):
        fig.savefig(out, dpi=dpi, format=image_format, metadata=_NO_DATE.get(fmt))
