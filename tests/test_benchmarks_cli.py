"""The benchmark CLI (``python -m benchmarks``) without running a suite: where it finds the IMDB
reviews, one line and exit 2 for a bad value or a missing input."""
import sys

import pytest

from conftest import one_line, shared_imdb


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


def _usage_error(capsys, argv) -> str:
    """Run ``python -m benchmarks ARGV`` in this process; its one-line error (exit 2)."""
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exc, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["python -m benchmarks", *argv])
        main()
    assert exc.value.code == 2
    return one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv,message", [
    # argparse's usage block came first (nine lines)
    (["bogus"], "invalid choice: 'bogus'"),
    (["raster", "--quik"], "unrecognized arguments: --quik"),
    # 0 ran the default 512 reviews; -3 and 60000 were numpy's traceback after loading the model
    (["encode", "--docs", "0"], "argument --docs: expected an integer >= 1, got '0'"),
    (["encode", "--probe", "-1"], "argument --probe: expected an integer >= 0, got '-1'"),
    (["accuracy", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    # a traceback after the linear probes
    (["accuracy", "--seeds", "0,x"], "argument --seeds: expected comma-separated integers"),
    # exit 1 (SystemExit with a message)
    (["accuracy", "--quick", "--configs", "ourz"], "accuracy: error: unknown configuration(s) "
                                                    "['ourz']"),
    (["accuracy", "--quick", "--extractors", "alexnt"], "unknown extractor(s) ['alexnt']"),
    # a traceback after the corpus was loaded
    (["build", "--quick", "--precision", "fp16", "--device", "cpu"],
     "precision 'fp16' runs on cuda only"),
    # an option the suite does not take was dropped without a word: encode timed fp32 and the
    # rest as always, layout ignored --device
    (["encode", "--quick", "--precision", "int8"], "--precision is not an option of the encode "
                                                   "suite (it is for the build suite)"),
    (["layout", "--device", "cpu"], "--device is not an option of the layout suite (it is for "
                                    "the encode, build and accuracy suites)"),
    (["raster", "--no-probes"], "--no-probes is not an option of the raster suite"),
])
def test_bad_values_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    # no reviews, in a folder of its own: a value that is not refused fails fast there
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTIMG_DATA", str(tmp_path))
    assert message in _usage_error(capsys, argv)


def test_a_device_missing_here_is_one_line(capsys):
    """--device cuda without a GPU: torch's traceback once the model was loaded."""
    from fastimg.embed import ENCODE_DEVICES

    if ENCODE_DEVICES.resolve("auto") == "cuda":
        pytest.skip("this machine has a CUDA GPU")
    assert "'cuda' cannot run here" in _usage_error(capsys, ["encode", "--device", "cuda"])


def test_json_path_that_cannot_be_written_is_refused_first(capsys, tmp_path):
    """A --json folder that did not exist failed encode and accuracy after their run; a folder
    given as the file failed every suite after its run."""
    assert "not a file this user can write" in _usage_error(
        capsys, ["raster", "--json", str(tmp_path)])
    (tmp_path / "file").write_text("")
    assert "cannot create its folder" in _usage_error(
        capsys, ["raster", "--json", str(tmp_path / "file" / "r.json")])


def test_missing_reviews_are_one_line(capsys, tmp_path, monkeypatch):
    """No IMDB reviews: a traceback (exit 1)."""
    monkeypatch.setenv("FASTIMG_DATA", str(tmp_path))
    err = _usage_error(capsys, ["encode", "--quick", "--device", "cpu"])
    assert err.startswith("python -m benchmarks encode: error: IMDB reviews not found")
    assert "set FASTIMG_DATA" in err


def test_report_prints_stage_times_as_short_as_the_rest(capsys):
    """The stage times of build, reuse and scale were printed with 16 digits
    ({'corpus_s': 4.914878683999632, ...}) beside every other figure's four."""
    from benchmarks._harness import report

    result = report({"suite": "x", "fastimg_s": 2.0, "baseline_s": 3.0,
                     "fastimg_stages_s": {"encode_s": 1.2345678, "layout_s": 0.123456},
                     "batches_per_epoch": {"torch": 2}}, None)
    out = capsys.readouterr().out
    assert "{encode_s: 1.235, layout_s: 0.1235}" in out and "{torch: 2}" in out
    assert out.splitlines()[-1].split() == ["ratio", "1.5"]
    assert result["fastimg_stages_s"]["encode_s"] == 1.2345678  # the JSON keeps every digit


def test_accuracy_builds_its_default_store_in_the_cache_one_per_limit(tmp_path, monkeypatch,
                                                                     capsys):
    """Without --store the accuracy suite wrote imdb4k.zarr into the working folder, under one
    name for --limit 4000 and 4500 (the second run trained on the first's 4,000 reviews)."""
    from benchmarks.accuracy import default_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_store(4000) == tmp_path / "cache/fastimg/benchmarks/imdb-4000.zarr"
    assert default_store(4500) != default_store(4000)
    # no reviews here: it stops with one line, and has written nothing into the working folder
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("FASTIMG_DATA", str(tmp_path))
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["accuracy", "--limit", "4500"])
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and "IMDB reviews not found" in err[-1]
    assert err[0].startswith(f"-- building {default_store(4500)} (IMDB, 4500 reviews")
    assert list(work.iterdir()) == []
