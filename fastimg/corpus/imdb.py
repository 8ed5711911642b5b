"""The built-in IMDB recipe: find the Large Movie Review Dataset, or download and verify it.

Search order: ``$FASTIMG_DATA`` (or the ``data_dir`` argument), then the user cache dir
(``$XDG_CACHE_HOME/fastimg`` or ``~/.cache/fastimg``), each for ``imdb/imdb.csv.gz`` (or
``imdb.csv.gz``), ``aclImdb/`` and ``aclImdb_v1.tar.gz``. If none is found, the official
tarball is downloaded into the cache and checked against the MD5 that torchtext pins for it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from fastimg._files import replace_file
from fastimg.corpus._base import CorpusError

logger = logging.getLogger("fastimg.corpus")

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"  # torchtext.datasets.imdb.MD5
IMDB_TARBALL = "aclImdb_v1.tar.gz"
# imdb.csv.gz on its own: FASTIMG_DATA naming the imdb/ folder itself, a common slip
IMDB_CANDIDATES = ("imdb/imdb.csv.gz", "imdb.csv.gz", "aclImdb", IMDB_TARBALL)
IMDB_LABEL_NAMES = {0: "neg", 1: "pos"}
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20
_urlopen = urllib.request.urlopen  # replaced in tests: they never touch the network


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fastimg``, or ``~/.cache/fastimg``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastimg"


def _find(folder: Path) -> Path | None:
    for name in IMDB_CANDIDATES:
        candidate = folder / name
        if (candidate.is_dir() if name == "aclImdb" else candidate.is_file()):
            return candidate
    return None


def resolve_imdb(data_dir=None, *, download: bool = True, cache=None) -> Path:
    """The path of the IMDB data: a ``imdb.csv.gz``, an ``aclImdb`` folder or the tarball.

    Parameters
    ----------
    data_dir : path or None
        Where to look first; ``None``: ``$FASTIMG_DATA`` when set.
    download : bool
        Download the official tarball into ``cache`` when nothing is found.
    cache : path or None
        The cache folder; ``None``: :func:`cache_dir`.

    Raises
    ------
    CorpusError
        Nothing found and the download is off, failed or did not match the checksum.
    """
    if data_dir is None:
        data_dir = os.environ.get("FASTIMG_DATA") or None
    cache = Path(cache) if cache is not None else cache_dir()
    searched = [Path(data_dir)] if data_dir is not None else []
    if searched and not searched[0].is_dir():
        logger.warning("imdb: %s (FASTIMG_DATA) does not exist or is not a folder; looking "
                       "in %s", data_dir, cache)
    searched.append(cache)
    for folder in searched:
        found = _find(folder)
        if found is not None:
            logger.info("imdb: using %s", found)
            return found
    places = " or ".join(str(f) for f in searched)
    if not download:
        raise CorpusError(f"IMDB data not found in {places}; set FASTIMG_DATA to a folder holding "
                          f"imdb/imdb.csv.gz, aclImdb/ or {IMDB_TARBALL}")
    return download_imdb(cache)


def download_imdb(cache) -> Path:
    """Download the aclImdb tarball into ``cache``, verify its MD5, and move it into place."""
    cache = Path(cache)
    target = cache / IMDB_TARBALL
    hint = (f"set FASTIMG_DATA to a folder holding imdb/imdb.csv.gz, aclImdb/ or {IMDB_TARBALL}, "
            f"or place {IMDB_TARBALL} in {cache}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"cannot create the cache folder {cache}: {exc.strerror or exc}; "
                          f"{hint}") from None
    logger.warning("imdb: downloading %s into %s (about 84 MB)", IMDB_URL, cache)

    def fetch_verified(tmp: Path) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        with open(tmp, "wb") as out, _urlopen(IMDB_URL, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while chunk := resp.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != IMDB_MD5:
            raise CorpusError(f"the download of {IMDB_URL} is corrupt: MD5 {digest.hexdigest()}, "
                              f"expected {IMDB_MD5}; try again, or {hint}")

    try:
        replace_file(target, fetch_verified, write_through=False)
    except CorpusError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CorpusError(f"could not download {IMDB_URL} ({reason}); {hint}") from None
    logger.info("imdb: saved %s", target)
    return target
