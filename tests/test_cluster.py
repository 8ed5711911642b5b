"""Cluster builds (issue 10): chunk tasks on a dask LocalCluster equal the in-process build byte
for byte, survive a worker killed mid-task and a client stopped mid-build, and a worker that
cannot load the model stops the build with one line naming it."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

from conftest import TINY_WORDS  # noqa: E402
from fastimg import store  # noqa: E402
from fastimg.cli import main  # noqa: E402

pytestmark = [
    # distributed's LocalCluster on a busy machine: its notes are not ours
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*unclosed.*:ResourceWarning"),
]


def write_csv(path, n=48, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["id,text,label,split"]
    for i in range(n):
        words = rng.choice(TINY_WORDS, size=int(rng.integers(3, 20)))
        split = "test" if i % 4 == 3 else "train"
        lines.append(f"r{i},{' '.join(words)},{i % 2},{split}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def configs(csv, model, chunk_rows=8):
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import DatasetConfig
    from fastimg.embed import EncoderConfig
    from fastimg.layout import LayoutConfig

    return (CorpusConfig(input=str(csv), split_column="split", seed=0),
            EncoderConfig(model=str(model), layers="last6", max_length=32,
                          chunk_rows=chunk_rows, device="cpu"),
            LayoutConfig(grid=(8, 8), method="pca", random_state=0),
            DatasetConfig(image_dtype="float16"))


@pytest.fixture(scope="module")
def client():
    from fastimg.cluster import connect

    with connect("local:2") as client:
        yield client


@pytest.fixture(scope="module")
def corpus_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("cluster") / "texts.csv")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_csv, tiny_bert_dir):
    """The in-process build with one torch thread (as each worker runs)."""
    import torch

    from fastimg.dataset import build_dataset

    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_dataset(out, *configs(corpus_csv, tiny_bert_dir), progress=False)
    finally:
        torch.set_num_threads(threads)
    return store.StoreReader(out)


def assert_same(path, reference):
    reader = store.StoreReader(path)
    for name in (store.EMBEDDINGS, store.IMAGES, store.LABELS, store.SPLIT):
        a, b = reader.group[name][:], reference.group[name][:]
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), name
    assert reader.layout().to_dict() == reference.layout().to_dict()
    assert not any(k.startswith(store.schema.DONE_PREFIX) for k in reader.group.array_keys())


def test_a_stale_task_writes_nothing_into_a_restarted_build(tmp_path, tiny_bert_dir):
    """A task of an earlier build (another encode stage key) leaves the new arrays alone."""
    from fastimg.cluster import encode_chunk
    from fastimg.embed import EncoderConfig
    from fastimg.store import StoreWriter

    config = EncoderConfig(model=str(tiny_bert_dir), max_length=16, chunk_rows=4, device="cpu")
    texts = ["the film was good", "a bad plot", "great acting", "awful music"]
    writer = StoreWriter.open(tmp_path / "s.zarr")
    writer.begin("encode", "new-key", {})
    writer.create_embeddings(8, 6 * 32, "float16", 4, {})
    done = writer.done_markers(store.EMBEDDINGS)
    location = store.partial_path(writer.path)
    stale = encode_chunk(location, texts, config.to_json(), 0, 0, 4, "old-key")
    assert stale["stale"] and not done[0]
    assert not np.asarray(writer.group[store.EMBEDDINGS][0:4]).any()
    fresh = encode_chunk(location, texts, config.to_json(), 0, 0, 4, "new-key")
    assert not fresh["skipped"] and done[0] == 1
    assert np.asarray(writer.group[store.EMBEDDINGS][0:4]).any()


def test_a_cancelled_task_that_ends_late_marks_nothing(tmp_path, tiny_bert_dir, monkeypatch):
    """A task cancelled mid-run (a Ctrl-C) runs on; when a rerun had finished the stage and
    dropped the markers meanwhile, its late mark left a stray marker folder in the store."""
    from fastimg import cluster
    from fastimg.embed import EncoderConfig
    from fastimg.store import StoreWriter

    config = EncoderConfig(model=str(tiny_bert_dir), max_length=16, chunk_rows=4, device="cpu")
    texts = ["the film was good", "a bad plot", "great acting", "awful music"]
    writer = StoreWriter.open(tmp_path / "s.zarr")
    writer.begin("encode", "key", {})
    writer.create_embeddings(8, 6 * 32, "float16", 4, {})
    writer.done_markers(store.EMBEDDINGS)
    location = store.partial_path(writer.path)
    model = cluster.tasks._model

    def rerun_finishes_meanwhile(*args, **kwargs):  # while this task encodes
        writer.drop_done_markers(store.EMBEDDINGS)
        return model(*args, **kwargs)

    monkeypatch.setattr(cluster.tasks, "_model", rerun_finishes_meanwhile)
    late = cluster.encode_chunk(location, texts, config.to_json(), 0, 0, 4, "key")
    assert late["skipped"]
    assert not (location / (store.schema.DONE_PREFIX + store.EMBEDDINGS)).exists()
    assert not np.asarray(writer.group[store.EMBEDDINGS][0:4]).any()


def test_finished_rows_run_to_the_first_unmarked_chunk(tmp_path):
    from fastimg.store import StoreWriter

    writer = StoreWriter.open(tmp_path / "s.zarr")
    writer.create_images(30, (4, 4), "float16", chunk_rows=8)
    assert writer.finished_rows(store.IMAGES, 5) == 5  # no markers: an in-process record
    done = writer.done_markers(store.IMAGES)
    done[0], done[1], done[3] = 1, 1, 1  # chunk 2 (rows 16-24) unfinished
    assert writer.finished_rows(store.IMAGES, 0) == 16
    done[2] = 1
    assert writer.finished_rows(store.IMAGES, 0) == 30  # the last chunk is short
    writer.drop_done_markers(store.IMAGES)
    assert writer.done_markers(store.IMAGES, create=False) is None


def test_a_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch):
    """distributed's nanny sets OMP_NUM_THREADS=1 (and more) in the process that starts it: a
    build started after a local cluster closed ran torch on one thread, and its encodings
    differed in the last bit from the same build run before."""
    from fastimg.cluster import connect

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # else the nanny keeps the caller's
    before = dict(os.environ)
    with connect("local:1") as client:
        assert client.submit(os.getenv, "OMP_NUM_THREADS").result() == "1"  # the workers' own
        assert dict(os.environ) == before
    assert dict(os.environ) == before


def test_parse_spec():
    from fastimg.cluster import parse_spec

    assert parse_spec("local:3") == ("local", 3)
    assert parse_spec("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    # host:port, which dask takes as tcp://, was refused
    assert parse_spec("10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    assert parse_spec("node-3.lab:8786") == ("address", "tcp://node-3.lab:8786")
    assert parse_spec("[::1]:8786") == ("address", "tcp://[::1]:8786")
    for bad in ("local:0", "local:x", "8786", "tcp://", "host:", "a b:1"):
        with pytest.raises(ValueError, match="local:N"):
            parse_spec(bad)


@pytest.mark.slow
def test_cluster_build_equals_in_process(tmp_path, client, corpus_csv, tiny_bert_dir, reference):
    from fastimg.dataset import build_dataset

    for name in ("a.zarr", "b.zarr"):
        build_dataset(tmp_path / name, *configs(corpus_csv, tiny_bert_dir), progress=False,
                      client=client)
        assert_same(tmp_path / name, reference)


def test_a_cluster_build_cut_short_resumes_in_process(tmp_path, client, corpus_csv,
                                                      tiny_bert_dir, reference, monkeypatch,
                                                      caplog):
    """Chunks a cluster build marked done are not encoded again by an in-process rerun, and
    the finished store keeps no chunk markers."""
    import torch

    from fastimg import cluster
    from fastimg.dataset import build_dataset

    def two_chunks_then_cut(client, futures, stage, stats, *, rows, progress):
        for future in futures[:2]:
            future.result()
        client.cancel(futures[2:])
        raise RuntimeError("cut short")

    import cloudpickle

    out = tmp_path / "cut.zarr"
    # slow tasks: with fast ones, warm workers finished every chunk before the cancel (the
    # test failed alone, with nothing to resume)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client.run(_slow_encode, 0.5)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(cluster.driver, "_drive", two_chunks_then_cut)
            with pytest.raises(RuntimeError, match="cut short"):
                build_dataset(out, *configs(corpus_csv, tiny_bert_dir), progress=False,
                              client=client)
        # the cancelled tasks a worker had started run on (dask cannot stop them, and the
        # scheduler forgets them): their end is awaited, for a rerun with chunks to resume
        deadline = time.monotonic() + 120
        while any(client.run(_executing).values()):
            assert time.monotonic() < deadline, client.run(_executing)
            time.sleep(0.05)
    finally:
        client.run(_slow_encode, 0.0)
    assert _marked_chunks(store.partial_path(out)) >= 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker, and the reference, ran
    try:
        with caplog.at_level("INFO", logger="fastimg.embed"):
            build_dataset(out, *configs(corpus_csv, tiny_bert_dir), progress=False)
    finally:
        torch.set_num_threads(threads)
    resumed = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert resumed and int(resumed[0].split(" after ")[1].split()[0]) >= 16, resumed
    assert_same(out, reference)


def _slow_encode(seconds: float) -> None:
    """Run on the workers (pickled by value): each encode task sleeps before it loads its
    model (cached) and encodes."""
    import fastimg.cluster.tasks as tasks

    original = getattr(tasks, "_unpatched_model", tasks._model)
    tasks._unpatched_model = original
    if seconds <= 0:
        tasks._model = original
        return

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    tasks._model = slow


def _executing(dask_worker) -> int:
    """Run on each worker: the tasks it is running, cancelled ones included."""
    return len(dask_worker.state.executing)


def _marked_chunks(partial) -> int:
    """Chunk files of the encode markers: ``c/<index>``, not zarr's temporary
    ``c/<index>.<uuid>.partial`` of a write in progress (a kill then leaves the chunk unmarked)."""
    folder = partial / (store.schema.DONE_PREFIX + store.EMBEDDINGS) / "c"
    return sum(f.name.isdigit() for f in folder.iterdir()) if folder.is_dir() else 0


@pytest.mark.slow
def test_worker_killed_mid_task_still_completes(tmp_path, client, corpus_csv, tiny_bert_dir,
                                                reference):
    import cloudpickle

    from fastimg.dataset import build_dataset

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client.run(_slow_encode, 0.5)
    out, result = tmp_path / "killed.zarr", {}

    def build():
        try:
            result["summary"] = build_dataset(out, *configs(corpus_csv, tiny_bert_dir),
                                              progress=False, client=client)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=build)
    thread.start()
    try:
        deadline = time.monotonic() + 480  # a busy 2-core machine imports torch slowly
        while _marked_chunks(store.partial_path(out)) == 0 and thread.is_alive():
            assert time.monotonic() < deadline, "no chunk was finished"
            time.sleep(0.02)
        assert thread.is_alive(), f"the build ended before a worker could be killed: {result}"
        # the first chunk is in the store; every worker is in the middle of a task now
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=300)
    finally:
        client.run(_slow_encode, 0.0)
    assert "error" not in result and "summary" in result, result
    assert victim not in client.run(os.getpid).values()  # it was really killed (and replaced)
    assert_same(out, reference)
    client.wait_for_workers(2, timeout=120)
    # the worker started again ignores a Ctrl-C and a SIGTERM too (it inherits nothing: a
    # plugin sets it)
    assert set(client.run(_stop_handlers).values()) == {(signal.SIG_IGN, signal.SIG_IGN)}


def _stop_handlers():
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def _preload(path, body: str):
    path.write_text("import time\nimport fastimg.cluster as cluster\n" + body, encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_client_killed_mid_build_resumes_without_recomputing(tmp_path, corpus_csv,
                                                             tiny_bert_dir, reference):
    """A real SIGKILL of the whole `fastimg build-dataset --cluster local:2` process group."""
    import subprocess

    out = tmp_path / "client.zarr"
    argv = [sys.executable, "-m", "fastimg.cli", "-v", "build-dataset", "--input",
            str(corpus_csv), "--split-column", "split", "--model", str(tiny_bert_dir),
            "--layers", "last6", "--max-length", "32", "--chunk-rows", "8", "--pixels", "8",
            "--method", "pca", "--device", "cpu", "--out", str(out), "--quiet", "--cluster",
            "local:2"]
    env = dict(os.environ)
    log = open(tmp_path / "killed.log", "wb")  # a file: a full pipe would stall the client
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 480  # a busy 2-core machine imports torch slowly
        while _marked_chunks(store.partial_path(out)) == 0 and proc.poll() is None:
            assert time.monotonic() < deadline, "no chunk was finished"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the client and the cluster it started
        proc.wait()
        log.close()
    finished = _marked_chunks(store.partial_path(out))
    if out.exists() or finished == 6:
        # (a worker preload that slows the tasks down stalled the workers' torch import here)
        pytest.skip("the build finished before the client could be killed")
    assert 0 < finished < 6
    again = subprocess.run(argv[:-2] + ["--cluster", "local:2"], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    pending = [line for line in again.stderr.splitlines() if "chunks to do on the cluster" in line]
    # the chunks finished before the kill are not submitted again
    assert pending and f"encode: {6 - finished} of 6 chunks" in pending[0], pending
    assert_same(out, reference)


@pytest.mark.slow
def test_worker_that_cannot_load_the_model_is_one_line_exit_2(tmp_path, corpus_csv,
                                                              tiny_bert_dir, capsys):
    import dask

    broken = _preload(tmp_path / "no_transformers.py",
                      "import sys\nsys.modules['transformers'] = None  # not on this node\n")
    out = tmp_path / "broken.zarr"
    argv = ["build-dataset", "--input", str(corpus_csv), "--split-column", "split", "--model",
            str(tiny_bert_dir), "--max-length", "32", "--chunk-rows", "8", "--pixels", "8",
            "--method", "pca", "--device", "cpu", "--out", str(out), "--quiet",
            "--cluster", "local:2"]
    with dask.config.set({"distributed.worker.preload": [broken]}):
        code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err
    assert err.startswith("fastimg build-dataset: error: worker tcp://127.0.0.1:")
    assert "cannot load the model" in err and "transformers" in err
    # the unfinished build is kept for a resume
    assert store.partial_path(out).exists() and not out.exists()
    record = store.location.read_attrs(store.partial_path(out), store.BUILD_KEY)
    assert record["stages"]["corpus"]["done"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_scheduler_address_where_nothing_listens_fails_at_once(tmp_path, capsys):
    """dask alone retries for 30 s and then names no cause."""
    from fastimg.cluster import ClusterError, check_reachable

    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ClusterError, match="no dask scheduler answers at .*dask scheduler"):
        check_reachable(address)
    with pytest.raises(ClusterError, match="expected tcp://HOST:PORT"):
        check_reachable("tcp://127.0.0.1")
    check_reachable("inproc://whatever")  # not ours to check
    start = time.monotonic()
    assert main(["build-dataset", "--input", str(write_csv(tmp_path / "t.csv")), "--out",
                 str(tmp_path / "x.zarr"), "--quiet", "--cluster", address]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"no dask scheduler answers at {address}" in err
    assert time.monotonic() - start < 25


def test_a_task_that_cannot_open_the_store_names_its_worker(tmp_path, tiny_bert_dir):
    from fastimg.cluster import WorkerStorageError, encode_chunk
    from fastimg.embed import EncoderConfig

    config = EncoderConfig(model=str(tiny_bert_dir), max_length=16, chunk_rows=4, device="cpu")
    with pytest.raises(WorkerStorageError, match=r"worker pid \d+ cannot reach the store: "
                                                 r"FileNotFoundError: .*its own access"):
        encode_chunk(tmp_path / "elsewhere.zarr.partial", ["a film"], config.to_json(), 0, 0, 1)


def test_a_raster_backend_a_worker_cannot_run_names_the_worker(tmp_path):
    """The client's check of --raster-backend passed on its own machine; a worker without its
    GPU said the library's "backend='cuda' ...", which the command line read as
    --tsne-backend."""
    from fastimg.cli.parser import build_parser, flags_of
    from fastimg.cli.report import as_flag
    from fastimg.cluster import WorkerSetupError, raster_chunk
    from fastimg.raster import RASTER_BACKENDS

    if RASTER_BACKENDS._backends["cuda"].available():
        pytest.skip("the cuda raster backend runs here")
    with pytest.raises(WorkerSetupError, match=r"worker pid \d+ cannot rasterise: "
                                               r"raster_backend='cuda' cannot run here") as err:
        raster_chunk(tmp_path / "elsewhere.zarr.partial", "{}", "uint8", "cuda", 0, 0, 1)
    said = as_flag(str(err.value), flags_of(build_parser(), "build-dataset"))
    assert "--raster-backend cuda cannot run here" in said and "--tsne" not in said


def test_fewer_tasks_than_workers_is_one_warning():
    from fastimg.cluster import ClusterWarning
    from fastimg.cluster.driver import _warn_workers

    class Client:
        def nthreads(self):
            return {"tcp://a": 1, "tcp://b": 1, "tcp://c": 1}

    with pytest.warns(ClusterWarning, match="encode: 1 task for 3 workers .*lower chunk_rows"):
        _warn_workers(Client(), 1, 1, "encode", idle=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_workers(Client(), 1, 1, "images", idle=False)  # not the encoder's chunking
        _warn_workers(Client(), 3, 3, "encode", idle=True)
        _warn_workers(Client(), 0, 1, "encode", idle=True)  # nothing left to do: nothing to say
        _warn_workers(Client(), 1, 6, "encode", idle=True)  # a resume: its chunking is kept


def test_a_cluster_without_workers_says_so_instead_of_waiting_silently():
    from types import SimpleNamespace

    from fastimg.cluster import ClusterWarning
    from fastimg.cluster.driver import _warn_workers

    client = SimpleNamespace(nthreads=dict, scheduler=SimpleNamespace(address="tcp://s:8786"))
    for idle in (True, False):
        with pytest.warns(ClusterWarning, match=r"no workers yet.*dask worker tcp://s:8786"):
            _warn_workers(client, 4, 4, "encode", idle=idle)


def test_a_port_that_is_no_dask_scheduler_fails_instead_of_hanging():
    """A dashboard's port (8787 for 8786) accepts the connection and never speaks; dask's
    client would wait on it forever. A scheduler speaks first."""
    import socket

    from fastimg.cluster import ClusterError, check_reachable

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ClusterError, match="not a dask scheduler .*8786.*8787"):
            check_reachable(address, timeout=0.5)
        assert time.monotonic() - start < 10

    with socket.socket() as talking:
        talking.bind(("127.0.0.1", 0))
        talking.listen()

        def greet():
            connection, _ = talking.accept()
            with connection:
                connection.sendall(b"\x00handshake")
                time.sleep(0.5)

        thread = threading.Thread(target=greet)
        thread.start()
        check_reachable(f"tcp://127.0.0.1:{talking.getsockname()[1]}", timeout=5)
        thread.join()


def _drive_a_task_that_raises(error, monkeypatch):
    """``cluster.driver._drive`` of one encode task whose result raises ``error``."""
    from types import SimpleNamespace

    import distributed

    from fastimg import cluster

    def result():
        raise error

    future = SimpleNamespace(result=result, done=lambda: True)
    monkeypatch.setattr(distributed, "as_completed", iter)
    client = SimpleNamespace(cancel=lambda futures: None)
    cluster.driver._drive(client, [future], "encode", {}, rows=8, progress=False)


def test_a_lost_scheduler_is_one_line_and_keeps_the_build(monkeypatch):
    import distributed

    from fastimg import cluster

    lost = distributed.client.FutureCancelledError("fastimg-encode-0",
                                                   "scheduler-connection-lost")
    with pytest.raises(cluster.ClusterError, match=r"scheduler dropped .*"
                       r"scheduler-connection-lost.*rerun the same command to resume"):
        _drive_a_task_that_raises(lost, monkeypatch)


def test_a_task_that_kills_its_workers_is_one_line_and_keeps_the_build(monkeypatch):
    """A worker over its nanny's memory limit is killed and restarted; a task that does that
    to every worker it runs on ends in distributed's KilledWorker: the node's set-up, not a
    bug (it was reported as an internal error, exit code 1)."""
    from types import SimpleNamespace

    import distributed

    from fastimg import cluster

    killed = distributed.KilledWorker("fastimg-encode-ab12-3",
                                      SimpleNamespace(address="tcp://127.0.0.1:4321"), 3)
    with pytest.raises(cluster.ClusterError, match=r"encode: task fastimg-encode-ab12-3 killed "
                       r"each of the 4 workers .*tcp://127.0.0.1:4321; out of memory\? .*"
                       r"rerun the same command to resume"):
        _drive_a_task_that_raises(killed, monkeypatch)


def test_a_cluster_that_loses_every_worker_mid_stage_says_so(monkeypatch):
    """Workers that die for good mid-build (fastimg missing on their node: a worker that
    cannot unpickle a task closes) left the build waiting without a word, forever."""
    from types import SimpleNamespace

    import distributed

    from fastimg import cluster

    monkeypatch.setattr(cluster.driver, "WATCH_SECONDS", 0.02)
    warned, messages = threading.Event(), []

    def waiting(futures):  # the tasks wait until the warning comes (or 30 s)
        warned.wait(30)
        return iter(futures)

    class Seen(logging.Handler):
        def emit(self, record):
            if "no workers" in record.getMessage():
                messages.append(record.getMessage())
                warned.set()

    seen = Seen(logging.WARNING)
    logging.getLogger("fastimg.cluster").addHandler(seen)
    future = SimpleNamespace(result=lambda: {"index": 0, "rows": 8, "skipped": False,
                                             "seconds": 0.1, "worker": "w"},
                             done=lambda: True)
    monkeypatch.setattr(distributed, "as_completed", waiting)
    client = SimpleNamespace(cancel=lambda futures: None, nthreads=dict,
                             scheduler=SimpleNamespace(address="tcp://10.0.0.1:8786"))
    stats = {"tasks": 0, "skipped": 0, "task_seconds": 0.0}
    try:
        cluster.driver._drive(client, [future], "encode", stats, rows=8, progress=False)
    finally:
        logging.getLogger("fastimg.cluster").removeHandler(seen)
    assert warned.is_set() and stats["tasks"] == 1
    assert messages[0].startswith("encode: the cluster has had no workers for 0 s (they died")
    assert "`dask worker tcp://10.0.0.1:8786`" in messages[0] and "Ctrl-C keeps" in messages[0]


@pytest.mark.slow
def test_ctrl_c_on_a_cluster_build_is_one_line(tmp_path, corpus_csv, tiny_bert_dir):
    """A real SIGINT to the whole process group, as a terminal's Ctrl-C sends: the workers
    ignore it, the client stops, and dask's notes of the close stay hidden."""
    import subprocess

    out = tmp_path / "ctrl-c.zarr"
    # SIGINT handled as in a terminal, even where this process inherited it ignored (a
    # shell's background job: `make test &`), which the client would inherit and keep
    interruptible = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)"
                     "; from fastimg.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", interruptible, "build-dataset", "--input", str(corpus_csv),
            "--split-column", "split", "--model", str(tiny_bert_dir), "--layers", "last6",
            "--max-length", "32", "--chunk-rows", "8", "--pixels", "8", "--method", "pca",
            "--device", "cpu", "--out", str(out), "--quiet", "--cluster", "local:2"]
    log = open(tmp_path / "ctrl-c.log", "wb")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 480
        while _marked_chunks(store.partial_path(out)) == 0 and proc.poll() is None:
            assert time.monotonic() < deadline, "no chunk was finished"
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    if out.exists():
        pytest.skip("the build finished before the Ctrl-C")
    err = (tmp_path / "ctrl-c.log").read_text(encoding="utf-8").strip()
    assert code == 130, err
    # the build's own warnings (a layout fitted on this few rows is noted) may come before it
    lines = [line for line in err.splitlines() if ": warning: " not in line]
    assert len(lines) == 1 and re.fullmatch(
        r"fastimg build-dataset: interrupted \(the unfinished build is kept, corpus done and "
        r"\d+ of \d+ rows encoded: rerun to resume\)", lines[0]), lines


