"""CLI consistency: one line and exit 2 for user mistakes, exit 1 and "a bug" for anything else,
one meaning per flag name, every flag the README names exists, --split-file, train --force."""
import argparse
import functools
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fastimg import cli, store
from fastimg.cli import app, build, describe, report, runs
from fastimg.cli import main
from fastimg.layout import DeepInsightLayout, LayoutConfig
from conftest import one_line, structured_matrix

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("argv,message", [
    (["train", "s.zarr", "--out", "r", "--device", "gpu"], "expected auto, cpu, cuda or cuda:N"),
    (["train", "s.zarr", "--out", "r", "--loader", "dalli"], "invalid choice: 'dalli'"),
    (["images", "--synthetic", "10x100", "--out", "o", "--device", "cpu"], "--raster-backend"),
    (["images", "--synthetic", "10x100", "--out", "o", "--raster-backend", "gpu"],
     "invalid choice: 'gpu'"),
    (["images", "--synthetic", "10x100", "--out", "o", "--tsne-backend", "tsnecuda"],
     "invalid choice: 'tsnecuda'"),
    (["build-dataset", "--dataset", "imdb", "--out", "o", "--device", "gpu"],
     "invalid choice: 'gpu'"),
    (["images", "--synthetic", "10x100", "--out", "o", "--tsne-threads", "0"],
     "--tsne-threads must be a number of threads (1 to 1024) or -1 (all cores), got 0"),
    # 100000 crashed the process (segmentation fault in openTSNE), 2000 ran for minutes
    (["images", "--synthetic", "10x100", "--out", "o", "--tsne-threads", "100000"],
     "--tsne-threads must be a number of threads (1 to 1024) or -1 (all cores), got 100000"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["images", "--synthetic", "10x100", "--out", "o", "--fit-rows", "5", "--split-file",
      "s.npy"], "--fit-rows and --split-file: give one, not both"),
    (["images", "--synthetic", "10x100", "--out", "o", "--tsne-backend", "cuml"],
     "--tsne-backend cuml cannot run here"),
    (["images", "--synthetic", "0x10", "--out", "o"],
     "argument --synthetic: expected at least one row and one feature (NxF, e.g. 2000x768), "
     "got '0x10'"),
    (["images", "--synthetic", "10x-3", "--out", "o"], "at least one row and one feature"),
    (["show", "s.zarr", "--out", "s3://bucket/s.png"],
     "argument --out: expected a local path, got the URL 's3://bucket/s.png'"),
    # a corpus may be a URL; one with a slash missing was looked for in a local folder 's3:'
    (["build-dataset", "--input", "s3:/bucket/c.csv", "--out", "o"],
     "argument --input: s3:/bucket/c.csv looks like a URL with a slash missing: write "
     "s3://bucket/c.csv"),
    (["images", "--input", "s3://bucket/s.zarr/embeddings", "--out", "o"],
     "argument --input: expected a local path, got the URL 's3://bucket/s.zarr/embeddings'"),
    (["predict", "run", "--input", "https://example.com/c.csv", "--out", "p.csv"],
     "argument --input: expected a local path, got the URL 'https://example.com/c.csv'"),
    (["images", "--synthetic", "10x100", "--out", "o", "--split-file", "s3://bucket/s.npy"],
     "argument --split-file: expected a local path, got the URL 's3://bucket/s.npy'"),
    (["train", "s3://bucket/s.zarr", "--out", "r", "--weights", "s3://bucket/w.pt"],
     "argument --weights: expected a local path, got the URL 's3://bucket/w.pt'"),
    (["predict", "s3://bucket/run", "--input", "c.csv", "--out", "p.csv"],
     "argument run_dir: expected a local path, got the URL 's3://bucket/run'"),
    (["explain", "s3://bucket/run", "--out", "e"],
     "argument run_dir: expected a local path, got the URL 's3://bucket/run'"),
    (["show", "s.zarr", "--out", "s.png", "--per-class", "-2"],
     "--per-class must be a whole number >= 1, got -2"),
    (["show", "s.zarr", "--out", "s.png", "--per-class", "17"],
     "--per-class must be at most 16 (two panels each per class"),
    (["images", "--synthetic", "10x100", "--out", "o", "--pixels", "0"],
     "--pixels must be at least 2 x 2 pixels, got 0 x 0"),
    # the corpus's field name (text_columns) stood where the flag belongs
    (["build-dataset", "--input", "c.csv", "--out", "o", "--text-column", ""],
     "--text-column must be one or more column names, got ('',)"),
    (["build-dataset", "--input", "c.csv", "--out", "o", "--text-column", "a", "--text-column",
      "a"], "--text-column names 'a' twice"),
    # a file named "-" was drawn ("wrote -"), where predict's --out - is standard output
    (["show", "s.zarr", "--out", "-"], "argument --out: '-' (standard output) is not an output "
                                       "of this command: give a path (./- for one named '-')"),
    # the classes in the texts: built, trained, and scored 1.0 everywhere
    (["build-dataset", "--input", "c.csv", "--out", "o", "--text-column", "label"],
     "--label-column 'label' is also a text column; the labels must not be in the texts (name "
     "each text's column with --text-column, its class's with --label-column)"),
    # ignored by pca, yet in the layout's key: a store differing in it alone was refused
    (["images", "--synthetic", "10x100", "--out", "o", "--method", "pca", "--perplexity", "5"],
     "--perplexity applies to --method tsne; --method pca has no use for it"),
    # "or None" is the library's; a flag left out is None
    (["images", "--synthetic", "10x100", "--out", "o", "--fit-rows", "0"],
     "--fit-rows must be a whole number >= 2, got 0"),
    (["images", "--synthetic", "10x100", "--out", "o", "--method", "pca", "--metric",
      "euclidean"], "--metric applies to --method tsne; --method pca has no use for it"),
    (["relayout", "s.zarr", "--out", "o", "--method", "kpca", "--tsne-backend", "sklearn"],
     "--tsne-backend applies to --method tsne; --method kpca has no use for it"),
])
def test_usage_mistakes_print_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv,prog", [
    (["images", "--synthetic", "10x100", "--out", "o", "--nope"], "fastimg images"),
    (["info", "--nope", "s.zarr"], "fastimg info"),
    (["build-dataset", "--dataset", "imdb", "--out", "o", "--nope", "1"],
     "fastimg build-dataset"),
])
def test_an_unknown_flag_is_named_by_its_command(capsys, argv, prog):
    # the top-level parser reported it, pointing at `fastimg --help`, which lists no flag of
    # the command
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"{prog}: error: unrecognized arguments: --nope")
    assert err.endswith(f"(see {prog} --help)")


