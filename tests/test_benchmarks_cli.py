"""The benchmark CLI (``python -m benchmarks``) without running a suite: where it finds the IMDB
reviews."""
import pytest

from conftest import shared_imdb


@pytest.fixture
def beside_checkout(tmp_path, monkeypatch):
    """A checkout at ``tmp_path/checkout`` with the IMDB reviews in ``../shared/data`` (a link to
    the real file), no ``$FASTIMG_DATA`` and an empty fastimg cache."""
    from benchmarks import encode

    data = shared_imdb()
    if data is None:
        pytest.skip("needs the IMDB reviews ($FASTIMG_DATA or ../shared/data)")
    imdb = tmp_path / "shared/data/imdb"
    imdb.mkdir(parents=True)
    (imdb / "imdb.csv.gz").symlink_to(data / "imdb/imdb.csv.gz")
    monkeypatch.setattr(encode, "ROOT", tmp_path / "checkout")
    monkeypatch.delenv("FASTIMG_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "shared/data"


def test_probe_slice_reads_the_reviews_beside_the_checkout(beside_checkout):
    """The encode suite timed the reviews in ../shared/data, then its probe slice asked
    fastimg's loader, which looked in its cache only and downloaded the reviews (84 MB; offline:
    a traceback after the timed encodes)."""
    from benchmarks.encode import probe_slice

    texts, labels, split = probe_slice(40)
    assert len(texts) == len(labels) == len(split) == 40


def test_fastimg_data_set_is_the_only_place_looked(beside_checkout, tmp_path, monkeypatch):
    """With $FASTIMG_DATA set to a folder without the reviews, the suites read ../shared/data
    while fastimg's loader (build, reuse, scale) went to download them."""
    from benchmarks.encode import imdb_path

    monkeypatch.setenv("FASTIMG_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"no .*empty/imdb/imdb\.csv\.gz \(\$FASTIMG_DATA"):
        imdb_path()