def test_a_worker_killed_at_close_leaves_no_leaked_semaphore_warning(tmp_path):
    """A worker still running a task when the build stops (Ctrl-C, SIGTERM) is killed by its
    nanny after 4 s, and multiprocessing's resource tracker, which the workers share with the
    client's process, printed "There appear to be 1 leaked semaphore objects to clean up at
    shutdown" under the command's one line (it cleans them up itself). A semaphore left
    registered stands in for the killed worker's."""
    err = _stderr_of(tmp_path, "from multiprocessing import resource_tracker\n"
                               "from fastimg.cluster import connect\n"
                               "with connect('local:1'):\n"
                               "    resource_tracker.register('/fastimg-test-left', "
                               "'semaphore')\n")
    assert "resource_tracker" not in err, err


def _stderr_of(tmp_path, script: str) -> str:
    """What a Python ``script`` run in a process of its own prints on stderr (it must succeed):
    a local cluster's workers write there too."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_a_local_workers_errors_are_hidden_unless_verbose(tmp_path, verbose):
    """On a loaded machine a Ctrl-C closed the scheduler (in the client's process) before a
    worker's heartbeat: the worker printed "Failed to communicate with scheduler during
    heartbeat" and 30 lines of traceback under the command's one line. A local worker's
    errors say that its cluster is closing; failed tasks are reported by the client; -v
    keeps them."""
    err = _stderr_of(tmp_path, (
        "import logging\n"
        "from fastimg.cluster import connect\n"
        f"logging.getLogger('fastimg.cluster').setLevel({logging.INFO if verbose else 0})\n"
        "with connect('local:1') as client:\n"
        "    client.run(lambda: logging.getLogger('distributed.worker').error(\n"
        "        'Failed to communicate with scheduler during heartbeat.'))\n"))
    assert ("Failed to communicate with scheduler" in err) is verbose, err


def _ctrl_c_before_a_sync_call_starts(caplog) -> list[str]:
    """dask's ``sync()`` interrupted by a Ctrl-C while its call waits behind other work on the
    event loop: what tornado logged (its cancel of the unstarted call fails there)."""
    from unittest import mock

    from distributed.utils import LoopRunner, sync

    async def call():
        return 1

    runner = LoopRunner(asynchronous=False)
    runner.start()
    try:
        busy = threading.Event()
        runner.loop.add_callback(lambda: (busy.set(), time.sleep(0.3)))
        busy.wait()
        caplog.clear()
        with mock.patch.object(threading.Event, "wait", side_effect=KeyboardInterrupt), \
                pytest.raises(KeyboardInterrupt):
            sync(runner.loop, call)
        time.sleep(0.6)  # the loop runs the call's start, then the cancel
    finally:
        runner.stop()
    return [r.getMessage() for r in caplog.records if r.name == "tornado.application"]


def test_a_ctrl_c_before_a_dask_call_started_prints_no_traceback(caplog, monkeypatch):
    from fastimg import cluster

    caplog.set_level(logging.WARNING, logger="fastimg.cluster")  # as without -v
    tornado_logger = logging.getLogger("tornado.application")
    # without the filter that an open client of this module's fixture holds
    monkeypatch.setattr(tornado_logger, "filters", [
        f for f in tornado_logger.filters if not isinstance(f, cluster.quiet.SyncCancelNoise)])
    if not _ctrl_c_before_a_sync_call_starts(caplog):
        pytest.skip("this dask cancels an unstarted call quietly: nothing to hide")
    with cluster.quiet.interrupt_noise_muted():
        assert _ctrl_c_before_a_sync_call_starts(caplog) == []
        tornado_logger.error("another callback failed")
    assert [r.getMessage() for r in caplog.records] == ["another callback failed"]  # kept


def test_images_on_a_cluster_without_workers_warn_instead_of_failing_to_scatter(tmp_path,
                                                                                monkeypatch):
    """scatter(broadcast=True) waits for a worker and then fails: with none yet, the layout
    goes in each task, and the stage warns and waits like the encode stage."""
    from types import SimpleNamespace

    from fastimg import cluster
    from fastimg.dataset import DatasetConfig
    from fastimg.layout import DeepInsightLayout
    from fastimg.store import StoreWriter

    rng = np.random.default_rng(0)
    layout = DeepInsightLayout(grid=(4, 4), method="pca", random_state=0).fit(
        rng.random((20, 12), dtype=np.float32))
    writer = StoreWriter.open(tmp_path / "s.zarr")
    writer.begin("images", "key", {})
    writer.create_images(20, (4, 4), "float16", chunk_rows=8)
    submitted = []

    def scatter(*args, **kwargs):
        raise TimeoutError("No valid workers found")

    client = SimpleNamespace(nthreads=dict, scatter=scatter,
                             scheduler=SimpleNamespace(address="tcp://s:8786"),
                             submit=lambda *args, **kwargs: submitted.append(args))
    monkeypatch.setattr(cluster.driver, "_drive", lambda *args, **kwargs: None)
    with pytest.warns(cluster.ClusterWarning, match="images: the cluster has no workers yet"):
        cluster.raster_chunks(client, writer, layout, DatasetConfig())
    assert len(submitted) == 3 and all(isinstance(args[2], str) for args in submitted)