def test_a_gpu_raster_backend_without_a_gpu_is_refused_before_any_work(tmp_path, capsys,
                                                                        monkeypatch):
    import dataclasses

    from fastimg.raster import RASTER_BACKENDS

    backends = RASTER_BACKENDS._backends  # as on a machine without a GPU, even under the simulator
    monkeypatch.setitem(backends, "cuda", dataclasses.replace(backends["cuda"],
                                                              available=lambda: False))
    out = tmp_path / "o.zarr"
    assert main(["images", "--synthetic", "10x100", "--out", str(out), "--raster-backend",
                 "cuda"]) == 2
    assert "--raster-backend cuda cannot run here" in one_line(capsys.readouterr().err)
    assert not out.exists() and not store.partial_path(out).exists()


def test_help_and_version_exit_0(capsys):
    import fastimg

    assert main(["info", "--help"]) == 0
    assert "--json" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastimg {fastimg.__version__}"


def test_object_storage_errors_are_the_users_setup(monkeypatch, capsys):
    exceptions = pytest.importorskip("botocore.exceptions")

    def boom(args):
        raise exceptions.NoCredentialsError()

    monkeypatch.setattr(describe, "cmd_info", boom)
    assert main(["info", "s3://bucket/x.zarr"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "object storage: Unable to locate credentials" in err and "--storage-option" in err


@pytest.mark.parametrize("name,reason", [("EndpointConnectionError", "could not connect"),
                                         ("ConnectTimeoutError", "timed out")])
def test_an_endpoint_out_of_reach_is_named(monkeypatch, capsys, name, reason):
    # botocore named the object it was fetching (the store's .lock), not the endpoint to check
    exceptions = pytest.importorskip("botocore.exceptions")

    def boom(args):
        raise getattr(exceptions, name)(endpoint_url="http://127.0.0.1:1/bkt/x.zarr.lock")

    monkeypatch.setattr(describe, "cmd_info", boom)
    assert main(["info", "s3://bkt/x.zarr"]) == 2
    err = one_line(capsys.readouterr().err)
    assert (f"object storage: the object store's endpoint http://127.0.0.1:1 is out of reach "
            f"({reason}): check the storage option endpoint_url") in err
    assert ".lock" not in err


@pytest.mark.parametrize("error,code,word", [
    (ValueError("bad value"), 2, "error: bad value"),
    (FileNotFoundError("no file here"), 2, "error: no file here"),
    (ImportError("pip install 'fastimg[gpu]'"), 2, "fastimg[gpu]"),
    (TypeError("f() got an unexpected keyword"), 1, "internal error (a bug"),
    (KeyError("layout"), 1, "internal error (a bug"),
    (AttributeError("no attribute x"), 1, "internal error (a bug"),
])
def test_user_errors_exit_2_and_bugs_exit_1(monkeypatch, capsys, error, code, word):
    def boom(args):
        raise error

    monkeypatch.setattr(describe, "cmd_info", boom)
    assert main(["info", "x.zarr"]) == code
    err = one_line(capsys.readouterr().err)
    assert err.startswith("fastimg info: ") and word in err
    assert ("--debug" in err) == (code == 1)


@pytest.mark.parametrize("argv", [["--debug", "info", "x.zarr"], ["info", "x.zarr", "--debug"]])
def test_debug_prints_the_traceback(monkeypatch, capsys, argv):
    def boom(args):
        raise TypeError("wrong call")

    monkeypatch.setattr(describe, "cmd_info", boom)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in boom" in err
    assert err.strip().splitlines()[-1].startswith("fastimg info: internal error")


def _parser_options() -> dict:
    parser = cli.build_parser()
    options = {"": {o for a in parser._actions for o in a.option_strings}}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        options[name] = {o for a in command._actions for o in a.option_strings
                         if a.help != argparse.SUPPRESS}
    return options


def test_every_flag_the_readme_names_exists():
    from benchmarks.__main__ import build_parser as bench_parser

    text = README.read_text(encoding="utf-8")
    options = _parser_options()
    known = set().union(*options.values())
    bench = {o for a in bench_parser()._actions for o in a.option_strings}
    # flags of other programs' command lines (`dask worker ... --nthreads 1`) are theirs
    ours = re.sub(r"`(dask|pip|srun|sbatch|kubectl) [^`]*`", "", text)
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", ours))
    assert flags, "the README names no flags?"
    missing = sorted(f for f in flags if f not in known | bench)
    assert not missing, f"README flags no command has: {missing}"
    # a command line in the README uses only its own command's flags
    for line in re.findall(r"^\s*fastimg ([a-z-]+)(.*)$", text, flags=re.M):
        command, rest = line
        used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest.split("#")[0]))
        assert used <= options[command] | options[""], (command, used - options[command])


