"""fastimg build-dataset encoder options: a precision the device does not run, or a token budget
below one text, is one line, exit 2."""
import pytest

from fastimg.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--precision", "int8", "--device", "cuda"], "precision 'int8' runs on cpu only, not on cuda"),
    (["--precision", "fp16", "--device", "cpu"], "precision 'fp16' runs on cuda only, not on cpu"),
    (["--precision", "bf16", "--device", "cpu"], "precision 'bf16' runs on cuda only, not on cpu"),
    (["--token-budget", "100"], "--token-budget (100) must be at least --max-length (512)"),
    (["--precision", "int8", "--int8-engine", "onnxruntime", "--batching", "packed"],
     "int8 engine 'onnxruntime' needs batching 'padded' (not 'packed')"),
    (["--precision", "fp32", "--int8-engine", "torch"],
     "--int8-engine 'torch' applies to precision 'int8'; precision is 'fp32'"),
    (["--int8-engine", "onnxruntime"],
     "--int8-engine 'onnxruntime' applies to precision 'int8'; precision is 'auto'"),
])
def test_bad_precision_device_is_one_line_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "x.zarr"
    code = main(["build-dataset", "--dataset", "imdb", "--limit", "10", "--out", str(out),
                 "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_precision_is_a_usage_error(tmp_path, capsys):
    code = main(["build-dataset", "--dataset", "imdb", "--out", str(tmp_path / "x.zarr"),
                 "--precision", "int4"])
    err = capsys.readouterr().err
    assert code == 2 and "invalid choice: 'int4'" in err and len(err.strip().splitlines()) == 1
