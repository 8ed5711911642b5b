"""Every benchmark suite runs end to end at its --quick size and writes the agreed JSON."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("pyDeepInsight")


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["raster", "layout", "encode", "build", "train"])
def test_suite_quick(tmp_path, suite):
    path = tmp_path / f"{suite}.json"
    subprocess.run([sys.executable, "-m", "benchmarks", suite, "--quick", "--json", str(path)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    result = json.loads(path.read_text())
    for key in ("suite", "baseline", "fastimg_s", "baseline_s", "ratio", "machine"):
        assert key in result
    assert result["suite"] == suite and result["fastimg_s"] > 0
    assert result["ratio"] == pytest.approx(result["baseline_s"] / result["fastimg_s"])
    if suite == "raster":
        assert result["max_abs_diff"] <= 1e-5
    if suite == "encode":
        for key in ("fastimg_docs_per_s", "baseline_docs_per_s", "fastimg_tokens_per_s",
                    "fastimg_gflops", "matmul_gflops", "max_abs_diff"):
            assert result[key] > 0
        assert result["max_abs_diff"] < 0.05 * result["max_abs_value"]
        from fastimg.embed.precision import available

        section = result["precision_section"]
        assert section["precisions"] == available(result["device"])  # every one, side by side
        assert section["fp32"]["speedup_vs_fp32"] == 1.0
        assert section["fp32"]["max_abs_diff_vs_fp32"] == 0.0
        probe = section["probe"]
        assert probe["rows"]["test"] > 0 and probe["C"] in (0.01, 0.1, 1.0)
        for name in section["precisions"][1:]:
            low = section[name]
            assert low["docs_per_s"] > 0 and low["tokens_per_s"] > 0
            assert 0 < low["mean_abs_diff_vs_fp32"] <= low["max_abs_diff_vs_fp32"]
            assert low["max_abs_diff_vs_fp32"] < 0.1 * section["max_abs_value"]
            assert 0 <= probe[name]["test_accuracy"] <= 1
    if suite == "build":
        stages = ("encode_s", "layout_s", "raster_s")
        assert all(result["fastimg_stages_s"][k] > 0 and result["baseline_stages_s"][k] > 0
                   for k in stages)
        assert 0 < result["fastimg_share_not_encoding"] < 1
    if suite == "train":
        for key in ("torch_cold_images_per_s", "torch_warm_images_per_s", "png_pil_images_per_s",
                    "epoch_cached_s", "epoch_recomputed_s", "cache_build_s"):
            assert result[key] > 0
        assert result["epoch_ratio"] == pytest.approx(
            result["epoch_recomputed_s"] / result["epoch_cached_s"])