def test_stores_that_cannot_be_written_or_kept_are_refused_before_any_work(tmp_path, capsys):
    """memory:// built a whole store, printed "wrote memory://x.zarr" and lost it with the
    process; https:// was said to have a bad storage option, though none was given."""
    corpus = tmp_path / "c.csv"
    corpus.write_text("text,label\n" + "".join(f"film {i},{'pos' if i % 2 else 'neg'}\n"
                                               for i in range(40)))
    for out, said in (("memory://x.zarr", "memory://x.zarr: a memory:// store lives only as "
                                          "long as one Python process"),
                      ("https://example.com/x.zarr", "https://example.com/x.zarr: https:// "
                                                     "stores can be read, not written")):
        code = main(["build-dataset", "--input", str(corpus), "--out", out, "--quiet"])
        err = one_line(capsys.readouterr().err)
        assert code == 2 and said in err and "storage option" not in err, err
    # a store served over HTTP is opened (read) without a word about storage options
    fs, root = store.location.resolve("https://example.com/x.zarr").fs()
    assert type(fs).__name__ == "HTTPFileSystem" and root.endswith("example.com/x.zarr")


def test_the_readme_names_every_flag_of_every_command():
    """show --per-class, --verbose and --version were in --help only."""
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README.read_text(encoding="utf-8")))
    unnamed = {command or "fastimg": sorted(o for o in flags if o.startswith("--")
                                            and o not in named | {"--help"})
               for command, flags in _parser_options().items()}
    assert not any(unnamed.values()), unnamed

def test_device_means_the_torch_device_everywhere():
    options = _parser_options()
    assert "--device" not in options["images"] and "--raster-backend" in options["images"]
    assert {"--raster-backend", "--device"} <= options["build-dataset"]
    assert "--device" in options["train"]


def test_a_file_url_is_a_local_path_for_every_local_input_and_output():
    """predict --input file:///abs/new.csv was refused as a URL ("copy it here first"), while
    the stores that info and train read take file:// URLs as paths."""
    from fastimg.cli import options

    assert options.local_input("file:///data/new.csv") == "/data/new.csv"
    assert options.local_path("file:///runs/a") == Path("/runs/a")
    assert options.local_input_path("local://rel/w.pt") == Path("rel/w.pt")
    with pytest.raises(argparse.ArgumentTypeError, match="got an empty string"):
        options.local_input("file://")


def test_every_command_takes_quiet():
    """A script passing --quiet to every command broke on info and show ("unrecognized
    arguments: --quiet")."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert len(commands.choices) >= 8
    for name, command in commands.choices.items():
        assert "--quiet" in command._option_string_actions, name


def test_train_help_gives_each_preset_s_value():
    """train --help said "(preset)" without the value (--epochs: 15)."""
    from fastimg.train.config import PRESETS

    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    flags = cli.flags_of(cli.build_parser(), "train")
    def words(value):
        return ("on" if value else "off") if isinstance(value, bool) else \
            f"{value:g}" if isinstance(value, float) else value

    for field, ours in PRESETS["ours"].items():
        paper = PRESETS["paper"][field]
        text = " ".join(train._option_string_actions[flags[field]].help.split())
        if field == "normalize":  # said by what each means
            assert "(ours)" in text and "(paper)" in text
        elif field == "unfreeze_fraction":
            assert f"both presets: {ours:g}" in text
        elif ours == paper:
            assert f"preset: {words(ours)}" in text, (field, text)
        else:
            assert f"ours {words(ours)}, paper {words(paper)}" in text, (field, text)


def test_enumerated_flags_have_choices():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    enumerated = {"--scaling", "--method", "--tsne-backend", "--assignment", "--fit-on",
                  "--dtype", "--raster-backend", "--pooling", "--truncation", "--split",
                  "--extractor", "--normalize", "--cache", "--loader", "--dataset"}
    for name, command in sub.choices.items():
        for action in command._actions:
            if enumerated & set(action.option_strings) and action.help != argparse.SUPPRESS:
                assert action.choices, (name, action.option_strings)


@pytest.mark.parametrize("given", ["-", "/dev/stdin"])
def test_a_corpus_on_stdin_is_refused_in_one_line(given, tmp_path, capsys):
    """--input - said 'input - does not exist', /dev/stdin 'unsupported input format'."""
    code = main(["build-dataset", "--input", given, "--out", str(tmp_path / "s.zarr")])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and "not read from standard input: save it to a file" in err, err
    assert not (tmp_path / "s.zarr").exists()


def test_every_flag_says_what_it_does():
    """``--help`` listed --scaling, --method, --pooling, --truncation, --seed and explain's
    --split with their choices and nothing else: not what they change, nor the default."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bare = [(name, action.option_strings or action.dest)
            for name, command in sub.choices.items() for action in command._actions
            if not action.help]
    assert not bare, bare


def test_images_fit_the_layout_on_the_training_rows_of_a_split_file(rng, tmp_path, capsys):
    x = structured_matrix(rng, 120, 150).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    names = np.array(["train"] * 70 + ["val"] * 20 + ["test"] * 30)
    rng.shuffle(names)
    (tmp_path / "split.txt").write_text("\n".join(names))
    out = tmp_path / "o.zarr"
    assert main(["images", "--input", str(tmp_path / "x.npy"), "--split-file",
                 str(tmp_path / "split.txt"), "--out", str(out), "--pixels", "10",
                 "--method", "pca", "--quiet", "--dtype", "float32"]) == 0
    assert "fitted on 70 rows: the training rows" in capsys.readouterr().out
    reader = store.StoreReader(out)
    assert reader.summary["fit_on"] == "train" and reader.summary["fit_rows"] == 70
    np.testing.assert_array_equal(reader.rows("train"), np.flatnonzero(names == "train"))
    with pytest.raises(ValueError, match="split must be one of train, val, test, got 'validation'"):
        reader.rows("validation")
    train_only = DeepInsightLayout(LayoutConfig(grid=(10, 10), method="pca")).fit(
        x[names == "train"])
    np.testing.assert_array_equal(reader.layout().pixel_index_, train_only.pixel_index_)
    np.testing.assert_array_equal(reader.images[:], train_only.transform(x))


