"""Accuracy of the image route against the linear probes, honestly evaluated.

Every configuration is trained on the same store; the best epoch (and any early stop) is
chosen on the validation split and the figure reported is the test split's, which chose
nothing. Beside them, the two linear probes (logistic regression, ``C`` chosen on
validation): on the stored embeddings (the baseline the image route should match) and on
the image pixels standardised per pixel (what a linear model gets from the images).

The store: ``--store PATH`` (built there first when it does not exist: IMDB, ``--limit``
reviews, MiniLM, 256 tokens, 50 x 50; the 25k/25k IMDB split gives a test split, validation
is carved from train); without it, ``benchmarks/imdb-LIMIT.zarr`` in fastimg's cache
(``$XDG_CACHE_HOME/fastimg``), built by the first run and reused by the next. ``--quick``
trains on a tiny synthetic store instead (CI: no IMDB, no encoder), so the suite cannot rot.

ImageNet weights are not downloadable on every machine: the extractors use random weights
(``weights=None``) unless ``--weights DEFAULT`` is given.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._harness import BenchmarkError, machine, step
from benchmarks.encode import use_imdb

logger = logging.getLogger("benchmarks.accuracy")

#: name -> TrainConfig settings beside the shared ones. "ours", "paper" and "fused" are the
#: default set; the others are the levers measured for the default preset (--configs all).
CONFIGS = {
    "ours": {},
    "paper": {"preset": "paper"},
    "fused": {"fuse_embedding": True},
    "ours-nopool-unfreeze-all": {"cut": "nopool", "unfreeze_fraction": 1.0},
    "ours-nopool": {"cut": "nopool", "unfreeze_fraction": 0.0},
    "fused-nopool": {"cut": "nopool", "unfreeze_fraction": 0.0, "fuse_embedding": True},
    "ours-nopool-lr3e-4": {"cut": "nopool", "unfreeze_fraction": 0.0, "lr_head": 3e-4,
                           "lr_classifier": 3e-4},
    "ours-paper-cut": {"cut": "paper", "unfreeze_fraction": 0.0},
    "fused-paper-cut": {"cut": "paper", "unfreeze_fraction": 0.0, "fuse_embedding": True},
    "ours-constant-lr": {"cut": "paper", "unfreeze_fraction": 0.0, "schedule": "none",
                         "optimizer": "adam", "weight_decay": 0.0, "patience": 0, "epochs": 20},
    "ours-plateau": {"cut": "paper", "unfreeze_fraction": 0.0, "schedule": "plateau"},
    "ours-image-norm": {"cut": "paper", "unfreeze_fraction": 0.0, "normalize": "image"},
    "ours-paper-cut-upsample3": {"cut": "paper", "unfreeze_fraction": 0.0, "upsample": 3},
    "ours-unfreeze-all": {"cut": "paper", "unfreeze_fraction": 1.0},
    "paper-upsample3": {"preset": "paper", "upsample": 3},
    "ours-no-pixel-branch": {"pixel_branch": False},
    "fused-no-pixel-branch": {"pixel_branch": False, "fuse_embedding": True},
    "ours-nopool-pixel-branch": {"cut": "nopool"},
    "ours-pixel-wide": {"pixel_hidden": 0},
    "ours-dropout05": {"dropout": 0.5},
    "ours-wd1e-2": {"weight_decay": 1e-2},
    "fused-wd1e-2": {"weight_decay": 1e-2, "fuse_embedding": True},
    "ours-wd3e-1": {"weight_decay": 0.3},
}
DEFAULT_CONFIGS = ("ours", "paper", "fused")


def _quick_store(path: Path, n_rows: int = 160, grid=(24, 24), seed: int = 0) -> None:
    """Two classes whose images differ by a faint blob and whose embeddings differ a little."""
    from fastimg import store

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_rows)
    images = 0.5 * rng.random((n_rows, *grid))
    images[y == 1, :8, :8] += 0.3
    embeddings = rng.standard_normal((n_rows, 16)) + np.outer(2 * y - 1, np.ones(16)) * 0.5
    split = np.zeros(n_rows, np.int8)
    split[int(n_rows * 0.5):int(n_rows * 0.75)] = 1
    split[int(n_rows * 0.75):] = 2
    store.write_store(path, {store.IMAGES: images.astype(np.float16),
                             store.LABELS: y.astype(np.int64), store.SPLIT: split,
                             store.EMBEDDINGS: embeddings.astype(np.float16)},
                      {"kind": "dataset", "corpus": {"class_values": None},
                       "summary": {"class_names": ["neg", "pos"], "image_shape": list(grid)}},
                      force=True)


def default_store(limit: int) -> Path:
    """Where the suite builds its IMDB store without ``--store``: fastimg's cache, one store per
    ``limit`` (it wrote ``imdb4k.zarr`` into the working folder, the same name for 4,000 and
    4,500 reviews)."""
    from fastimg.corpus.imdb import cache_dir

    return cache_dir() / "benchmarks" / f"imdb-{limit}.zarr"


def _imdb_store(path: Path, limit: int) -> None:
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import build_dataset
    from fastimg.embed import EncoderConfig
    from fastimg.layout import LayoutConfig

    use_imdb()
    build_dataset(path, CorpusConfig(dataset="imdb", limit=limit, seed=0),
                  EncoderConfig(model="minilm", layers="last6", max_length=256),
                  LayoutConfig(grid=(50, 50), random_state=0), progress=False)


def run(quick: bool = False, json_path: str | None = None, store: str | None = None,
        limit: int = 4000, configs: str | None = None, weights: str | None = None,
        extractors: str = "alexnet", device: str = "auto", probes: bool = True,
        epochs: int | None = None, seeds: str = "0") -> dict:
    """Train every configuration of ``configs`` with every extractor of ``extractors`` (comma
    separated) and seed of ``seeds``; ``epochs`` caps the epochs of every configuration but
    the paper preset's (15, the paper's)."""
    from fastimg.train import TrainConfig, fit, linear_probe
    from fastimg.train.data import StoreData

    names = (list(CONFIGS) if configs == "all" else
             configs.split(",") if configs else list(DEFAULT_CONFIGS))
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise BenchmarkError(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    from fastimg.train import EXTRACTORS

    extractors = extractors.split(",")
    unknown = [e for e in extractors if e not in EXTRACTORS]
    if unknown:
        raise BenchmarkError(f"unknown extractor(s) {unknown}; choose from {sorted(EXTRACTORS)}")
    with tempfile.TemporaryDirectory(prefix="fastimg-accuracy-") as tmp:
        if quick:
            path = Path(tmp) / "quick.zarr"
            _quick_store(path)
            shared = {"epochs": 2, "batch_size": 32, "head_channels": (8, 8, 8, 8),
                      "hidden": (16, 8), "embedding_hidden": 16}
        else:
            path = Path(store) if store else default_store(limit)
            if not path.exists():
                step(f"building {path} (IMDB, {limit} reviews, MiniLM, 256 tokens)")
                _imdb_store(path, limit)
            else:
                step(f"training on {path}")
            shared = {}
        data = StoreData(path)
        rows = {s: int(data.rows(s).size) for s in ("train", "val", "test")}
        probes = {f: linear_probe(data, features=f) if probes else None
                  for f in ("embeddings", "pixels")}
        for name, probe in probes.items():
            if probe:
                print(f"linear probe on the {name}: C={probe['C']:g}, val "
                      f"{_fmt(probe['val_accuracy'])}, test {_fmt(probe['test_accuracy'])}",
                      flush=True)
        out = {"suite": "accuracy", "store": str(path) if not quick else "synthetic (quick)",
               "quick": quick, "extractors": extractors, "weights": weights,
               "epochs": epochs, "rows": rows, "configs": [],
               "probe_embeddings": probes["embeddings"], "probe_pixels": probes["pixels"],
               "machine": machine()}
        results = out["configs"]
        runs = [(n, e, int(s)) for e in extractors for n in names
                for s in seeds.split(",")]
        for name, extractor, seed in runs:
            settings = {"extractor": extractor, "weights": weights, "loader": "torch",
                        "device": device, "probe": False, "progress": False,
                        "seed": seed, **shared, **CONFIGS[name]}
            if epochs and CONFIGS[name].get("preset") != "paper":
                settings["epochs"] = epochs
            config = TrainConfig(**settings)
            start = time.perf_counter()
            result = fit(path, config)
            metrics = result.metrics
            results.append({
                "name": name, "extractor": extractor, "seed": seed,
                "settings": {k: v for k, v in CONFIGS[name].items()},
                "config": config.to_dict(), "test_accuracy": result.test_accuracy,
                "val_accuracy": result.val_accuracy, "best_epoch": result.best_epoch,
                "epochs_run": metrics["epochs_run"], "stopped_early": metrics["stopped_early"],
                "epoch_s": metrics["timings"]["epoch_s"],
                "cache_s": metrics["timings"].get("cache_s", 0.0),
                "total_s": time.perf_counter() - start,
                "feature_shape": metrics["extractor"]["feature_shape"],
                "val_curve": [round(e["val_accuracy"], 4) for e in metrics["epochs"]],
                "train_curve": [round(e["train_accuracy"], 4) for e in metrics["epochs"]]})
            print(_row(results[-1]), flush=True)
            if json_path:  # after every configuration: a long run killed keeps what it has
                Path(json_path).write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(table(out))
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


def _fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def _row(r: dict) -> str:
    return (f"| {r['name']} | {r['extractor']} | {r['seed']} | {r['best_epoch']} | "
            f"{r['epochs_run']} | "
            f"{_fmt(r['val_accuracy'])} | {_fmt(r['test_accuracy'])} | "
            f"{r['epoch_s']:.1f} |")


def table(result: dict) -> str:
    """The markdown table of a result (configurations, then the probes)."""
    lines = ["| config | extractor | seed | best epoch | epochs run | val (selection) | test "
             "| s/epoch |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [_row(r) for r in result["configs"]]
    for name in ("embeddings", "pixels"):
        probe = result[f"probe_{name}"]
        if probe:
            lines.append(f"| linear probe on the {name} (C={probe['C']:g}) | - | - | - | - | "
                         f"{_fmt(probe['val_accuracy'])} | {_fmt(probe['test_accuracy'])} | - |")
    return "\n".join(lines)
