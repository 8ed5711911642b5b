"""Every benchmark suite runs end to end at its --quick size and writes the agreed JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NEEDS_IMDB_REASON, shared_imdb

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("pyDeepInsight")
#: suites that read IMDB reviews (the others make their data)
IMDB_SUITES = ("encode", "build", "reuse")
#: suites that run for minutes at full size: each says on stderr what it starts
LONG_SUITES = ("layout", "encode", "build", "reuse", "scale")


def progress_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("-- ")]


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["raster", "layout", "encode", "build", "reuse", "train"])
def test_suite_quick(tmp_path, suite):
    imdb = shared_imdb()
    if suite in IMDB_SUITES and imdb is None:
        pytest.skip(NEEDS_IMDB_REASON)
    path = tmp_path / f"{suite}.json"
    env = {**os.environ, **({"FASTIMG_DATA": str(imdb)} if imdb else {})}
    # the timeout only catches a hang: on a shared 2-core machine a quick suite took over 300 s
    done = subprocess.run([sys.executable, "-m", "benchmarks", suite, "--quick", "--json",
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(path.read_text())
    for key in ("suite", "baseline", "fastimg_s", "baseline_s", "ratio", "machine"):
        assert key in result
    assert result["suite"] == suite and result["fastimg_s"] > 0
    assert result["ratio"] == pytest.approx(result["baseline_s"] / result["fastimg_s"])
    if suite in LONG_SUITES:  # silent for minutes at full size before
        assert len(progress_lines(done.stderr)) >= 2, done.stderr[-3000:]
    # columns a machine cannot time are said to be left out (the table looked complete)
    missing = {"raster": ("ratio_cuda", "the cuda columns"),
               "train": ("dali_cold_images_per_s", "the dali columns")}.get(suite)
    if missing and missing[0] not in result:
        assert [line.split(":")[0] for line in result["left_out"]] == [
            f"{missing[1]} left out"]
        assert f"-- {result['left_out'][0]}" in done.stderr.splitlines()
    if suite == "train":  # its fits on a store without a test split warned so, twice
        assert "no test split" not in done.stderr
    if suite == "raster":
        assert result["max_abs_diff"] <= 1e-5
    if suite == "encode":
        for key in ("fastimg_docs_per_s", "baseline_docs_per_s", "fastimg_tokens_per_s",
                    "fastimg_gflops", "matmul_gflops", "max_abs_diff"):
            assert result[key] > 0
        assert result["max_abs_diff"] < 0.05 * result["max_abs_value"]
        from benchmarks.encode import variants
        from fastimg.embed.precision import AUTO, available

        section = result["precision_section"]
        padded = available(result["device"])  # every precision, side by side, then packed
        if "int8" in padded:  # int8 on ONNX Runtime and on torch; packed on torch only
            padded.append("int8 torch")
        assert section["precisions"] == list(variants(result["device"]))
        assert section["precisions"] == padded + [f"{name} packed" for name in padded
                                                  if name != "int8"]
        packed = f"{AUTO[result['device']]} packed"
        assert section["fp32"]["speedup_vs_fp32"] == 1.0
        assert section["fp32"]["max_abs_diff_vs_fp32"] == 0.0
        probe = section["probe"]
        assert probe["rows"]["test"] > 0 and probe["C"] in (0.01, 0.1, 1.0)
        assert probe["precisions"] == padded and probe["resplits"] == 20
        for name in padded[1:]:
            low = section[name]
            assert low["docs_per_s"] > 0 and low["tokens_per_s"] > 0
            assert 0 < low["mean_abs_diff_vs_fp32"] <= low["max_abs_diff_vs_fp32"]
            assert low["max_abs_diff_vs_fp32"] < 0.1 * section["max_abs_value"]
            assert 0 <= probe[name]["test_accuracy"] <= 1
            assert 0 < probe[name]["resplit_accuracy"] <= 1
        # packed batches compute the same embeddings (float16 output: to its rounding)
        assert section[packed]["max_abs_diff_vs_fp32"] <= 1e-2 * section["max_abs_value"]
        for name in (n for n in padded if n != "int8"):  # packing changes the embeddings by
            # rounding only; int8's by as much as int8 is from fp32 (its activation scales are
            # per batch, and batches differ)
            bound = 0.1 if name.startswith("int8") else 1e-2
            assert section[f"{name} packed"]["speedup_vs_padded"] > 0
            assert (section[f"{name} packed"]["max_abs_diff_vs_padded"]
                    <= bound * section["max_abs_value"])
        for name in section["precisions"]:
            assert 0 < section[name]["fraction_of_matmul"] < 5
        if result["device"] == "cpu":  # ONNX Runtime beside them, on the same batches
            ort = ["ort fp32", "ort int8"]
            assert section["onnxruntime"] == ort and probe["onnxruntime"] == ort
            # the exported graph pools the same layers: fp32 agrees to float16 rounding
            assert section[ort[0]]["max_abs_diff_vs_fp32"] <= 1e-2 * section["max_abs_value"]
            low = section[ort[1]]
            assert 0 < low["mean_abs_diff_vs_fp32"] <= low["max_abs_diff_vs_fp32"]
            assert low["max_abs_diff_vs_fp32"] < 0.1 * section["max_abs_value"]
            assert all(0 < probe[name]["resplit_accuracy"] <= 1 for name in ort)
    if suite == "build":
        stages = ("encode_s", "layout_s", "raster_s")
        assert all(result["fastimg_stages_s"][k] > 0 and result["baseline_stages_s"][k] > 0
                   for k in stages)
        assert 0 < result["fastimg_share_not_encoding"] < 1
        # the precision that ran, not the "auto" asked for
        assert result["precision_requested"] == "auto"
        assert result["precision"] == ("fp16" if result["device"] == "cuda" else "fp32")
    if suite == "reuse":
        assert result["relayout_images_equal_rebuild"] is True
        assert "encode_s" in result["first_build_stages_s"]
        assert "encode_s" not in result["rebuild_stages_s"]
        assert "encode_s" not in result["new_val_fraction_stages_s"]
        assert "encode_s" not in result["reuse_from_stages_s"]
    if suite == "train":
        for key in ("torch_cold_images_per_s", "torch_warm_images_per_s", "png_pil_images_per_s",
                    "epoch_cached_s", "epoch_recomputed_s", "cache_build_s"):
            assert result[key] > 0
        assert result["epoch_ratio"] == pytest.approx(
            result["epoch_recomputed_s"] / result["epoch_cached_s"])
        # the split larger than the reader's cache really was larger
        assert result["larger_chunks"] > result["larger_chunks_kept"]
        assert result["larger_ratio"] == pytest.approx(
            result["larger_windowed_images_per_s"] / result["larger_random_images_per_s"])


@pytest.mark.slow
def test_scale_quick(tmp_path):
    """The cluster suite at its --quick size: both builds, the ratio and the per-task overhead."""
    pytest.importorskip("distributed")
    from conftest import shared_imdb

    if shared_imdb() is None:
        pytest.skip("needs ../shared/data/imdb/imdb.csv.gz")
    path = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "scale", "--quick", "--json",
                           str(path)], cwd=ROOT, check=True, capture_output=True, text=True,
                          timeout=600)
    assert len(progress_lines(done.stderr)) >= 2
    # the local cluster's start-up printed some twenty INFO lines of dask's
    assert "INFO:distributed" not in done.stderr, done.stderr[-2000:]
    result = json.loads(path.read_text())
    assert result["suite"] == "scale" and result["fastimg_s"] > 0 and result["baseline_s"] > 0
    assert result["ratio"] == pytest.approx(result["baseline_s"] / result["fastimg_s"])
    assert result["encode_tasks"] == 4 and result["task_seconds_sum"] > 0
    # float16 rounding of the single-threaded workers at most (values are O(1))
    assert result["max_abs_diff_embeddings"] < 0.05


def test_accuracy_suite_quick(tmp_path):
    """The accuracy suite on a tiny synthetic store (no IMDB, no encoder): configurations,
    validation and test figures, both probes, the machine."""
    path = tmp_path / "accuracy.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "accuracy", "--quick", "--json",
                           str(path)], cwd=ROOT, check=True, capture_output=True, text=True,
                          timeout=300)
    result = json.loads(path.read_text())
    assert result["suite"] == "accuracy" and result["quick"] and result["machine"]["cores"]
    assert [c["name"] for c in result["configs"]] == ["ours", "paper", "fused"]
    for config in result["configs"]:
        assert config["extractor"] == "alexnet" and config["seed"] == 0
        assert 0 <= config["val_accuracy"] <= 1 and 0 <= config["test_accuracy"] <= 1
        assert 1 <= config["best_epoch"] <= config["epochs_run"] <= 2
        assert config["epoch_s"] > 0
    assert result["configs"][1]["config"]["lr_head"] == 1e-5  # Table I, alexnet
    assert result["configs"][2]["config"]["fuse_embedding"]
    for name in ("probe_embeddings", "probe_pixels"):
        assert result[name]["test_accuracy"] > 0.5 and result[name]["C"] > 0
    assert "| ours |" in done.stdout and "linear probe on the pixels" in done.stdout