@pytest.mark.parametrize("content,message", [
    (np.array([0, 1, 5] * 40), "index 2 has split 5;"),
    (np.array(["train", "holdout"] * 60), "index 1 has split 'holdout'"),
    (np.zeros(7, dtype=np.int8), "one split per row (120)"),
])
def test_bad_split_files_exit_2(rng, tmp_path, capsys, content, message):
    np.save(tmp_path / "split.npy", content)
    code = main(["images", "--synthetic", "120x150", "--split-file", str(tmp_path / "split.npy"),
                 "--out", str(tmp_path / "o.zarr"), "--quiet"])
    assert code == 2 and message in one_line(capsys.readouterr().err)


def test_a_text_split_file_takes_codes_and_the_corpus_aliases(tmp_path, capsys):
    names = ["0", "VALID", " 2 ", "Train", "dev", "validation", "test", "1"] * 15
    (tmp_path / "split.txt").write_bytes(("\ufeff" + "\r\n".join(names)).encode())
    out = tmp_path / "o.zarr"
    assert main(["images", "--synthetic", "120x150", "--split-file", str(tmp_path / "split.txt"),
                 "--out", str(out), "--pixels", "8", "--method", "pca", "--quiet"]) == 0
    codes = [0, 1, 2, 0, 1, 1, 2, 1] * 15
    np.testing.assert_array_equal(store.StoreReader(out).group[store.SPLIT][:], codes)


@pytest.mark.parametrize("lines,message", [
    (["train"] * 50 + [""] + ["train"] * 49 + ["test"] * 20 + ["", ""],
     "split.txt: line 51 is empty; give each row's split"),
    (["train"] * 100 + ["train val"] + ["test"] * 19, "split.txt: line 101 has split 'train val'"),
    (["train"] * 50 + ["holdout"] + ["test"] * 69, "split.txt: line 51 has split 'holdout'"),
    (["train"] * 119, "split.txt has 119 lines; give one split per row (120)"),
])
def test_a_text_split_file_is_read_line_by_line(tmp_path, capsys, lines, message):
    """Blank lines and the words of a line were split apart alike: a blank line dropped moved
    every later row's split up by one, 'train val' counted as two rows, and an unknown split
    was named by its 0-based row, one before its line."""
    (tmp_path / "split.txt").write_text("\n".join(lines), encoding="utf-8")
    code = main(["images", "--synthetic", "120x150", "--split-file", str(tmp_path / "split.txt"),
                 "--out", str(tmp_path / "o.zarr"), "--quiet"])
    assert code == 2 and message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "o.zarr").exists()


def _latin1_split(path):
    path.write_bytes("train\n".encode() * 3 + "v\xe9l\n".encode("latin-1"))


@pytest.mark.parametrize("make,argv,message", [
    (lambda d: (d / "split").mkdir(), ["--synthetic", "20x30", "--split-file", "split"],
     "split is a folder, not a file"),
    (lambda d: _latin1_split(d / "s.txt"), ["--synthetic", "4x30", "--split-file", "s.txt"],
     "s.txt is not valid UTF-8 (line 4)"),
    (lambda d: np.save(d / "e.npy", np.zeros((0, 20), np.float32)), ["--input", "e.npy"],
     "e.npy has no rows (shape (0, 20))"),
    (lambda d: (d / "g.npy").write_text("1,2,3\n"), ["--input", "g.npy"],
     "g.npy is not a .npy file (no NumPy header): save a .npy matrix with numpy.save"),
    (lambda d: (d / "s.npy").write_bytes(b"train"), ["--synthetic", "4x30", "--split-file",
                                                     "s.npy"], "s.npy is not a .npy file"),
    (lambda d: np.save(d / "c.npy", np.full((30, 20), 3, np.float32)), ["--input", "c.npy"],
     "every feature has the same scaled values in the fitted rows"),
    (lambda d: None, ["--synthetic", "20x30", "--seed", "-1"],
     "argument --seed: expected a whole number from 0 to 4294967295, got '-1'"),
])
def test_bad_images_inputs_exit_2_in_one_line(tmp_path, capsys, monkeypatch, make, argv,
                                               message):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    assert main(["images", *argv, "--out", "o.zarr", "--method", "pca", "--quiet"]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "o.zarr").exists()
    assert not store.partial_path(tmp_path / "o.zarr").exists()


