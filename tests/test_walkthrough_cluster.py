"""Walkthrough of cluster and object-storage builds: store URLs that name no store (``s3://``,
a whole bucket, ``s3://bucket//x.zarr``) or that lost a slash (``s3:/bucket/x.zarr``, which
was built on this machine as folders named ``s3:`` and reported as written) are refused with
one line and exit code 2, before anything is written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastimg import store
from fastimg.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:botocore"),
    pytest.mark.filterwarnings("ignore:.*unclosed.*:ResourceWarning"),
]


def _argv(csv, model, out, *extra):
    return ["build-dataset", "--input", str(csv), "--split-column", "split", "--model",
            str(model), "--max-length", "32", "--chunk-rows", "8", "--pixels", "8",
            "--method", "pca", "--device", "cpu", "--out", out, "--quiet", *extra]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "internal error" not in err, err
    return err


@pytest.mark.parametrize("url, why", [
    ("s3://", "s3:// names no bucket"),
    ("s3:///x.zarr", "s3:///x.zarr names no bucket"),
    ("gs://", "gs:// names no bucket"),
    ("s3://bucket", "s3://bucket is a whole bucket"),
    ("s3://bucket/", "s3://bucket/ is a whole bucket"),
    ("az://container", "az://container is a whole bucket"),
    ("s3://bucket//x.zarr", "has an empty path segment"),
    ("s3://bucket/a//x.zarr", "has an empty path segment"),
])
def test_an_object_store_url_without_a_store_path_is_refused(url, why):
    with pytest.raises(ValueError, match=re.escape(why)) as caught:
        store.location.resolve(url)
    assert "://BUCKET/PATH" in str(caught.value)


@pytest.mark.parametrize("text, meant", [
    ("s3:/bucket/x.zarr", "s3://bucket/x.zarr"),
    ("s3:bucket/x.zarr", "s3://bucket/x.zarr"),
    ("gs:/bucket/x.zarr", "gs://bucket/x.zarr"),
    ("file:/tmp/x.zarr", "file:///tmp/x.zarr"),
])
def test_a_url_with_a_slash_missing_is_refused(text, meant):
    with pytest.raises(ValueError, match=f"looks like a URL with a slash missing: write {meant}"):
        store.location.resolve(text)


@pytest.mark.parametrize("text, expected", [
    ("imdb.zarr", Path("imdb.zarr")),
    ("C:/data/x.zarr", Path("C:/data/x.zarr")),         # a drive letter is no protocol
    ("run:1.zarr", Path("run:1.zarr")),                 # nor is any other word
    ("./s3:/x.zarr", Path("s3:/x.zarr")),               # the way to mean such a folder
    ("file:///tmp/x.zarr", Path("/tmp/x.zarr")),
])
def test_local_paths_still_resolve(text, expected):
    assert store.location.resolve(text) == expected
    # a resolved path resolves to itself (writers resolve again and again)
    assert store.location.resolve(store.location.resolve(text)) == expected


def test_store_urls_still_resolve():
    for url in ("s3://bucket/x.zarr", "s3://bucket/a/b/x.zarr", "gs://b/x.zarr/",
                "memory://x.zarr", "az://c/x.zarr"):
        location = store.location.resolve(url, {"anon": True})
        assert str(location) == url.rstrip("/") and location.storage_options == {"anon": True}


def test_build_to_a_url_with_a_slash_missing_writes_nothing_here(tmp_path, tiny_bert_dir,
                                                                 monkeypatch, capsys):
    """It used to build ``./s3:/bucket/x.zarr`` on this machine and print 'wrote s3:/...'."""
    from test_cluster import write_csv

    csv = write_csv(tmp_path / "t.csv", n=16)
    monkeypatch.chdir(tmp_path)
    assert main(_argv(csv, tiny_bert_dir, "s3:/bucket/x.zarr")) == 2
    err = _one_line(capsys)
    assert err.startswith("fastimg build-dataset: error: s3:/bucket/x.zarr looks like a URL")
    assert "write s3://bucket/x.zarr" in err
    assert not (tmp_path / "s3:").exists()


@pytest.mark.parametrize("out", ["s3://", "s3://bucket", "s3://bucket//x.zarr"])
def test_build_to_a_url_without_a_store_path_is_one_line(tmp_path, tiny_bert_dir, monkeypatch,
                                                         capsys, out):
    """``s3://`` was an internal error (zarr took ``s3:`` for a local path), ``s3://bucket``
    said the bucket 'is not a fastimg store', and ``s3://bucket//x.zarr`` wrote keys that
    begin with '/' (0 MiB to s3fs, which could not list or delete them)."""
    from test_cluster import write_csv

    csv = write_csv(tmp_path / "t.csv", n=16)
    monkeypatch.chdir(tmp_path)
    argv = _argv(csv, tiny_bert_dir, out, "--storage-option", "endpoint_url=http://127.0.0.1:9")
    assert main(argv) == 2
    err = _one_line(capsys)
    assert err.startswith(f"fastimg build-dataset: error: {out}"), err
    assert "BUCKET/PATH" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_info_of_a_url_with_a_slash_missing_is_one_line(capsys):
    assert main(["info", "s3:/bucket/x.zarr"]) == 2
    assert "write s3://bucket/x.zarr" in _one_line(capsys)


def test_verbose_after_the_command_and_storage_options_on_a_local_path(tmp_path, capsys,
                                                                       caplog):
    from fastimg.cli import build_parser, main

    assert build_parser().parse_args(["info", "x.zarr", "-v"]).verbose
    assert build_parser().parse_args(["-v", "info", "x.zarr"]).verbose  # not reset after it
    assert not build_parser().parse_args(["info", "x.zarr"]).verbose
    with caplog.at_level("WARNING", logger="fastimg.cli"):
        code = main(["info", str(tmp_path / "missing.zarr"), "--storage-option", "anon=true"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert "--storage-option is for store URLs (s3://...): ignored" in caplog.text
