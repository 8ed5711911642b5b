"""Stores on object storage (issue 10): a real S3 API (a moto server on 127.0.0.1), a build
written to ``s3://``, read back by ``fastimg info``, trained on, opened with xarray; an
incomplete store is refused with one line."""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from fastimg import store  # noqa: E402
from fastimg.cli import main  # noqa: E402
from test_cluster import configs, write_csv  # noqa: E402

pytestmark = [
    # botocore's own deprecation notes (datetime.utcnow and friends): not our code
    pytest.mark.filterwarnings("ignore::DeprecationWarning:botocore"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:moto"),
    pytest.mark.filterwarnings("ignore:.*unclosed.*:ResourceWarning"),
]
BUCKET = "fastimg-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 at a free port, with one bucket; its storage options."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {"key": "testing", "secret": "testing",
               "endpoint_url": f"http://127.0.0.1:{port}",
               "client_kwargs": {"region_name": "us-east-1"}}
    try:
        import boto3

        boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing",
                     aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield options
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    """Credentials from the usual environment variables, the endpoint as --storage-option."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return ["--storage-option", f"endpoint_url={s3['endpoint_url']}"]


def _interrupted_at_the_layout(url, csv, model, storage_options) -> None:
    """A build of ``url`` stopped (KeyboardInterrupt) as its layout stage starts."""
    from fastimg.dataset import build_dataset

    def stop(stage):
        if stage == "layout":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset(url, *configs(csv, model), progress=False, on_stage=stop,
                      storage_options=storage_options)


def _build_argv(csv, model, out, *extra):
    return ["build-dataset", "--input", str(csv), "--split-column", "split", "--model",
            str(model), "--max-length", "32", "--chunk-rows", "8", "--pixels", "32",
            "--method", "pca", "--device", "cpu", "--out", out, "--quiet", *extra]


@pytest.mark.slow
def test_s3_build_info_train_xarray(tmp_path, tiny_bert_dir, s3, s3_env, capsys):
    xr = pytest.importorskip("xarray")
    csv = write_csv(tmp_path / "t.csv", n=64)
    url = f"s3://{BUCKET}/imdb.zarr"
    assert main(_build_argv(csv, tiny_bert_dir, url, *s3_env)) == 0
    assert main(_build_argv(csv, tiny_bert_dir, str(tmp_path / "local.zarr"))) == 0
    capsys.readouterr()
    # the completion marker is there and nothing was renamed beside the store
    import s3fs

    fs = s3fs.S3FileSystem(**s3, skip_instance_cache=True)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(BUCKET)) == ["imdb.zarr"]
    # new texts made into images as the S3 store made its own, as the local store would
    # (texts_to_images took no storage_options: an endpoint of its own was out of reach)
    from fastimg.dataset import texts_to_images

    texts = ["a good film", "a bad plot"]
    np.testing.assert_array_equal(
        texts_to_images(url, texts, device="cpu", storage_options=s3),
        texts_to_images(tmp_path / "local.zarr", texts, device="cpu"))

    # no atomic replace on object storage: an in-place relayout would delete its own source
    assert main(["relayout", url, "--out", url, "--force", "--method", "pca", *s3_env]) == 2
    assert "no atomic replace" in capsys.readouterr().err
    assert store.is_complete(store.location.resolve(url, s3))
    # to another URL it reads the source's embeddings from S3 and writes the images there,
    # byte for byte those of the same relayout of the local store
    relaid = f"s3://{BUCKET}/relaid.zarr"
    assert main(["relayout", url, "--out", relaid, "--method", "pca", "--pixels", "16",
                 "--quiet", *s3_env]) == 0
    assert main(["relayout", str(tmp_path / "local.zarr"), "--out", str(tmp_path / "r.zarr"),
                 "--method", "pca", "--pixels", "16", "--quiet"]) == 0
    relaid_images = store.StoreReader(relaid, storage_options=s3).images[:]
    assert relaid_images.shape == (64, 16, 16)
    np.testing.assert_array_equal(relaid_images, store.StoreReader(tmp_path / "r.zarr").images[:])
    # from the bucket onto a local path
    assert main(["relayout", url, "--out", str(tmp_path / "from-s3.zarr"), "--method", "pca",
                 "--pixels", "16", "--quiet", *s3_env]) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(store.StoreReader(tmp_path / "from-s3.zarr").images[:],
                                  relaid_images)
    assert store.is_complete(store.location.resolve(url, s3))
    fs.rm(f"{BUCKET}/relaid.zarr", recursive=True)

    assert main(["info", url, *s3_env]) == 0
    human = capsys.readouterr().out
    assert "complete" in human and "NOT complete" not in human and url in human
    assert main(["info", url, "--json", *s3_env]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] is True and info["summary"]["rows"] == 64
    assert info["size_MiB"] > 0

    remote = store.StoreReader(url, storage_options=s3)
    local = store.StoreReader(tmp_path / "local.zarr")
    for name in (store.EMBEDDINGS, store.IMAGES, store.IDS):
        np.testing.assert_array_equal(remote.group[name][:], local.group[name][:])

    run = tmp_path / "run"
    assert main(["train", url, *s3_env, "--extractor", "alexnet", "--weights", "none",
                 "--epochs", "1", "--batch-size", "16", "--loader", "torch", "--no-probe",
                 "--quiet", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1
    # explain reads the split from the run's store: the endpoint comes as --storage-option
    # (explain had none: a store behind an endpoint of its own could not be read)
    capsys.readouterr()
    assert main(["explain", str(run), *s3_env, "--method", "input_x_gradient", "--max-rows",
                 "4", "--quiet", "--out", str(tmp_path / "why")]) == 0, capsys.readouterr().err
    assert (tmp_path / "why" / "features.csv").is_file()

    ds = xr.open_zarr(url, storage_options=s3, consolidated=False)
    assert ds["images"].dims == ("row", "y", "x") and ds["images"].shape == (64, 32, 32)
    np.testing.assert_array_equal(ds["images"].values, local.group[store.IMAGES][:])
    assert ds.attrs[store.ATTRS_KEY]["complete"] is True

    # --force rebuilds in place, keeping the matching stages (it deleted the store first and
    # encoded again: a new layout of an S3 store cost a whole build)
    assert main(_build_argv(csv, tiny_bert_dir, url, *s3_env, "--pixels", "16")) == 2
    err = capsys.readouterr().err  # what differs, as for a local store
    assert "already exists, built with other settings (layout.grid: [32, 32] -> [16, 16])" in err
    assert "on object storage it is rebuilt in place" in err
    embeddings = remote.embeddings[:]
    assert main(_build_argv(csv, tiny_bert_dir, url, *s3_env, "--pixels", "16",
                            "--force")) == 0
    assert "reused corpus, encode;" in capsys.readouterr().out
    rebuilt = store.StoreReader(url, storage_options=s3)
    assert rebuilt.images.shape == (64, 16, 16) and rebuilt.summary["reused"] == [
        "corpus", "encode"]
    np.testing.assert_array_equal(rebuilt.embeddings[:], embeddings)
    assert main(_build_argv(csv, tiny_bert_dir, str(tmp_path / "local.zarr"), "--pixels", "16",
                            "--force")) == 0
    np.testing.assert_array_equal(rebuilt.images[:],
                                  store.StoreReader(tmp_path / "local.zarr").images[:])
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(BUCKET)) == ["imdb.zarr"]


def test_incomplete_s3_store_is_refused_with_one_line(tmp_path, tiny_bert_dir, s3, s3_env,
                                                      capsys):
    from fastimg.dataset import build_dataset

    csv = write_csv(tmp_path / "t.csv", n=24)
    url = f"s3://{BUCKET}/unfinished.zarr"
    _interrupted_at_the_layout(url, csv, tiny_bert_dir, s3)
    assert not store.is_complete(store.location.resolve(url, s3))
    capsys.readouterr()
    for command in (["show", url, "--out", str(tmp_path / "x.png")],
                    ["train", url, "--out", str(tmp_path / "r")]):
        assert main([*command, *s3_env]) == 2
        err = capsys.readouterr().err.strip()
        assert "is an unfinished fastimg store" in err and "\n" not in err, command
    # info describes it instead (on object storage the build is the store itself)
    assert main(["info", url, *s3_env]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{url}: an unfinished fastimg build")
    assert "stages done  corpus, encode" in lines and "encoded      24 of 24 rows" in lines
    # the same build resumes in place (the encoding is reused) and completes
    summary = build_dataset(url, *configs(csv, tiny_bert_dir), progress=False,
                            storage_options=s3)
    assert summary["resumed"] and store.StoreReader(url, storage_options=s3).complete


def test_a_store_url_s_partial_and_replaced_paths_and_its_options():
    # replaced_path of a URL was "'Location' object has no attribute 'name'"
    assert str(store.partial_path("s3://bucket/a.zarr")) == "s3://bucket/a.zarr"  # in place
    with pytest.raises(ValueError, match=r"^s3://bucket/a\.zarr is on object storage, where a "
                                         r"store is rebuilt in place: it has no replaced path$"):
        store.replaced_path("s3://bucket/a.zarr")
    # options that are no dict: dict's "dictionary update sequence element #0 has length 1"
    with pytest.raises(TypeError, match=r"^storage_options must be a dict of fsspec options, "
                                        r"got str$"):
        store.StoreReader("s3://bucket/a.zarr", "anon=true")


def test_storage_option_parsing():
    from fastimg.cli.options import storage_option as parse, storage_options

    class Args:
        storage_option = [parse("anon=true"), parse("endpoint_url=http://h:1"),
                          parse("client_kwargs.region_name=eu-west-1")]

    assert storage_options(Args) == {"anon": True, "endpoint_url": "http://h:1",
                                      "client_kwargs": {"region_name": "eu-west-1"}}
    assert parse('token=""') == ("token", "")
    with pytest.raises(__import__("argparse").ArgumentTypeError, match="has no value"):
        parse("token=")
    assert store.location.resolve("file:///tmp/x.zarr") == __import__("pathlib").Path("/tmp/x.zarr")
    assert str(store.location.resolve("gs://b/x.zarr/")) == "gs://b/x.zarr"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "internal error" not in err, err
    return err


def test_unknown_or_empty_storage_option_is_one_line(s3_env, capsys):
    url = f"s3://{BUCKET}/any.zarr"
    for option in ("bogus_option=1", "client_kwargs.bogus=1"):
        assert main(["info", url, *s3_env, "--storage-option", option]) == 2
        assert "s3fs does not accept the storage option 'bogus" in _one_line_error(capsys)
    assert main(["info", url, *s3_env, "--storage-option", "client_kwargs=5"]) == 2
    assert "correct its name or value" in _one_line_error(capsys)
    # an endpoint without its scheme: botocore's "Invalid endpoint: 127.0.0.1:9000" named
    # neither the store nor the option
    assert main(["info", url, "--storage-option", "endpoint_url=127.0.0.1:9000"]) == 2
    assert (f"{url}: Invalid endpoint: 127.0.0.1:9000: the storage option endpoint_url is a URL "
            f"with its scheme, e.g. http://HOST:PORT") in _one_line_error(capsys)
    # KEY= (an unset shell variable) is refused; KEY='""' is the empty string
    assert main(["info", url, *s3_env, "--storage-option", "endpoint_url="]) == 2
    assert "'endpoint_url=' has no value" in _one_line_error(capsys)


def test_denied_access_is_not_reported_as_no_store(s3, s3_env, capsys):
    from fastimg.store.writer import check_writable

    url = f"s3://{BUCKET}/denied.zarr"
    store.write_store(store.location.resolve(url, s3), {store.IDS: np.array(["a", "b"])}, {})
    # moto lets an anonymous client list the bucket, not read the store's metadata
    assert main(["info", url, *s3_env, "--storage-option", "anon=true"]) == 2
    err = _one_line_error(capsys)
    assert f"access to {url} was denied" in err and "--storage-option" in err
    with pytest.raises(PermissionError, match="was denied"):  # build-dataset --out checks
        check_writable(store.location.resolve(url, {**s3, "anon": True}), force=False)


@pytest.mark.parametrize("url, package", [("gs://b/x.zarr", "gcsfs"),
                                          ("az://c/x.zarr", "adlfs")])
def test_missing_backend_names_its_package(url, package):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ImportError, match=f"pip install {package}") as caught:
        store.location.resolve(url).fs()
    assert "cluster" not in str(caught.value)


def test_unknown_protocol_and_missing_bucket_say_what_works(s3, s3_env, capsys):
    with pytest.raises(ValueError, match=r"unknown protocol xx://; a store is a local path"):
        store.location.resolve("xx://a/b").fs()
    url = "s3://nobucket/x.zarr"
    assert main(["info", url, *s3_env]) == 2
    assert "nor can its bucket nobucket be seen" in _one_line_error(capsys)
    with pytest.raises(FileNotFoundError, match="the bucket nobucket does not exist or cannot"):
        store.location.open_group(store.location.resolve(url, s3), "w")


def test_a_second_build_of_one_url_is_refused_while_the_lock_is_held(tmp_path, tiny_bert_dir,
                                                                     s3, s3_env, capsys,
                                                                     caplog, monkeypatch):
    """Object storage had no lock: two builds of one URL wrote into one store."""
    import os

    from fastimg.store import object_lock

    csv = write_csv(tmp_path / "t.csv", n=24)
    url = f"s3://{BUCKET}/locked.zarr"
    where = store.location.resolve(url, s3)
    fs, key = object_lock._lock_object(where)
    with store.build_lock(where):
        assert fs.exists(key)
        assert store.locks.lock_holder(where) == \
            f"process {os.getpid()} on {socket.gethostname()}"
        assert main(_build_argv(csv, tiny_bert_dir, url, *s3_env)) == 2
        err = capsys.readouterr().err.strip()
        assert "is being written by another fastimg command (process" in err and "\n" not in err
        assert f"its lock {url}.lock last written" in err
        assert not store.location.exists(where)  # nothing written
    assert not fs.exists(key) and store.locks.lock_holder(where) is None

    _interrupted_at_the_layout(url, csv, tiny_bert_dir, s3)  # lets go of it too
    assert not fs.exists(key)

    # a lock its holder left behind when it died turns stale, and is taken over
    fs.pipe_file(key, json.dumps({"holder": "process 1 on gone", "token": "t"}).encode())
    assert store.locks.lock_holder(where) == "process 1 on gone"
    monkeypatch.setattr(object_lock, "LEASE_SECONDS", -1.0)  # any age is past the lease
    assert store.locks.lock_holder(where) is None
    assert main(_build_argv(csv, tiny_bert_dir, url, *s3_env)) == 0
    assert "taking over the build lock" in caplog.text and "process 1 on gone" in caplog.text
    assert not fs.exists(key) and store.is_complete(where)


def test_a_lock_left_by_a_dead_process_of_this_machine_is_taken_over_at_once(s3, caplog):
    """A build killed on this machine (SIGKILL, out of memory) left a lock the next build
    honoured for two minutes, naming a process that no longer ran."""
    import os
    import subprocess
    import sys

    from fastimg.store import object_lock

    namespace = object_lock._pid_namespace()
    if namespace is None:
        pytest.skip("no /proc to tell this machine's processes")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    where = store.location.resolve(f"s3://{BUCKET}/killed.zarr", s3)
    fs, key = object_lock._lock_object(where)

    def left(pid, namespace=namespace, host=socket.gethostname()):
        fs.pipe_file(key, json.dumps({"holder": f"process {pid} on {host}", "token": "t",
                                      "pid": pid, "host": host,
                                      "pid_namespace": namespace}).encode())

    left(os.getpid())  # alive: honoured
    assert store.locks.lock_holder(where) == f"process {os.getpid()} on {socket.gethostname()}"
    with pytest.raises(store.StoreError, match="being written by another fastimg command"):
        with store.build_lock(where):
            pass
    # another PID namespace (a container of the same host name) or host: cannot tell, honoured
    for other in ({"namespace": "pid:[1]"}, {"host": "elsewhere"}):
        left(int(dead), **other)
        assert store.locks.lock_holder(where) is not None, other
    left(int(dead))
    assert store.locks.lock_holder(where) is None
    with store.build_lock(where):
        assert json.loads(fs.cat_file(key))["pid"] == os.getpid()
    assert f"process {dead} on {socket.gethostname()} no longer runs" in caplog.text
    assert not fs.exists(key)


def test_of_two_commands_taking_over_one_stale_lock_one_wins(s3, monkeypatch):
    """Taking over deleted the stale lock and created one: a second command taking it over at
    the same moment deleted the first one's new lock, and both wrote the store."""
    from fastimg.store import object_lock

    where = store.location.resolve(f"s3://{BUCKET}/contended.zarr", s3)
    fs, key = object_lock._lock_object(where)
    fs.pipe_file(key, json.dumps({"holder": "process 1 on gone", "token": "t"}).encode())
    monkeypatch.setattr(object_lock, "LEASE_SECONDS", -1.0)  # any age is past the lease
    real_read, reads = object_lock._read, []

    def read_then_other_takes_over(*args):
        answer = real_read(*args)
        if not reads:  # the other command takes the stale lock over just after this read
            fs.pipe_file(key, json.dumps({"holder": "process 2 on other",
                                          "token": "u"}).encode())
        reads.append(answer)
        return answer

    monkeypatch.setattr(object_lock, "_read", read_then_other_takes_over)
    with pytest.raises(store.StoreError, match=r"another fastimg command \(process 2 on other"):
        with store.build_lock(where):
            pass
    monkeypatch.setattr(object_lock, "_read", real_read)
    assert object_lock._read(fs, key)[0]["holder"] == "process 2 on other"  # left alone
    fs.rm_file(key)


def test_a_held_object_lock_is_renewed_and_a_taken_one_left_alone(s3, monkeypatch, caplog):
    import time

    from fastimg.store import object_lock

    where = store.location.resolve(f"s3://{BUCKET}/renewed.zarr", s3)
    fs, key = object_lock._lock_object(where)
    assert object_lock._lock_object(where)[0] is fs  # fsspec keeps one instance per options
    writes = []
    real = fs.pipe_file

    def counted(path, *args, **kwargs):
        writes.append(kwargs)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", counted)
    monkeypatch.setattr(object_lock, "RENEW_SECONDS", 0.05)
    def soon(condition) -> bool:  # the renewals run on a thread; a loaded machine is slow
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        return condition()

    with store.build_lock(where):
        assert soon(lambda: len(writes) >= 3), writes  # created, then renewed
        # on S3 a renewal writes only over the lock it wrote (If-Match its ETag)
        assert writes[0] == {"mode": "create"} and all("IfMatch" in w for w in writes[1:3])
        fs.pipe_file(key, json.dumps({"holder": "process 2 on other", "token": "t"}).encode())
        assert soon(lambda: "was taken over or deleted" in caplog.text)
    # not ours any more: left for its holder
    assert store.locks.lock_holder(where) == "process 2 on other"
    fs.rm_file(key)


def test_an_images_store_rebuilt_in_place_without_a_split_keeps_none(s3, rng):
    """--force on object storage rebuilds in place, keeping the matching input stage: a store
    built with a split, rebuilt without one, kept the old split array (and `info` showed its
    splits), though nothing of the new build came from it."""
    from fastimg.images import build_image_store
    from fastimg.layout import LayoutConfig

    url = store.location.resolve(f"s3://{BUCKET}/split.zarr", s3)
    matrix = rng.normal(size=(40, 12)).astype(np.float32)
    layout = LayoutConfig(grid=(6, 6), method="pca")
    build_image_store(matrix, url, layout, split=np.arange(40) % 3, progress=False)
    assert store.SPLIT in store.StoreReader(url).group
    build_image_store(matrix, url, layout, force=True, progress=False)
    reader = store.StoreReader(url)
    assert reader.summary["fit_on"] == "all" and store.SPLIT not in reader.group
    store.location.remove(url)


def test_an_error_reaching_a_store_rebuilt_in_place_leaves_it_whole(s3, rng, monkeypatch):
    """Any error reopening the build (the store itself, on object storage) started it
    afresh, which deletes what is there: a network or permission error while a --force
    rebuild opened a complete store deleted it. Only an unreadable leftover starts afresh."""
    from fastimg.images import build_image_store
    from fastimg.layout import LayoutConfig
    from fastimg.store import writer

    url = store.location.resolve(f"s3://{BUCKET}/reach.zarr", s3)
    matrix = rng.normal(size=(40, 12)).astype(np.float32)
    layout = LayoutConfig(grid=(6, 6), method="pca")
    build_image_store(matrix, url, layout, progress=False)
    before = store.StoreReader(url).images[:]
    open_group = writer.location.open_group

    def unreachable(path, mode, *args, **kwargs):
        if mode == "r+":
            raise ConnectionError("the network went away")
        return open_group(path, mode, *args, **kwargs)

    monkeypatch.setattr(writer.location, "open_group", unreachable)
    with pytest.raises(ConnectionError, match="network went away"):
        build_image_store(matrix, url, layout, force=True, progress=False)
    monkeypatch.undo()
    np.testing.assert_array_equal(store.StoreReader(url).images[:], before)
    store.location.remove(url)


def _put(s3, key: str, data: bytes) -> str:
    import s3fs

    s3fs.S3FileSystem(**s3, skip_instance_cache=True).pipe(f"{BUCKET}/{key}", data)
    return f"s3://{BUCKET}/{key}"


def test_a_corpus_on_s3_is_read_as_the_same_file_here_is(tmp_path, s3):
    """`--input s3://...` was refused ("copy it here first") though stores live there: a
    table file or an aclImdb tarball is read from the bucket as from this disk."""
    import gzip

    from fastimg.corpus import CorpusConfig, load_corpus
    from test_corpus import tiny_tarball

    csv = write_csv(tmp_path / "t.csv", n=40)
    url = _put(s3, "corpora/t.csv.gz", gzip.compress(csv.read_bytes()))
    here, there = (load_corpus(CorpusConfig(input=source, split_column="split"), options)
                   for source, options in ((str(csv), None), (url, s3)))
    assert there.texts == here.texts and there.ids.tolist() == here.ids.tolist()
    assert there.labels.tolist() == here.labels.tolist() and there.source == url
    tar = _put(s3, "corpora/aclImdb_v1.tar.gz", tiny_tarball(tmp_path))
    assert len(load_corpus(CorpusConfig(input=tar), s3)) == 8


def test_a_corpus_url_that_is_missing_or_a_folder_is_one_line(s3):
    from fastimg.corpus import CorpusError, read_table

    _put(s3, "folder/a.csv", b"text,label\na,1\n")
    for url, message in [
            (f"s3://{BUCKET}/nope.csv", f"input s3://{BUCKET}/nope.csv does not exist"),
            ("s3://nobucket/c.csv", "s3://nobucket/c.csv: the bucket nobucket does not exist"),
            (f"s3://{BUCKET}/folder", f"input s3://{BUCKET}/folder is a folder: an aclImdb "
                                      f"folder is read from a local disk")]:
        with pytest.raises(CorpusError, match=f"^{message}"):
            read_table(url, s3)
    with pytest.raises(CorpusError, match=r"^input s3:/b/c.csv looks like a URL with a slash "
                                          r"missing: write s3://b/c.csv"):
        read_table("s3:/b/c.csv")


@pytest.mark.slow
def test_build_dataset_reads_its_corpus_from_s3(tmp_path, tiny_bert_dir, s3, s3_env, capsys):
    csv = write_csv(tmp_path / "t.csv", n=40)
    url = _put(s3, "corpora/t.csv", csv.read_bytes())
    assert main(_build_argv(url, tiny_bert_dir, str(tmp_path / "there.zarr"), *s3_env)) == 0
    assert main(_build_argv(csv, tiny_bert_dir, str(tmp_path / "here.zarr"))) == 0
    # the storage options served the input: no "ignored for the local path" warning
    assert "ignored" not in capsys.readouterr().err
    there, here = (store.StoreReader(tmp_path / name) for name in ("there.zarr", "here.zarr"))
    np.testing.assert_array_equal(there.images[:], here.images[:])
    assert there.configs["corpus"]["input"] == url
    assert "secret" not in json.dumps(there.configs)  # the options are never stored


def test_the_training_library_reads_a_store_url_with_its_storage_options(tmp_path, s3):
    """fit and StoreDataset took no storage_options: a store on an S3 API of one's own (an
    endpoint_url) could be trained on from the command line only."""
    import torch

    from fastimg.train import StoreDataset, TrainConfig, fit
    from test_train import FAST, write_store

    url = f"s3://{BUCKET}/library.zarr"
    y = write_store(store.location.resolve(url, s3), n_rows=80, grid=(32, 32))
    result = fit(url, TrainConfig(**{**FAST, "epochs": 1}, probe=False), storage_options=s3)
    assert 0.0 <= result.val_accuracy <= 1.0 and result.metrics["epochs_run"] == 1
    dataset = StoreDataset(url, "val", storage_options=s3)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    local = tmp_path / "local.zarr"
    write_store(local, n_rows=80, grid=(32, 32))
    expected = np.asarray(store.StoreReader(local).images[:])[dataset.rows]
    np.testing.assert_array_equal(images[:, 0].numpy(), expected.astype(np.float32))
    assert [dataset[i][1] for i in range(len(dataset))] == list(y[dataset.rows])
    store.location.remove(store.location.resolve(url, s3))