def test_a_store_given_as_the_images_input_is_named_a_group(tmp_path, capsys):
    import zarr

    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.create_array("embeddings", shape=(4, 6), dtype="float32")
    group.create_array("images", shape=(4, 2, 2), dtype="float32")
    assert main(["images", "--input", str(tmp_path / "s.zarr"), "--out",
                 str(tmp_path / "o.zarr"), "--quiet"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "is a zarr group, not an array" in err and "fastimg relayout" in err
    assert f"{tmp_path / 's.zarr'}/embeddings" in err


def test_an_images_build_that_fails_at_raster_lists_its_input_stage_done(rng, tmp_path,
                                                                         capsys, monkeypatch):
    import fastimg.raster

    def disk_full(*args, **kwargs):  # (a NaN outside the fitted rows is refused before)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fastimg.raster, "rasterize_to_array", disk_full)
    np.save(tmp_path / "x.npy", rng.random((60, 20)).astype(np.float32))
    out = tmp_path / "o.zarr"
    assert main(["images", "--input", str(tmp_path / "x.npy"), "--fit-rows", "40", "--out",
                 str(out), "--pixels", "8", "--method", "pca", "--quiet"]) == 2
    capsys.readouterr()
    assert main(["info", str(store.partial_path(out))]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"stages done +input, layout\nunfinished +images", listing), listing


def test_images_split_file_and_fit_rows_exclude_each_other(tmp_path, capsys):
    np.save(tmp_path / "split.npy", np.zeros(120, dtype=np.int8))
    code = main(["images", "--synthetic", "120x150", "--split-file", str(tmp_path / "split.npy"),
                 "--fit-rows", "50", "--out", str(tmp_path / "o.zarr"), "--quiet"])
    assert code == 2 and "not both" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("existing", ["metrics.json", "best.pt", "notes.txt"])
def test_train_refuses_an_existing_run_folder_unless_force(tmp_path, capsys, existing):
    run = tmp_path / "run"
    run.mkdir()
    (run / existing).write_text("{}")
    argv = ["train", str(tmp_path / "missing.zarr"), "--out", str(run), "--quiet"]
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert "pass --force" in err and str(run) in err
    # with --force the command goes on (and stops at the next mistake: no store there)
    assert main([*argv, "--force"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "missing.zarr" in err and "--force" not in err, err


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly(monkeypatch, capsys):
    def info_into_a_closed_pipe(args):  # `fastimg info STORE | head -1`
        raise BrokenPipeError(32, "Broken pipe")

    silenced = []
    monkeypatch.setattr(describe, "cmd_info", info_into_a_closed_pipe)
    monkeypatch.setattr(app, "_silence_stdout", lambda: silenced.append(True))
    assert main(["info", "x.zarr"]) == 141
    assert silenced and capsys.readouterr().err == ""


def test_config_fields_in_messages_are_named_by_their_flags():
    flags = cli.flags_of(cli.build_parser(), "build-dataset")
    assert report.as_flag("chunk_rows must be a whole number >= 1, got 0", flags) == \
        "--chunk-rows must be a whole number >= 1, got 0"
    assert report.as_flag("token_budget (8) must be at least max_length (64)", flags) == \
        "--token-budget (8) must be at least --max-length (64)"
    kept = ("an unfinished build with other settings is at /tmp/max_length.zarr.partial "
            "(encoder.max_length: 96 -> 64); not_a_flag stays; label column 'label_column' has "
            "one class; No such file: 'text_column.csv'; {\"max_length\": 96}; "
            "chunk_rows.zarr exists; runs/chunk_rows/x")
    assert report.as_flag(kept, flags) == kept
    assert report.as_flag("limit 90 keeps a single class; raise it", flags) == \
        "--limit 90 keeps a single class; raise it"
    assert report.as_flag("seed the rows", flags) == "seed the rows"  # no value: prose
    assert report.as_flag("test_fraction 0.1 ignored", flags) == "--test-fraction 0.1 ignored"
    # the library's keyword and value: the flag and its value (it said layers='author' takes)
    assert report.as_flag("layers='author' takes hidden_states[6:12]", flags) == \
        "--layers author takes hidden_states[6:12]"
    assert report.as_flag("mode='x' is not a field", flags) == "mode='x' is not a field"
    # ... anywhere in the message, quoted or a number; not a value of another form, a field
    # of a dotted name or a quoted one, or a keyword the command has no flag for
    assert report.as_flag("use scaling='norm2' or scaling='minmax', or fit_on='all'", flags) \
        == "use --scaling norm2 or --scaling minmax, or --fit-on all"
    assert report.as_flag("lower it: token_budget=4096", flags) == "lower it: --token-budget 4096"
    # a list of differences names each setting's flag (it named those with an underscore)
    assert report.as_flag("layers='1,2,99': index 99 is out of range", flags) == \
        "--layers 1,2,99: index 99 is out of range"
    # an operating system's error opens with its path: a file named like a flag keeps it
    assert report.as_flag("model: No such file or directory", flags) == \
        "model: No such file or directory"
    assert report.as_flag("use a larger limit, or fit_on='all'", flags) == \
        "use a larger --limit, or --fit-on all"
    train = cli.flags_of(cli.build_parser(), "train")
    assert report.as_flag("a run with other settings (epochs: 30 -> 31; seed: 0 -> 1; "
                          "encoder.pooling: 'cls' -> 'mean')", train) == \
        "a run with other settings (--epochs: 30 -> 31; --seed: 0 -> 1; " \
        "encoder.pooling: 'cls' -> 'mean')"
    # an on/off pair is named by its on flag: the pixel branch turned off read as
    # "--no-pixel-branch: true -> false"
    assert train["pixel_branch"] == "--pixel-branch"
    advice = ("load_run(..., model=FOLDER); config.seed=3; 'seed=3'; weights=None; "
              "mode='x'; scaling=norm2")
    assert report.as_flag(advice, flags) == advice
    # a path that opens a message and starts like a field and a number is the path
    for path in ("dataset 2024.csv", "split 2/labels.txt", "input 1.jsonl.gz"):
        message = f"{path} is not valid UTF-8: bad byte 0xff at line 3"
        assert report.as_flag(message, flags) == message


def test_logged_warnings_name_flags_not_fields():
    import logging

    flags = cli.flags_of(cli.build_parser(), "build-dataset")
    names = report.FlagNames(flags)

    def shown(name, level, msg, *args):
        record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
        assert names.filter(record)
        return record.getMessage()

    assert shown("fastimg.corpus", logging.WARNING, "test_fraction %s ignored: the corpus has "
                 "test rows", 0.1) == "--test-fraction 0.1 ignored: the corpus has test rows"
    assert shown("fastimg.corpus", logging.WARNING, "limit %d is larger than the %d rows",
                 900, 80) == "--limit 900 is larger than the 80 rows"
    # info lines and other libraries' warnings are left as they are
    assert shown("fastimg.corpus", logging.INFO, "test_fraction %s", 0.1) == "test_fraction 0.1"
    assert shown("distributed", logging.WARNING, "max_length %d", 3) == "max_length 3"


def test_revision_with_a_local_model_folder_is_refused(tmp_path, tiny_bert_dir, capsys):
    from conftest import tiny_reviews, write_csv

    csv, out = write_csv(tmp_path / "r.csv", tiny_reviews(20), ("id", "text", "label")), \
        tmp_path / "s.zarr"
    assert main(["build-dataset", "--input", str(csv), "--out", str(out), "--model",
                 str(tiny_bert_dir), "--revision", "main", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--revision main picks a commit of a hub model" in err
    assert len(err.strip().splitlines()) == 1 and not store.partial_path(out).exists()


def test_an_interrupted_images_build_is_kept_and_says_so(tmp_path, capsys, monkeypatch):
    out = tmp_path / "i.zarr"
    argv = ["images", "--synthetic", "100x120", "--out", str(out), "--pixels", "8", "--method",
            "pca", "--quiet"]
    real_fit = DeepInsightLayout.fit

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DeepInsightLayout, "fit", stop)
    assert main(argv) == 130
    assert "interrupted (the unfinished build is kept: rerun to resume)" in \
        one_line(capsys.readouterr().err)
    assert store.partial_path(out).exists() and not out.exists()
    monkeypatch.setattr(DeepInsightLayout, "fit", real_fit)
    assert main(argv) == 0 and store.is_complete(out)


def test_an_interrupt_is_one_line_without_asyncio_s_pending_writes(tmp_path, capsys, caplog,
                                                                    monkeypatch, request):
    """A Ctrl-C while zarr wrote images printed, under "interrupted ...", asyncio's "ERROR
    asyncio: Task was destroyed but it is pending!" and the task's repr for each write left
    pending on zarr's event loop (destroyed at exit), now and then."""
    import asyncio
    import gc
    import logging

    import fastimg.stages

    asyncio_logger = logging.getLogger("asyncio")
    request.addfinalizer(functools.partial(asyncio_logger.setLevel, asyncio_logger.level))
    loop, pending = asyncio.new_event_loop(), []

    async def write():
        await asyncio.sleep(3600)

    def stop(*args, **kwargs):  # a write in flight on an event loop, as zarr's are
        pending.append(loop.create_task(write()))
        loop.run_until_complete(asyncio.sleep(0))
        raise KeyboardInterrupt

    monkeypatch.setattr(fastimg.stages, "run_images", stop)
    out = tmp_path / "i.zarr"
    assert main(["images", "--synthetic", "100x120", "--out", str(out), "--pixels", "8",
                 "--method", "pca", "--quiet"]) == 130
    loop.close()
    pending.clear()  # what exit does to zarr's loop
    gc.collect()
    assert "interrupted" in one_line(capsys.readouterr().err)
    assert "Task was destroyed" not in caplog.text


def test_an_error_raised_while_a_ctrl_c_is_handled_is_the_interrupt(tmp_path, capsys,
                                                                     monkeypatch):
    """A Ctrl-C inside torch.save (a train saving its state after an epoch) came out of
    torch's zip writer as "RuntimeError: [enforce fail at inline_container.cc:672] unexpected
    pos", reported as an internal error (exit 1): it is the interrupt (exit 130)."""
    def stop(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    monkeypatch.setattr(DeepInsightLayout, "fit", stop)
    out = tmp_path / "i.zarr"
    argv = ["images", "--synthetic", "100x120", "--out", str(out), "--pixels", "8", "--method",
            "pca", "--quiet"]
    assert main(argv) == 130
    assert one_line(capsys.readouterr().err).startswith("fastimg images: interrupted")


def test_python_dash_m_fastimg_is_the_command():
    done = subprocess.run([sys.executable, "-m", "fastimg", "info", "no-such.zarr"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("fastimg info: error: no-such.zarr")


def test_a_ctrl_c_after_the_command_ended_keeps_its_exit_code(tmp_path):
    """A Ctrl-C in the second Python took to shut down after a train (its summary printed,
    its files written) killed the process by SIGINT: a finished job counted as failed. Here
    the signal comes while the exit handlers run: it is ignored, and they all run."""
    script = tmp_path / "late.py"
    script.write_text(textwrap.dedent(f"""
        import atexit, os, signal, time
        from fastimg.cli import app

        def command():
            atexit.register(lambda: open({str(tmp_path / "cleaned")!r}, "w").close())
            atexit.register(late)  # runs first
            print("summary", flush=True)
            return 3

        def late():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("after the signals", flush=True)

        app.main = command
        app.run()
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (3, "summary\nafter the signals\n", "")
    assert (tmp_path / "cleaned").exists()


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 1.5, True])
def test_library_configs_refuse_a_seed_no_seeded_library_takes(seed):
    from fastimg.corpus import CorpusConfig
    from fastimg.train import TrainConfig

    with pytest.raises(ValueError, match="random_state must be a whole number from 0 to"):
        LayoutConfig(random_state=seed)
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to"):
        TrainConfig(seed=seed)
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to"):
        CorpusConfig(dataset="imdb", seed=seed)


def test_an_interrupt_before_anything_is_written_does_not_promise_a_resume(tmp_path, capsys,
                                                                            monkeypatch):
    import fastimg.images

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastimg.images, "synthetic_matrix", stop)
    out = tmp_path / "i.zarr"
    assert main(["images", "--synthetic", "100x120", "--out", str(out), "--quiet"]) == 130
    err = one_line(capsys.readouterr().err)
    assert err == "fastimg images: interrupted" and not store.partial_path(out).exists()


@pytest.mark.parametrize("model, message", [
    ("weights only", "has no tokenizer vocabulary"),
    ("gpt2", "is a decoder (gpt2)"),
])
def test_a_model_folder_fastimg_cannot_use_is_refused_before_any_work(
        tiny_bert_dir, tmp_path, capsys, model, message):
    import shutil

    import transformers
    from conftest import tiny_reviews, write_csv

    folder = tmp_path / "model"
    folder.mkdir()
    if model == "gpt2":
        transformers.GPT2Config(n_embd=32, n_layer=6, n_head=4).save_pretrained(folder)
    else:
        for name in ("config.json", "model.safetensors"):
            shutil.copy(tiny_bert_dir / name, folder / name)
    data = write_csv(tmp_path / "c.csv", tiny_reviews(20))
    out = tmp_path / "o.zarr"
    assert main(["build-dataset", "--input", str(data), "--out", str(out), "--model",
                 str(folder), "--max-length", "16", "--quiet"]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not out.exists() and not store.partial_path(out).exists()


@pytest.mark.parametrize("argv,option", [
    (["images", "--synthetic", "300x128", "--out", ""], "--out"),
    (["images", "--input", "", "--out", "o.zarr"], "--input"),
    (["build-dataset", "--input", "c.csv", "--out", ""], "--out"),
    (["relayout", "", "--out", "o.zarr"], "src"),
    (["info", ""], "store"),
    (["show", "", "--out", "s.png"], "store"),
    (["train", "s.zarr", "--out", "r", "--weights", ""], "--weights"),
    (["predict", "", "--input", "t.csv", "--out", "p.csv"], "run_dir"),
    (["explain", "r", "--out", ""], "--out"),
])
def test_an_empty_path_is_refused_by_its_option(tmp_path, monkeypatch, capsys, argv, option):
    # Path("") is ".": an unset shell variable read, wrote into or named the current folder
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert f"argument {option}: expected a path, got an empty string" in err
    assert list(tmp_path.iterdir()) == []


def test_explain_store_keeps_a_url(monkeypatch):
    # --store was parsed as a Path, which folds s3://bucket/x.zarr into the local s3:/bucket/x.zarr
    from fastimg.train import explain as explain_module

    seen = {}

    def fake_explain(run_dir, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(explain_module, "explain", fake_explain)
    assert main(["explain", "r", "--store", "s3://bucket/x.zarr", "--out", "e"]) == 2
    assert str(seen["store"]) == "s3://bucket/x.zarr"


@pytest.mark.parametrize("argv,message", [
    (["info", "."], ". is not a fastimg store"),
    (["info", "/"], "/ is the root folder, not a store"),
    (["images", "--synthetic", "300x128", "--out", "."], ". exists and is not a fastimg store"),
])
def test_a_folder_spelt_without_a_name_is_named_as_given(tmp_path, monkeypatch, capsys, argv,
                                                          message):
    # "." and "/" have no name to put ".partial" on: Path.with_name raised "PosixPath('.')
    # has an empty name"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert main(argv) == 2
    assert message in one_line(capsys.readouterr().err)


def _torch_out_of_memory():
    torch = pytest.importorskip("torch")
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.mark.parametrize("error", [
    lambda: MemoryError("Unable to allocate 149. GiB for an array with shape (2, 100000, "
                        "100000) and data type int64"),
    lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                         "can't allocate memory: you tried to allocate 30000000000 bytes."),
    _torch_out_of_memory,
])
def test_running_out_of_memory_is_a_setting_too_large_not_a_bug(monkeypatch, capsys, error):
    # images --pixels 100000 and train --upsample 1000 said "internal error (a bug, please
    # report it)"
    exc = error()

    def boom(args):
        raise exc

    monkeypatch.setattr(runs, "cmd_train", boom)
    assert main(["train", "s.zarr", "--out", "r"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("fastimg train: error: out of memory: ") and "--batch-size" in err
    assert "bug" not in err


def test_a_runtime_error_that_is_not_memory_is_still_a_bug(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(runs, "cmd_train", boom)
    assert main(["train", "s.zarr", "--out", "r"]) == 1
    assert "internal error (a bug" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [
    ["images", "--synthetic", "300x128", "--out", "notes.txt/x.zarr"],
    ["build-dataset", "--input", "c.csv", "--out", "notes.txt/deeper/x.zarr", "--quiet"],
    ["train", "s.zarr", "--out", "notes.txt/run"],
])
def test_an_out_under_a_file_names_the_file(tmp_path, monkeypatch, capsys, argv):
    # mkdir's "[Errno 17] File exists: '/abs/notes.txt'" named neither --out nor what to do
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "c.csv").write_text("text,label\na,0\nb,1\nc,0\nd,1\n")
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert "notes.txt is a file, not a folder" in err and "Errno" not in err


@pytest.mark.parametrize("argv,message", [
    (["predict", "notes.txt", "--input", "t.csv", "--out", "p.csv"],
     "run folder notes.txt is a file"),
    (["explain", "notes.txt", "--out", "x"], "run folder notes.txt is a file"),
    (["show", "s.zarr", "--out", "notes.txt/s.png"],
     "notes.txt is a file, not a folder (to write notes.txt/s.png into)"),
])
def test_a_file_where_a_folder_belongs_is_not_called_missing(tmp_path, monkeypatch, capsys,
                                                             argv, message):
    # these said "run folder notes.txt does not exist" and "folder notes.txt does not exist"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert main(argv) == 2
    assert message in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [
    ["relayout", "s3://bucket/a.zarr", "--out", "b.zarr"],
    ["relayout", "a.zarr", "--out", "s3://bucket/b.zarr"],
    ["build-dataset", "--dataset", "imdb", "--out", "s3://bucket/b.zarr", "--reuse-from",
     "a.zarr"],
    ["build-dataset", "--dataset", "imdb", "--out", "b.zarr", "--reuse-from",
     "s3://bucket/a.zarr"],
])
def test_storage_options_used_by_one_url_are_not_said_ignored(monkeypatch, caplog, argv):
    """A command with a store URL and a local store (relayout from object storage to a local
    folder, --reuse-from a local store into s3://) warned that the --storage-option it used
    was ignored for the local path."""
    import fastimg.dataset

    for name in ("relayout", "build_dataset"):
        monkeypatch.setattr(fastimg.dataset, name, lambda *args, **kwargs: {})
    monkeypatch.setattr(build, "print_dataset_summary", lambda *args: None)
    assert main([*argv, "--storage-option", "k=v"]) == 0
    assert "--storage-option" not in caplog.text


def test_relayout_warns_once_per_local_path_given_storage_options(monkeypatch, caplog):
    # --out's warning came twice: its location was resolved again for the summary
    import fastimg.dataset

    monkeypatch.setattr(fastimg.dataset, "relayout", lambda *args, **kwargs: {})
    monkeypatch.setattr(build, "print_dataset_summary", lambda *args: None)
    assert main(["relayout", "a.zarr", "--out", "b.zarr", "--storage-option", "k=v"]) == 0
    err = caplog.text
    assert err.count("ignored for the local path b.zarr") == 1
    assert err.count("ignored for the local path a.zarr") == 1


def test_an_operating_system_error_reads_as_path_and_reason(capsys):
    """Python's ``[Errno 30] Read-only file system: '/mnt/ro/show.png'`` was printed as it was;
    errors that fastimg words itself (no errno) keep their words."""
    import errno

    for exc, words in (
            (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/show.png"),
             "/mnt/ro/show.png: Read-only file system"),
            (PermissionError(errno.EACCES, "Permission denied", "/a.zarr", None, "/b.zarr"),
             "/a.zarr: Permission denied (and /b.zarr)"),
            (FileNotFoundError("the bucket b does not exist"), "the bucket b does not exist")):
        assert cli.report_error("show", exc) == 2
        assert capsys.readouterr().err == f"fastimg show: error: {words}\n"


@pytest.mark.parametrize("argv,what", [
    (["predict", "run", "--input", "t.csv", "--out", "ro/p.csv"], "--out ro/p.csv"),
    (["show", "s.zarr", "--out", "ro/s.png"], "ro/s.png"),
    (["train", "s.zarr", "--out", "ro/deeper/run"], "the run folder ro/deeper/run"),
    (["explain", "run", "--out", "ro/x"], "features.csv and importance.png into ro/x"),
])
def test_an_out_in_a_read_only_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys,
                                                                 argv, what):
    """These ran the whole command (the encoding, training, attributions) and then failed
    on ``[Errno 30] Read-only file system`` naming a temporary or lock file."""
    import os

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        not (mode & os.W_OK and Path(path).resolve() == tmp_path / "ro")
        and real_access(path, mode)))
    assert main(argv) == 2
    assert one_line(capsys.readouterr().err).endswith(
        f"error: cannot write {what}: ro is not writable (a read-only file system, or no "
        f"permission)")
    # an existing file or folder is written where it is (its own permission is what counts),
    # but a file replaced by one written beside it needs its folder
    from fastimg._validation import check_can_write

    (tmp_path / "ro" / "own").mkdir()
    (tmp_path / "ro" / "p.csv").write_text("x")
    check_can_write(tmp_path / "ro" / "own", "x")
    check_can_write(tmp_path / "ro" / "p.csv", "x")
    with pytest.raises(PermissionError, match="ro is not writable"):
        check_can_write(tmp_path / "ro" / "p.csv", "x", replaced=True)


@pytest.mark.parametrize("chained", [False, True])
def test_a_full_disk_is_one_line_that_says_what_to_do(tmp_path, capsys, monkeypatch, chained):
    """A disk filling up mid-build printed "error: [Errno 28] No space left on device" (or,
    wrapped by another library, an internal error): what happened, and that a rerun resumes."""
    import errno

    import fastimg.dataset

    out = tmp_path / "d.zarr"

    def fill_the_disk(*args, **kwargs):
        store.partial_path(out).mkdir()  # the unfinished build a rerun resumes
        full = OSError(errno.ENOSPC, "No space left on device")
        if not chained:
            raise full
        raise RuntimeError("a write failed") from full

    monkeypatch.setattr(fastimg.dataset, "build_dataset", fill_the_disk)
    code = main(["build-dataset", "--input", str(tmp_path / "c.csv"), "--out", str(out),
                 "--quiet"])
    assert code == 2
    assert one_line(capsys.readouterr().err) == (
        "fastimg build-dataset: error: no space left on the device: free some space, then "
        "rerun to resume (the unfinished build is kept)")


def test_the_library_advises_an_output_path_and_the_command_line_its_out_flag(tmp_path):
    from fastimg.store import StoreError
    from fastimg.store.writer import check_writable

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(StoreError) as refused:
        check_writable(tmp_path / "notes", force=True)
    message = str(refused.value)
    assert "choose another output path" in message and "--out" not in message
    flags = cli.flags_of(cli.build_parser(), "build-dataset")
    assert report.as_flag(message, flags).endswith("is not a fastimg store; choose another --out")
