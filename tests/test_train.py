"""fastimg.train: extractors, loaders, cache, the training loop and its run folder."""
from __future__ import annotations

import json
import os
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from fastimg import cli, store
from fastimg.cli import report
from fastimg.train import EXTRACTORS, TrainConfig, WeightsUnavailableError, build_extractor, fit
from fastimg.train import extractors as extractors_module
from fastimg.train.data import (BatchSource, ChunkedReader, Normaliser, StoreData, epoch_order,
                                make_loader, pixel_stats)
from fastimg.train.head import feature_shape


def write_store(path, *, n_rows=240, grid=(50, 50), class_values=(3, 7), test=True,
                labels=True, seed=0, blob=0.8):
    """A finished store with two classes whose images differ by a bright blob."""
    rng = np.random.default_rng(seed)
    height, width = grid
    y = rng.integers(0, 2, n_rows)
    images = 0.2 * rng.random((n_rows, height, width))
    bh, bw = height // 3, width // 3
    images[y == 0, :bh, :bw] += blob
    images[y == 1, -bh:, -bw:] += blob
    embeddings = rng.standard_normal((n_rows, 24)) + 2.0 * np.outer(2 * y - 1, np.tile([1, -1], 12))
    n_train, n_val = int(n_rows * 0.6), int(n_rows * 0.2)
    split = np.zeros(n_rows, np.int8)
    split[n_train:n_train + n_val] = 1
    split[n_train + n_val:] = 2 if test else 1
    arrays = {store.IMAGES: images.astype(np.float16), store.SPLIT: split,
              store.EMBEDDINGS: embeddings.astype(np.float16),
              store.IDS: np.array([f"r{i}" for i in range(n_rows)])}
    if labels:
        values = np.asarray(class_values if class_values is not None else (0, 1))
        arrays[store.LABELS] = values[y].astype(np.int64)
    attrs = {"summary": {"image_shape": list(grid)}}
    if labels:
        attrs = {"kind": "dataset", "corpus": {"class_values": None if class_values is None
                                                else list(class_values)},
                 "summary": {"class_names": ["neg", "pos"], "image_shape": list(grid)}}
    store.write_store(path, arrays, attrs, chunk_rows=64)
    return y


@pytest.fixture(scope="module")
def blob_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "blobs.zarr"
    y = write_store(path)
    return path, y


FAST = dict(weights=None, epochs=3, batch_size=32, progress=False, loader="torch",
            head_channels=(16, 16, 8, 8), hidden=(32, 16), cut="paper",
            unfreeze_fraction=0.0)


# -- extractors -------------------------------------------------------------------------------

def test_the_layout_of_a_store_written_without_one_is_a_store_error(tmp_path):
    # was KeyError: 'layout', where encoder_config() of such a store is a StoreError
    write_store(tmp_path / "s.zarr", n_rows=20)
    with pytest.raises(store.StoreError, match=r"s\.zarr holds no layout \(written by "
                                               r"write_store without one\)$"):
        store.StoreReader(tmp_path / "s.zarr").layout()


def test_write_store_refuses_bad_input_before_writing_anything(tmp_path):
    # 2-D images: "not enough values to unpack" with the .partial store left behind;
    # chunk_rows=0 was taken
    out = tmp_path / "w.zarr"
    for arrays, kwargs, error, said in (
            ({store.IMAGES: np.zeros((4, 9), np.float32)}, {}, ValueError,
             r"images must be \[n, H, W\], got shape \(4, 9\)"),
            ({store.IMAGES: np.zeros((4, 3, 3), np.float32)}, {"chunk_rows": 0}, ValueError,
             "chunk_rows must be a whole number >= 1"),
            ([1], {}, TypeError, "arrays and attrs must be dicts, got list and dict")):
        with pytest.raises(error, match=said):
            store.write_store(out, arrays, {}, **kwargs)
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,shape", [("alexnet", (192, 5, 5)),
                                        ("wide_resnet50_2", (256, 13, 13)),
                                        ("resnext50_32x4d", (256, 13, 13)),
                                        ("shufflenet_v2_x1_0", (116, 7, 7)),
                                        ("vgg16", (256, 12, 12))])
def test_extractor_output_shape_on_50x50(name, shape):
    extractor = build_extractor(name, None)
    assert feature_shape(extractor, (50, 50)) == shape
    assert shape[0] == EXTRACTORS[name].channels == extractor.channels
    assert all(not p.requires_grad for p in extractor.parameters())
    assert not extractor.training and extractor.fully_frozen


@pytest.mark.parametrize("fraction", [2, -1, 1.5, "x", True, float("nan")])
def test_build_extractor_refuses_an_unfreeze_fraction_outside_0_1(fraction):
    # 2 made every block trainable and -1 none, unsaid; "x" was a TypeError deep inside
    with pytest.raises(ValueError, match=r"^unfreeze_fraction must be a number in \[0, 1\]"):
        build_extractor("alexnet", None, unfreeze_fraction=fraction)


def test_weights_from_a_path_match_torchvisions_cut(tmp_path):
    import torchvision

    torch.manual_seed(0)
    full = torchvision.models.shufflenet_v2_x1_0(weights=None).eval()
    torch.save(full.state_dict(), tmp_path / "w.pt")
    extractor = build_extractor("shufflenet_v2_x1_0", str(tmp_path / "w.pt"))
    x = torch.randn(2, 3, 50, 50)
    with torch.no_grad():
        expected = full.stage2(full.maxpool(full.conv1(x)))
        torch.testing.assert_close(extractor(x), expected)


def test_weights_missing_offline_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(extractors_module.urllib.request, "urlopen", offline)
    url = torchvision.models.get_model_weights("alexnet").DEFAULT.url
    expected = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    with pytest.raises(WeightsUnavailableError) as info:
        build_extractor("alexnet", "DEFAULT")
    message = str(info.value)
    assert str(expected) in message and url in message
    # the setting as the library takes it, and as the command line's flag
    assert "(or pass weights='none' for random init" in message
    flags = cli.flags_of(cli.build_parser(), "train")
    assert "(or pass --weights none for random init" in report.as_flag(message, flags)
    assert not expected.exists()


def test_weights_download_cut_short_leaves_no_file_then_downloads(tmp_path, monkeypatch):
    import io

    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(2)
    full = torchvision.models.shufflenet_v2_x1_0(weights=None)
    saved = io.BytesIO()
    torch.save(full.state_dict(), saved)
    payload = saved.getvalue()

    class CutShort(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 0:
                raise TimeoutError("the read operation timed out")
            return super().read(1000)

    monkeypatch.setattr(extractors_module.urllib.request, "urlopen",
                        lambda url, timeout=None: CutShort(payload))
    checkpoints = tmp_path / "hub" / "checkpoints"
    with pytest.raises(WeightsUnavailableError, match="timed out"):
        build_extractor("shufflenet_v2_x1_0", "DEFAULT")
    assert list(checkpoints.iterdir()) == []  # a cut-short download never looks cached

    monkeypatch.setattr(extractors_module.urllib.request, "urlopen",
                        lambda url, timeout=None: io.BytesIO(payload))
    extractor = build_extractor("shufflenet_v2_x1_0", "DEFAULT")
    torch.testing.assert_close(extractor[0][0].weight, full.conv1[0].weight)
    assert [p.read_bytes() == payload for p in checkpoints.iterdir()] == [True]


def test_weights_default_read_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(extractors_module.urllib.request, "urlopen",
                        lambda *a, **k: pytest.fail("must not download a cached file"))
    url = torchvision.models.get_model_weights("shufflenet_v2_x1_0").DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    full = torchvision.models.shufflenet_v2_x1_0(weights=None)
    torch.save(full.state_dict(), cached)
    extractor = build_extractor("shufflenet_v2_x1_0", "DEFAULT")
    torch.testing.assert_close(extractor[0][0].weight, full.conv1[0].weight)


def _not_a_state_dict(tmp_path, kind):
    path = tmp_path / f"w-{kind}"
    if kind == "csv":
        path.write_text("id,text,label\nr0,a good film,pos\n")
    elif kind == "truncated":
        torch.save({"w": torch.zeros(64)}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    return path


@pytest.mark.parametrize("kind,reason", [("csv", "torch.load: "),
                                         ("truncated", "PytorchStreamReader"),
                                         ("empty", "ends too early"),
                                         ("list", "holds a list")])
def test_a_weights_file_that_is_not_a_state_dict_is_one_clear_error(tmp_path, kind, reason):
    path = _not_a_state_dict(tmp_path, kind)
    with pytest.raises(extractors_module.StateDictError) as info:
        build_extractor("alexnet", str(path))
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI's user errors: one line, exit 2
    assert message.startswith(f"weights file {path} is not a torch state_dict (")
    assert reason in message and "\n" not in message
    # torch's advice to retry with weights_only=False (arbitrary code execution) is not passed on
    assert "weights_only" not in message and len(message) < 400


def test_a_weights_path_that_is_a_folder_is_named_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"weights path {tmp_path} is a directory, not a "
                                                f"file"):
        build_extractor("alexnet", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_extractor("alexnet", str(tmp_path / "missing.pt"))


def test_unfreeze_fraction_opens_the_last_blocks():
    extractor = build_extractor("wide_resnet50_2", None, unfreeze_fraction=0.5)
    # blocks with parameters: conv1, bn1, layer1.0, layer1.1, layer1.2 -> the last 3 open
    assert extractor.trainable_blocks == frozenset({4, 5, 6})
    assert not extractor[0].weight.requires_grad
    assert all(p.requires_grad for p in extractor[6].parameters())
    extractor.train()
    assert not extractor[1].training and extractor[6].training


# -- store reading and loaders ----------------------------------------------------------------

def test_store_data_maps_class_values_to_indices(blob_store):
    path, y = blob_store
    data = StoreData(path)
    np.testing.assert_array_equal(data.targets, y)
    assert data.class_names == ["neg", "pos"] and data.image_shape == (50, 50)
    assert data.rows("train").size == 144 and data.rows("test").size == 48


def test_store_without_labels_is_one_clear_error(tmp_path):
    write_store(tmp_path / "images.zarr", n_rows=32, labels=False)
    with pytest.raises(ValueError, match="no labels.*build-dataset"):
        fit(tmp_path / "images.zarr", TrainConfig(**FAST))


def test_chunked_reader_gathers_any_order():
    data = np.arange(50 * 4, dtype=np.float16).reshape(50, 2, 2)

    class Chunked:  # an array-like with zarr's chunks attribute
        shape, chunks, dtype = data.shape, (7, 2, 2), data.dtype

        def __getitem__(self, key):
            return data[key]

    reader = ChunkedReader(Chunked(), cache_bytes=3 * 7 * 16)
    rows = np.array([49, 0, 13, 13, 48, 7, 22])
    np.testing.assert_array_equal(reader.read(rows), data[rows].astype(np.float32))
    assert len(reader._chunks) <= reader.max_chunks


def test_normalisation_modes(blob_store):
    path, _ = blob_store
    data = StoreData(path)
    reader = ChunkedReader(data.images)
    rows = data.rows("train")
    x = torch.from_numpy(reader.read(rows))
    z = Normaliser("image")(x)
    torch.testing.assert_close(z.mean(dim=(1, 2)), torch.zeros(len(rows)), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(dim=(1, 2), correction=0), torch.ones(len(rows)), atol=1e-3,
                               rtol=0)
    d = Normaliser("dataset", *pixel_stats(reader, rows))(x)
    torch.testing.assert_close(d.mean(0), torch.zeros(50, 50), atol=1e-4, rtol=0)
    torch.testing.assert_close(d.std(0, correction=0), torch.ones(50, 50), atol=5e-3, rtol=0)
    assert torch.equal(Normaliser("none")(x), x)



@pytest.mark.parametrize("mode", ["image", "dataset", "none"])
def test_numpy_normalisation_equals_the_torch_one(mode):
    """CPU training normalises in the DataLoader's workers with ``Normaliser.numpy``; the
    tests above check the torch path, so a slip in the numpy one went unseen."""
    rng = np.random.default_rng(0)
    x = (rng.random((6, 5, 4)) * 3.0 + 1.0).astype(np.float32)
    mean = rng.random((5, 4)).astype(np.float32)
    inv_std = (rng.random((5, 4)) + 0.5).astype(np.float32)
    normaliser = Normaliser(mode, *((mean, inv_std) if mode == "dataset" else ()))
    expected = normaliser(torch.from_numpy(x.copy())).numpy()
    np.testing.assert_allclose(normaliser.numpy(x.copy()), expected, atol=1e-5, rtol=0)


def test_uint8_images_are_read_back_in_zero_to_one():
    from fastimg.raster import to_image_dtype

    images = np.linspace(0.0, 1.0, 2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    stored = to_image_dtype(images, "uint8")
    assert stored.dtype == np.uint8
    np.testing.assert_allclose(ChunkedReader(stored).read(np.arange(2)),
                               stored.astype(np.float64) / 255.0, rtol=1e-6, atol=0)
    np.testing.assert_allclose(ChunkedReader(stored).read(np.arange(2)), images,
                               atol=0.5 / 255 + 1e-7, rtol=0)


def test_chunked_reader_drops_the_least_recently_used_chunk():
    array = _CountingArray(np.arange(40, dtype=np.float32).reshape(40, 1), 10)
    reader = ChunkedReader(array, cache_bytes=2 * 10 * 4)  # keeps 2 chunks
    assert reader.max_chunks == 2
    for row in (0, 10, 0, 20):  # chunk 0 read again, so chunk 1 is the one dropped
        reader.read(np.array([row]))
    assert array.reads == 3
    reader.read(np.array([5]))
    assert array.reads == 3  # still kept (first in, first out would have dropped it)


def _source(path, shuffle=True, batch_size=40):
    data = StoreData(path)
    reader = ChunkedReader(data.images)
    rows = data.rows("train")
    return data, reader, BatchSource(reader, data.targets, rows, batch_size, shuffle=shuffle,
                                     seed=5)


def test_torch_loader_serves_the_epoch_order(blob_store):
    path, _ = blob_store
    data, reader, source = _source(path)
    loader = make_loader("torch", source, Normaliser("none"), "cpu")
    for epoch in (0, 1):
        batches = list(loader.epoch(epoch))
        assert len(batches) == len(source) == 4 and batches[-1][0].shape[0] == 144 - 120
        rows = torch.cat([b[2] for b in batches]).numpy()
        np.testing.assert_array_equal(rows, data.rows("train")[epoch_order(144, 5, epoch)])
        np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(),
                                      data.targets[rows])
        np.testing.assert_array_equal(torch.cat([b[0] for b in batches]).numpy(),
                                      reader.read(rows))
    assert not np.array_equal(epoch_order(144, 5, 0), epoch_order(144, 5, 1))


def test_the_epoch_orders_of_two_seeds_are_not_shifted_copies():
    """The order of epoch e came from default_rng(seed + epoch): seed 1 trained on seed 0's
    orders shifted by one epoch (14 of 15 epochs the same), so runs over seeds 0, 1, 2 were
    not independent in their shuffling."""
    orders = {(seed, epoch): epoch_order(200, seed, epoch) for seed in (0, 1, 2)
              for epoch in range(4)}
    for (seed, epoch), order in orders.items():
        for (other_seed, other_epoch), other in orders.items():
            if (seed, epoch) != (other_seed, other_epoch):
                assert not np.array_equal(order, other), (seed, epoch, other_seed, other_epoch)


def test_torch_loader_leaves_the_global_rng_alone(blob_store):
    """A DataLoader iterator draws its workers' base seed from the global torch RNG unless it
    has a generator: the torch loader would shift dropout against the DALI loader."""
    path, _ = blob_store
    _, _, source = _source(path)
    _, _, again = _source(path)
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    first = [list(make_loader("torch", source, Normaliser("image"), "cpu").epoch(e))
             for e in (0, 1)]
    assert torch.equal(torch.random.get_rng_state(), state)
    second = [list(make_loader("torch", again, Normaliser("image"), "cpu").epoch(e))
              for e in (0, 1)]
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first, second):
        assert len(a) == len(b) == len(source)
        for batch_a, batch_b in zip(a, b):
            assert all(torch.equal(x, y) for x, y in zip(batch_a, batch_b))


def test_the_same_seed_trains_the_same_model_whatever_the_loader(blob_store, monkeypatch):
    """DALI is not installed here: a loader that serves the torch loader's batches without a
    DataLoader stands in for it. Dropout must see the same random stream with both."""
    from fastimg._registry import Backend
    from fastimg.train import data as data_module

    class PlainLoader(data_module.TorchLoader):
        name = "dali"

        def epoch(self, epoch):
            for i in range(len(self.source)):
                images, targets, rows = self.source.batch(epoch, i)
                yield (torch.from_numpy(self.normaliser.numpy(images)),
                       torch.from_numpy(targets), torch.from_numpy(rows))

    monkeypatch.setitem(data_module.LOADERS._backends, "dali",
                        Backend("dali", lambda: PlainLoader, lambda: True, 1, "dali"))
    path, _ = blob_store
    runs = {}
    for loader in ("torch", "dali"):
        config = TrainConfig(extractor="alexnet", **{**FAST, "epochs": 2, "probe": False,
                                                     "loader": loader, "cache": "none"})
        result = fit(path, config)
        assert result.metrics["loader"] == loader
        runs[loader] = result
    assert ([h["train_loss"] for h in runs["torch"].history]
            == [h["train_loss"] for h in runs["dali"].history])
    for key, value in runs["torch"].model.state_dict().items():
        assert torch.equal(value, runs["dali"].model.state_dict()[key]), key


def test_dali_and_torch_loaders_train_the_same_model_for_one_seed(blob_store):
    pytest.importorskip("nvidia.dali")
    path, _ = blob_store
    runs = {}
    for loader in ("torch", "dali"):
        config = TrainConfig(extractor="alexnet", **{**FAST, "epochs": 2, "probe": False,
                                                     "loader": loader, "cache": "none",
                                                     "normalize": "dataset"})
        runs[loader] = fit(path, config)
        assert runs[loader].metrics["loader"] == loader
    assert ([h["train_loss"] for h in runs["torch"].history]
            == [h["train_loss"] for h in runs["dali"].history])


def _torch_and_dali_loaders(blob_store, mode, device):
    pytest.importorskip("nvidia.dali")
    path, _ = blob_store
    data, reader, source = _source(path)
    stats = pixel_stats(reader, data.rows("train")) if mode == "dataset" else (None, None)
    normaliser = Normaliser(mode, *stats)
    return (make_loader("torch", source, normaliser, device),
            make_loader("dali", source, normaliser, device), source)


@pytest.mark.parametrize("mode", ["none", "image", "dataset"])
def test_dali_and_torch_loaders_give_identical_batches(blob_store, mode):
    ours, dali, source = _torch_and_dali_loaders(blob_store, mode, "cpu")
    for epoch in range(3):
        a, b = list(ours.epoch(epoch)), list(dali.epoch(epoch))
        assert len(a) == len(b) == len(source)
        for (xa, ta, ra), (xb, tb, rb) in zip(a, b):
            assert torch.equal(ra, rb) and torch.equal(ta.cpu(), tb.cpu())
            assert xb.dtype == torch.float32 and xb.shape == xa.shape
            if mode == "image":  # DALI's reduction order differs in the last bits
                torch.testing.assert_close(xb.cpu(), xa, atol=1e-5, rtol=0)
            else:
                assert torch.equal(xb.cpu(), xa)
    with pytest.raises(ValueError, match="in order"):
        next(iter(dali.epoch(7)))


def test_unknown_loader_and_missing_dali(monkeypatch, blob_store):
    from fastimg.train import data as data_module

    path, _ = blob_store
    _, _, source = _source(path)
    with pytest.raises(ValueError, match="unknown loader backend"):
        make_loader("fast", source, Normaliser("none"), "cpu")

    def missing():
        raise ImportError("No module named 'nvidia.dali'")

    monkeypatch.setitem(data_module.LOADERS._backends, "dali",
                        data_module.LOADERS._backends["dali"].__class__(
                            "dali", missing, lambda: False, 1, "dali"))
    with pytest.raises(ImportError, match=r"pip install 'fastimg\[dali\]'"):
        make_loader("dali", source, Normaliser("none"), "cpu")


# -- config -----------------------------------------------------------------------------------

def test_config_round_trips_through_json_and_rejects_bad_values():
    config = TrainConfig(extractor="vgg16", weights="none", upsample=3, fuse_embedding=True)
    assert config.weights is None
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    for bad in ({"extractor": "resnet18"}, {"normalize": "batch"}, {"epochs": 0},
                {"unfreeze_fraction": 0.5, "cache": "memory"}, {"loader": "ffcv"},
                {"head_channels": (8, 8)}, {"pixel_hidden": -1}, {"num_workers": -1},
                {"num_workers": 100_000}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="cache must be none or auto when unfreeze_fraction"):
        TrainConfig(unfreeze_fraction=0.5, cache="zarr")
    assert TrainConfig(num_workers=16).num_workers == 16
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"epochs": 2, "colour": "red"})
    assert TrainConfig(unfreeze_fraction=0.5).resolved_cache == "none"
    assert TrainConfig(unfreeze_fraction=0.0).resolved_cache == "memory"
    assert TrainConfig(preset="paper").resolved_cache == "memory"


def test_replace_fills_the_settings_left_unset_from_the_new_preset_and_extractor():
    """dataclasses.replace (how a frozen config is varied, in a sweep over extractors) kept
    the settings the first preset and extractor had filled in: replace(paper alexnet,
    extractor="vgg16") trained vgg16 at alexnet's Table I rates, and replace(ours,
    preset="paper") said preset "paper" in config.json while it held ours' settings."""
    from dataclasses import replace

    base = TrainConfig(preset="paper", extractor="alexnet", weights=None, epochs=3)
    for extractor in EXTRACTORS:
        assert replace(base, extractor=extractor) == TrainConfig(
            preset="paper", extractor=extractor, weights=None, epochs=3), extractor
    ours = TrainConfig(weights=None, lr_head=0.01)
    assert replace(ours, preset="paper") == TrainConfig(preset="paper", weights=None,
                                                        lr_head=0.01)  # given: it stays
    # a setting the preset filled and replace sets is the one given
    assert replace(ours, epochs=4).epochs == 4 and replace(base, lr_classifier=0.1) == \
        TrainConfig(preset="paper", weights=None, epochs=3, lr_classifier=0.1)
    # the bookkeeping is no setting: not in config.json, nor taken by from_dict
    assert "_filled" not in base.to_dict() and "_filled" not in repr(base)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**base.to_dict(), "_filled": {}})



def test_config_takes_numpy_numbers_as_python_ones_and_refuses_non_numbers():
    """Settings from a numpy grid (np.arange, np.logspace) were refused with 'epochs must be a
    positive integer, got np.int64(3)', or taken as they were: a float32 learning rate trained
    the whole run and then failed writing config.json (not JSON serialisable), leaving best.pt
    without metrics; an int64 seed failed in the loader with a TypeError."""
    config = TrainConfig(weights="none", epochs=np.int64(3), batch_size=np.int32(16),
                         upsample=np.int64(2), patience=np.int64(1), seed=np.uint32(7),
                         num_workers=np.int64(0), pixel_hidden=np.int64(8),
                         embedding_hidden=np.int64(8), lr_head=np.float32(1e-3),
                         lr_classifier=np.float16(0.5), weight_decay=np.float32(0.1),
                         unfreeze_fraction=np.float32(0.0), dropout=np.float32(0.25))
    settings = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(settings) == config
    assert (settings["epochs"], settings["seed"]) == (3, 7)
    assert settings["lr_head"] == float(np.float32(1e-3))
    for name in ("epochs", "seed", "num_workers", "pixel_hidden", "upsample"):
        assert type(getattr(config, name)) is int, name
    for name in ("lr_head", "lr_classifier", "weight_decay", "unfreeze_fraction", "dropout"):
        assert type(getattr(config, name)) is float, name
    for bad in ({"head_channels": (0, 8, 8, 8)}, {"hidden": (-1, 3)}, {"hidden": (2.5, 3)},
                {"head_channels": "abcd"}, {"hidden": (8,)}):
        # torch's own error when the model was built, or a width truncated (2.5 -> 2)
        with pytest.raises(ValueError, match=f"^{next(iter(bad))} must be"):
            TrainConfig(weights="none", **bad)
    assert TrainConfig(hidden=[np.int64(4), 2]).hidden == (4, 2)
    # a weights path as a Path trained the whole run, then failed writing config.json
    assert TrainConfig(weights=Path("w/alexnet.pt")).weights == os.path.join("w", "alexnet.pt")
    with pytest.raises(ValueError, match="^weights must be"):
        TrainConfig(weights=1)
    flags = TrainConfig(probe=np.bool_(False), amp=np.bool_(True), cache_budget=np.int64(2**30))
    assert json.loads(json.dumps(flags.to_dict()))["cache_budget"] == str(2**30)
    assert flags.probe is False and flags.amp is True
    # a string or a number is truthy: probe="false" ran the probes, fuse_embedding="no" fused
    for bad in ({"probe": "false"}, {"amp": "no"}, {"fuse_embedding": "no"},
                {"pixel_branch": 0}, {"channels_last": None}, {"progress": 1}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))} must be True or False"):
            TrainConfig(weights="none", **bad)
    assert TrainConfig(pixel_branch=np.bool_(False)).pixel_branch is False
    for bad in ({"num_workers": 1.5}, {"num_workers": True}, {"pixel_hidden": 2.5},
                {"embedding_hidden": 0}, {"lr_head": "1e-3"}, {"dropout": True},
                {"weight_decay": "0.1"}, {"epochs": 2.0}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))} must be"):
            TrainConfig(weights="none", **bad)


@pytest.mark.parametrize("device", ["gpu", "cuda0", "CPU", "mps", 0],
                         ids=["g-p-u", "cuda0", "upper", "mps", "int"])  # "gpu": a GPU mark
def test_config_and_load_run_name_a_bad_device(device):
    """A bad device is refused where it is set, naming the setting: TrainConfig took "gpu"
    and fit failed after loading the store with torch's RuntimeError listing 24 device
    types, naming no setting."""
    from fastimg.train.config import resolve_device

    with pytest.raises(ValueError, match=r"^device must be auto, cpu, cuda or cuda:N, got"):
        TrainConfig(weights="none", device=device)
    with pytest.raises(ValueError, match=r"^device must be auto, cpu, cuda or cuda:N, got"):
        resolve_device(device)  # load_run(device=...) and explain(device=...)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert TrainConfig(weights="none", device="cuda:1").device == "cuda:1"

def test_a_cuda_device_past_the_last_gpu_is_refused_in_one_line(monkeypatch):
    """cuda:N past the machine's GPUs was taken, and failed when the model moved there with
    CUDA's 'invalid device ordinal' (an internal error, exit 1), after the store was read."""
    from fastimg.train.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"^device 'cuda:2' requested but this machine has 2 "
                                         r"CUDA devices \(cuda:0 to cuda:1\)$"):
        resolve_device("cuda:2")


# -- training ---------------------------------------------------------------------------------

def test_two_separable_classes_reach_090_on_cpu(blob_store, tmp_path):
    path, _ = blob_store
    result = fit(path, TrainConfig(extractor="alexnet", **{**FAST, "epochs": 4}),
                 out_dir=tmp_path / "run")
    assert result.val_accuracy > 0.9
    assert result.test_accuracy is not None and result.test_accuracy > 0.9
    assert result.metrics["cache"] == "memory"


def test_metrics_json_and_checkpoint(blob_store, tmp_path):
    path, _ = blob_store
    run = tmp_path / "run"
    config = TrainConfig(extractor="shufflenet_v2_x1_0", **FAST)
    result = fit(path, config, out_dir=run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert TrainConfig.from_dict(metrics["config"]) == config
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == config
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    for epoch in metrics["epochs"]:
        assert epoch["train_loss"] > 0 and 0 <= epoch["val_accuracy"] <= 1
    best = metrics["best_epoch"]
    assert metrics["epochs"][best - 1]["val_accuracy"] == max(
        e["val_accuracy"] for e in metrics["epochs"])
    # the best weights are what is evaluated at the end: validation accuracy afresh, not a
    # running average over the epochs
    assert metrics["final"]["val"]["accuracy"] == pytest.approx(
        metrics["epochs"][best - 1]["val_accuracy"])
    for split, n in (("val", 48), ("test", 48)):
        matrix = np.array(metrics["final"][split]["confusion_matrix"])
        assert matrix.shape == (2, 2) and matrix.sum() == n
        assert np.trace(matrix) / n == pytest.approx(metrics["final"][split]["accuracy"])
        per_class = metrics["final"][split]["per_class"]
        assert [per_class[c]["support"] for c in ("neg", "pos")] == matrix.sum(1).tolist()
        assert metrics["final"][split]["balanced_accuracy"] == pytest.approx(
            np.mean(np.diag(matrix) / matrix.sum(1)))
    assert metrics["reported"]["macro_f1"] == metrics["final"]["test"]["macro_f1"]
    assert metrics["class_names"] == ["neg", "pos"]
    assert metrics["rows"] == {"train": 144, "val": 48, "test": 48}
    probe = metrics["probe"]
    assert probe["val_accuracy"] > 0.9 and probe["test_accuracy"] > 0.9
    state = torch.load(run / "best.pt", weights_only=True)
    assert set(state) == set(result.model.state_dict())
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(state[key], value.cpu())


def test_frozen_parameters_and_bn_stats_unchanged_by_training(blob_store):
    path, _ = blob_store
    # recompute the extractor every epoch (no cache) so it runs inside the training loop
    config = TrainConfig(extractor="shufflenet_v2_x1_0", cache="none", **{**FAST, "epochs": 1})
    torch.manual_seed(0)
    reference = build_extractor("shufflenet_v2_x1_0", None)
    result = fit(path, config)
    trained = result.model.extractor
    # same seed -> same random init, so the frozen extractor must equal a fresh build
    before = {k: v for k, v in reference.state_dict().items()}
    after = trained.state_dict()
    assert any("running_mean" in k for k in after)
    for key, value in before.items():
        assert torch.equal(after[key].cpu(), value), key
    head_bn = result.model.head.body[2]
    assert head_bn.num_batches_tracked > 0  # the head's BN does train


def test_unfrozen_blocks_train_and_frozen_ones_do_not(blob_store):
    path, _ = blob_store
    config = TrainConfig(extractor="shufflenet_v2_x1_0",
                         **{**FAST, "epochs": 1, "unfreeze_fraction": 0.25})
    torch.manual_seed(0)
    reference = build_extractor("shufflenet_v2_x1_0", None, unfreeze_fraction=0.25)
    result = fit(path, config)
    trained = result.model.extractor
    assert result.metrics["cache"] == "none" and not result.metrics["extractor"]["frozen"]
    for i, (old, new) in enumerate(zip(reference, trained)):
        same = all(torch.equal(a, b.cpu()) for a, b in zip(old.state_dict().values(),
                                                           new.state_dict().values()))
        assert same == (i not in trained.trainable_blocks), i


@pytest.mark.parametrize("pixel_branch", [False, True])
def test_cache_gives_the_same_model_as_recomputing(blob_store, pixel_branch):
    path, _ = blob_store
    base = {**FAST, "epochs": 2, "probe": False, "dropout": 0.0, "pixel_branch": pixel_branch}
    cached = fit(path, TrainConfig(extractor="alexnet", cache="memory", cache_dtype="float32",
                                   **base))
    fresh = fit(path, TrainConfig(extractor="alexnet", cache="none", **base))
    assert len(cached.history) == len(fresh.history) == 2  # zip stops at the shorter one
    for a, b in zip(cached.history, fresh.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


@pytest.mark.parametrize("pixel_hidden", [16, 0])
def test_pixel_branch_trains_and_its_run_reloads_with_the_same_predictions(blob_store, tmp_path,
                                                                          pixel_hidden):
    from fastimg.train import load_run

    path, _ = blob_store
    result = fit(path, TrainConfig(extractor="alexnet", pixel_branch=True,
                                   pixel_hidden=pixel_hidden, **{**FAST, "probe": False}),
                 out_dir=tmp_path / "run")
    branch = result.model.pixel_mlp
    if pixel_hidden:  # concatenated before the classifier
        assert branch.body[1].in_features == 50 * 50
        assert result.model.classifier.body[0].in_features == 8 * 5 * 5 + pixel_hidden
    else:  # wide and deep: a linear map of the pixels added to the logits
        assert (branch.in_features, branch.out_features) == (50 * 50, 2)
        assert result.model.classifier.body[0].in_features == 8 * 5 * 5
    assert result.metrics["config"]["pixel_branch"] is True
    assert result.val_accuracy > 0.9
    # fit evaluated on cached features + pixels; the reloaded run runs images end to end
    data = StoreData(path)
    rows = data.rows("test")
    run = load_run(tmp_path / "run")
    prediction = run.predict_images(ChunkedReader(data.images).read(rows))
    assert np.mean(prediction.indices == data.targets[rows]) == pytest.approx(
        result.test_accuracy)
    # the stored labels (3 / 7, named neg / pos) map to the classes through the bundle
    labels = data.reader.labels()[rows]
    assert set(labels.tolist()) == {3, 7} and run.class_values == [3, 7]
    np.testing.assert_array_equal(run.targets(labels), data.targets[rows])
    assert prediction.score(run.targets(labels))["accuracy"] == pytest.approx(
        result.test_accuracy)


def test_fusion_no_test_split_and_zarr_cache(tmp_path):
    path = tmp_path / "notest.zarr"
    write_store(path, n_rows=120, class_values=None, test=False, blob=0.0)
    # no pixel branch: 2,500 pixels of noise beside 72 training rows would drown the embedding
    result = fit(path, TrainConfig(extractor="alexnet", fuse_embedding=True, cache="zarr",
                                   pixel_branch=False, **{**FAST, "epochs": 4}),
                 out_dir=tmp_path / "run")
    assert result.test_accuracy is None and result.metrics["final"]["test"] is None
    assert result.probe["test_accuracy"] is None
    assert (tmp_path / "run" / "feature_cache" / "train").is_dir()
    # without the blob the images carry nothing; the fused embedding does
    assert result.val_accuracy > 0.9
    assert result.model.embedding_mlp is not None


def test_fit_seeded_and_leaves_global_rng_alone(blob_store):
    path, _ = blob_store
    config = TrainConfig(extractor="alexnet", **{**FAST, "epochs": 1, "probe": False})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = fit(path, config)
    assert torch.equal(torch.rand(3), expected)
    b = fit(path, config)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]


def test_the_same_seed_writes_the_same_checkpoint_bytes(blob_store, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    # best.pt was written through a temporary file named after the process and thread, and
    # torch.save named its archive's records after that file: equal tensors, other bytes
    path, _ = blob_store
    config = TrainConfig(extractor="alexnet", **{**FAST, "epochs": 1, "probe": False})
    fit(path, config, out_dir=tmp_path / "a")
    with ThreadPoolExecutor(1) as pool:  # another thread: another temporary name
        pool.submit(fit, path, config, out_dir=tmp_path / "b").result()
    assert (tmp_path / "a" / "best.pt").read_bytes() == (tmp_path / "b" / "best.pt").read_bytes()


def test_a_failed_fit_leaves_no_run_folder(blob_store, tmp_path, monkeypatch):
    import importlib

    fit_module = importlib.import_module("fastimg.train.fit")  # the module, not the function
    path, _ = blob_store
    out = tmp_path / "runs" / "w1"
    bad = _not_a_state_dict(tmp_path, "csv")
    with pytest.raises(ValueError, match="is not a torch state_dict"):
        fit(path, TrainConfig(extractor="alexnet", **{**FAST, "weights": str(bad)}), out_dir=out)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(IsADirectoryError):
        fit(path, TrainConfig(extractor="alexnet", **{**FAST, "weights": str(tmp_path)}),
            out_dir=out)
    assert not (tmp_path / "runs").exists()

    # interrupted once the folder exists (an on-disk feature cache written into it): removed,
    # parents fit created included, but a folder the user had is kept
    def interrupted(run, *args):
        run.build_caches("zarr", args[1])  # (cache_mode, folder, ...)
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_train", interrupted)
    config = TrainConfig(extractor="alexnet", **{**FAST, "cache": "zarr"})
    with pytest.raises(KeyboardInterrupt):
        fit(path, config, out_dir=out)
    assert not (tmp_path / "runs").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(KeyboardInterrupt):
        fit(path, config, out_dir=mine / "run")
    assert mine.is_dir() and not (mine / "run").exists()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(KeyboardInterrupt):  # a folder of other files is trained into on demand
        fit(path, config, out_dir=mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"
    # nor is the unfinished feature cache left in it, among the user's own files
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(NotADirectoryError, match="is a file"):
        fit(path, config, out_dir=mine / "notes.txt")


def test_fit_writes_the_run_files_its_docstring_lists(blob_store, tmp_path):
    from fastimg.run_folder import RUN_FILES

    path, _ = blob_store
    out = tmp_path / "run"
    fit(path, TrainConfig(extractor="alexnet", **{**FAST, "epochs": 1, "probe": False,
                                                  "normalize": "dataset", "cache": "zarr"}),
        out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, "feature_cache"])
    for name in (*RUN_FILES, "feature_cache/"):
        assert f"``{name}``" in fit.__doc__, name


def test_fit_refuses_a_folder_holding_a_run_unless_overwrite(blob_store, tmp_path, monkeypatch):
    import importlib

    fit_module = importlib.import_module("fastimg.train.fit")  # the module, not the function
    path, _ = blob_store
    out = tmp_path / "run"
    config = TrainConfig(extractor="alexnet", **{**FAST, "epochs": 1, "probe": False})
    fit(path, config, out_dir=out)
    before = (out / "best.pt").read_bytes()

    def no_work(*args, **kwargs):
        raise AssertionError("fit started work before refusing the folder")

    monkeypatch.setattr(fit_module, "StoreData", no_work)
    with pytest.raises(FileExistsError, match=r"already holds a run \(metrics.json, config.json"):
        fit(path, config, out_dir=out)
    assert (out / "best.pt").read_bytes() == before
    monkeypatch.undo()
    result = fit(path, TrainConfig(extractor="alexnet", **{**FAST, "epochs": 1, "probe": False,
                                                           "seed": 1}),
                 out_dir=out, overwrite=True)
    assert result.run_dir == out and json.loads((out / "config.json").read_text())["seed"] == 1


def test_fit_refuses_a_folder_holding_other_files_before_any_work(blob_store, tmp_path,
                                                                  monkeypatch):
    """Only the command line refused a folder of the user's own files: fit() trained into it,
    its run files among them."""
    import importlib

    fit_module = importlib.import_module("fastimg.train.fit")
    path, _ = blob_store
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def no_work(*args, **kwargs):
        raise AssertionError("fit started work before refusing the folder")

    monkeypatch.setattr(fit_module, "StoreData", no_work)
    with pytest.raises(FileExistsError, match=f"out_dir {re.escape(str(out))} is not empty; "
                                              f"pass overwrite=True to train into it anyway"):
        fit(path, TrainConfig(extractor="alexnet", **FAST), out_dir=out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


# -- CUDA (skipped without a GPU) -------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_cuda_fit_with_amp_channels_last(blob_store, loader):
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    path, _ = blob_store
    for cache in ("memory", "none"):
        result = fit(path, TrainConfig(extractor="alexnet", device="cuda", cache=cache,
                                       **{**FAST, "loader": loader, "epochs": 4}))
        assert result.metrics["amp"] and result.metrics["device"].startswith("cuda")
        assert result.val_accuracy > 0.9


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["image", "dataset"])
def test_dali_gpu_pipeline_matches_torch_on_cuda(blob_store, mode):
    ours, dali, source = _torch_and_dali_loaders(blob_store, mode, "cuda")
    a, b = list(ours.epoch(0)), list(dali.epoch(0))
    assert len(a) == len(b) == len(source)  # zip alone would hide a loader that stops early
    for (xa, ta, ra), (xb, tb, rb) in zip(a, b):
        assert xa.is_cuda and xb.is_cuda and torch.equal(ra.cpu(), rb.cpu())
        assert torch.equal(ta, tb)
        torch.testing.assert_close(xb, xa, atol=1e-5, rtol=0)


# -- presets, schedules, early stopping ------------------------------------------------------

TABLE_I = {"alexnet": (1e-5, 5e-4), "wide_resnet50_2": (5e-5, 1e-4),
           "resnext50_32x4d": (5e-5, 1e-3), "shufflenet_v2_x1_0": (5e-4, 1e-3),
           "vgg16": (5e-5, 1e-3)}


@pytest.mark.parametrize("name", sorted(TABLE_I))
def test_paper_preset_takes_table_i_and_the_papers_settings(name):
    config = TrainConfig(preset="paper", extractor=name)
    assert (config.lr_head, config.lr_classifier) == TABLE_I[name]
    assert (config.normalize, config.epochs, config.optimizer, config.weight_decay,
            config.schedule, config.patience, config.upsample, config.cut,
            config.pixel_branch) == ("image", 15, "adam", 0.0, "none", 0, 1, "paper", False)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # explicit values win over the preset
    mine = TrainConfig(preset="paper", extractor=name, epochs=3, lr_head=0.1, normalize="none")
    assert (mine.epochs, mine.lr_head, mine.lr_classifier, mine.normalize) == (
        3, 0.1, TABLE_I[name][1], "none")
    ours = TrainConfig(extractor=name)
    assert ours.preset == "ours" and (ours.lr_head, ours.normalize) != (TABLE_I[name][0], "image")
    assert ours.pixel_branch and ours.resolved_cache == "memory"  # frozen cut + pixel branch
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(preset="author")


def test_paper_preset_trains_with_its_learning_rates(blob_store):
    path, _ = blob_store
    result = fit(path, TrainConfig(preset="paper", extractor="alexnet",
                                   **{**FAST, "epochs": 1, "probe": False}))
    assert result.metrics["config"]["preset"] == "paper"
    assert (result.history[0]["lr_head"], result.history[0]["lr_classifier"]) == (1e-5, 5e-4)


def script_val_accuracy(monkeypatch, script) -> None:
    """Validation reports ``script``'s accuracies, epoch by epoch (then its own)."""
    import importlib

    fit_module = importlib.import_module("fastimg.train.fit")
    script, evaluate = list(script), fit_module._Run.evaluate

    def scripted(self, split):
        out = evaluate(self, split)
        if split == "val" and script:
            out["accuracy"] = script.pop(0)
        return out

    monkeypatch.setattr(fit_module._Run, "evaluate", scripted)


def test_cosine_schedule_and_early_stopping(blob_store, monkeypatch):
    path, _ = blob_store
    cosine = fit(path, TrainConfig(extractor="alexnet", schedule="cosine", patience=0,
                                   **{**FAST, "epochs": 3, "probe": False}))
    lrs = [e["lr_head"] for e in cosine.history]
    assert lrs[0] == 1e-3 and lrs[0] > lrs[1] > lrs[2] > 0
    # scripted validation accuracies: best at epoch 2, then no gain (a tie is no gain) for
    # `patience` epochs -> stop after epoch 4, keep epoch 2
    script_val_accuracy(monkeypatch, [0.6, 0.7, 0.65, 0.7])
    stuck = fit(path, TrainConfig(extractor="alexnet", patience=2,
                                  **{**FAST, "epochs": 6, "probe": False}))
    assert stuck.metrics["stopped_early"] and stuck.metrics["epochs_run"] == 4
    assert stuck.best_epoch == 2
    assert [e["val_accuracy"] for e in stuck.history] == [0.6, 0.7, 0.65, 0.7]


def test_nopool_cut_keeps_more_of_the_grid():
    assert feature_shape(build_extractor("alexnet", None, cut="nopool"), (50, 50)) == (192, 11, 11)
    assert feature_shape(build_extractor("resnext50_32x4d", None, cut="nopool"),
                         (50, 50)) == (256, 25, 25)
    with pytest.raises(ValueError, match="cut"):
        TrainConfig(cut="wide")


# -- honest evaluation ------------------------------------------------------------------------

def test_selection_biased_without_a_test_split(tmp_path, blob_store):
    path = tmp_path / "notest.zarr"
    write_store(path, n_rows=120, test=False)
    config = TrainConfig(extractor="alexnet", **{**FAST, "epochs": 1})
    result = fit(path, config, out_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result.selection_biased and metrics["selection_biased"] is True
    assert metrics["final"]["val"]["selection_biased"] is True
    assert metrics["reported"]["split"] == "val" and metrics["reported"]["selection_biased"]
    assert "test split" in metrics["reported"]["note"]
    with_test = fit(blob_store[0], config)
    assert not with_test.selection_biased and with_test.metrics["selection_biased"] is False
    test = with_test.metrics["final"]["test"]
    assert with_test.metrics["reported"] == {
        "split": "test", "accuracy": with_test.test_accuracy, "macro_f1": test["macro_f1"],
        "balanced_accuracy": test["balanced_accuracy"], "selection_biased": False}
    assert with_test.metrics["final"]["test"]["selection_biased"] is False


def test_probes_choose_c_on_validation(blob_store):
    from fastimg.train import linear_probe
    from fastimg.train.probe import PROBE_C_GRID

    data = StoreData(blob_store[0])
    for features in ("embeddings", "pixels"):
        probe = linear_probe(data, features=features)
        assert probe["features"] == features and probe["C"] in PROBE_C_GRID
        assert set(probe["val_accuracy_by_C"]) == {f"{c:g}" for c in PROBE_C_GRID}
        assert probe["val_accuracy"] == max(probe["val_accuracy_by_C"].values())
        assert probe["test_accuracy"] > 0.9 and probe["selection_biased"] == {
            "val": True, "test": False}


def test_probes_fit_a_seeded_sample_of_a_large_training_split(blob_store):
    """The pixel probe of a 200,000-row store ran over 10 minutes at 8.8 GB: a probe fits on
    at most max_fit_rows training rows (here 40 of 144), the same ones for a seed."""
    from fastimg.train import linear_probe

    data = StoreData(blob_store[0])
    whole = linear_probe(data, features="pixels")
    assert whole["fit_rows"] == whole["train_rows"] == data.rows("train").size
    sample = linear_probe(data, features="pixels", max_fit_rows=40)
    assert sample["fit_rows"] == 40 and sample["train_rows"] == whole["train_rows"]
    assert linear_probe(data, features="pixels", max_fit_rows=40) == {
        **sample, "seconds": pytest.approx(sample["seconds"], abs=60)}


def test_a_probe_takes_a_store_path_and_refuses_bad_settings_in_one_line(blob_store):
    # it took only a StoreData, not exported (a path: "'str' object has no attribute
    # 'embeddings'"); max_fit_rows=0 gave numpy's reshape error, grid=() a TypeError, seed=-1
    # numpy's, a negative C scikit-learn's
    from fastimg.train import linear_probe

    path = blob_store[0]
    assert linear_probe(path, max_fit_rows=40) == {
        **linear_probe(StoreData(path), max_fit_rows=40), "seconds": pytest.approx(0, abs=60)}
    for settings, said in (({"max_fit_rows": 0}, "max_fit_rows must be a whole number >= 2"),
                           ({"grid": ()}, "grid must be a non-empty list of positive"),
                           ({"grid": (-1.0,)}, "grid must be a non-empty list of positive"),
                           ({"seed": -1}, "seed must be a whole number from 0"),
                           ({"max_iter": 0}, "max_iter must be a whole number >= 1"),
                           # a TypeError "iteration over a 0-d array"
                           ({"grid": np.array(1.0)}, "grid must be a non-empty list of "),
                           ({"grid": np.array([0.5, 1.0]), "max_iter": 0}, "max_iter must")):
        with pytest.raises(ValueError, match=f"^{said}"):
            linear_probe(path, **settings)
    # storage_options beside an opened store were left unused, unsaid
    with pytest.raises(ValueError, match="^storage_options go with a store's path"):
        linear_probe(StoreData(path), storage_options={"anon": True})


def test_probe_shows_its_progress(blob_store, capsys):
    """Each probe fit takes minutes on a large store: a bar over the C values says so."""
    from fastimg.train import linear_probe
    from fastimg.train.probe import PROBE_C_GRID

    data = StoreData(blob_store[0])
    linear_probe(data, features="pixels", progress=True)
    err = capsys.readouterr().err
    assert "probe pixels" in err and all(f"C={c:g}" in err for c in PROBE_C_GRID)
    # the fits done: the bar stood at 0/5 through every fit
    n = len(PROBE_C_GRID)
    assert all(f"{done}/{n} " in err for done in range(1, n))
    linear_probe(data, features="pixels")
    assert "probe" not in capsys.readouterr().err


# -- memory -----------------------------------------------------------------------------------

def test_head_batchnorm_statistics_untouched_before_training():
    from fastimg.train.head import ImageClassifier

    extractor = build_extractor("alexnet", None)
    model = ImageClassifier(extractor, feature_shape(extractor, (50, 50)), 2,
                            head_channels=(8, 8, 8, 8), hidden=(8, 8))
    norms = [m for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 4
    for bn in norms:
        assert int(bn.num_batches_tracked) == 0
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert model.head.training  # left ready to train


def test_auto_cache_falls_back_to_zarr_over_its_budget(blob_store, tmp_path):
    path, _ = blob_store
    base = {**FAST, "epochs": 2, "probe": False, "dropout": 0.0}
    small = fit(path, TrainConfig(extractor="alexnet", cache_budget="1KiB", **base))
    assert small.metrics["cache"] == "zarr"  # in a temporary folder: no run folder given
    run = fit(path, TrainConfig(extractor="alexnet", cache_budget="1KiB", **base),
              out_dir=tmp_path / "run")
    assert run.metrics["cache"] == "zarr" and (tmp_path / "run" / "feature_cache" / "val").is_dir()
    big = fit(path, TrainConfig(extractor="alexnet", cache_budget="50%", **base))
    assert big.metrics["cache"] == "memory"
    assert len(small.history) == len(big.history) == 2  # zip stops at the shorter one
    for a, b in zip(small.history, big.history):  # same float16 features, same order
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    for bad in ("lots", "0%", "150%"):
        with pytest.raises(ValueError, match="cache_budget"):
            TrainConfig(cache_budget=bad)
    assert TrainConfig(cache_budget="2GiB").cache_budget_bytes == 2 << 30
    # a bare fraction was 0 bytes (every cache on disk), where half the RAM was meant
    with pytest.raises(ValueError, match=r"not a whole number of bytes \(a share of RAM is "
                                         r"written '50%'\)"):
        TrainConfig(cache_budget=0.5)
    assert TrainConfig(cache_budget=2.0).cache_budget_bytes == 2


def test_on_disk_cache_shuffles_within_windows_of_chunks():
    from fastimg.train.cache import FeatureCache

    reader = ChunkedReader(np.zeros((960, 4), np.float32), cache_bytes=10 * 16 * 4 * 4)
    reader.chunk_rows = 16  # a numpy array has one chunk; pretend zarr chunks of 16 rows
    reader.max_chunks = 10
    cache = FeatureCache(reader, np.arange(960))
    order = cache.order(seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(960))
    assert not np.array_equal(order, cache.order(seed=0, epoch=1))
    # windows of 5 whole chunks (80 rows): each window touches 5 chunks, so an epoch decodes
    # every chunk once, not once per batch
    for start in range(0, 960, 80):
        assert np.unique(order[start:start + 80] // 16).size == 5
    assert np.unique(order[:160] // 16).size == 10


class _CountingArray:
    """A zarr-like chunked array that counts the chunks read from it."""

    def __init__(self, data, chunk_rows):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.chunks = (chunk_rows, *data.shape[1:])
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return self.data[key]


def _epoch_rows(source, epoch, *also):
    served = []
    for index in range(len(source)):
        images, targets, rows = source.batch(epoch, index)
        np.testing.assert_array_equal(images, source.reader.array.data[rows])
        for reader in also:
            reader.read(rows)
        served.append(rows)
    return np.concatenate(served)


def test_a_split_larger_than_the_readers_cache_decodes_each_chunk_once_an_epoch():
    data = np.arange(960 * 4, dtype=np.float16).reshape(960, 4)
    array = _CountingArray(data, 16)  # 60 chunks
    reader = ChunkedReader(array, cache_bytes=10 * 16 * 4 * 4)  # keeps 10 decoded chunks
    rows = np.flatnonzero(np.arange(960) % 5 != 0)  # a split: 4 rows of every 5
    source = BatchSource(reader, np.zeros(960, np.int64), rows, 32, shuffle=True, seed=3)
    orders = []
    for epoch in (0, 1):
        before = array.reads
        served = _epoch_rows(source, epoch)
        np.testing.assert_array_equal(np.sort(served), rows)
        assert array.reads - before <= 60  # a fully random order decoded ~8 chunks a batch
        orders.append(served)
    assert not np.array_equal(orders[0], orders[1])
    # every window of 5 chunks is shuffled as a whole: no batch is one chunk's rows in order
    assert np.unique(orders[0][:64] // 16).size == 5


def test_the_shuffled_order_keeps_every_reader_it_reads_through_within_its_cache():
    images = _CountingArray(np.zeros((960, 2, 2), np.float16), 16)  # 60 chunks, all kept
    embeddings = _CountingArray(np.ones((960, 3), np.float16), 48)  # 20 chunks, 4 kept
    image_reader = ChunkedReader(images)
    embedding_reader = ChunkedReader(embeddings, cache_bytes=4 * 48 * 3 * 4)
    rows = np.arange(960)
    plain = BatchSource(image_reader, np.zeros(960, np.int64), rows, 32, shuffle=True, seed=1)
    np.testing.assert_array_equal(plain.order(0), rows[epoch_order(960, 1, 0)])
    source = BatchSource(image_reader, np.zeros(960, np.int64), rows, 32, shuffle=True, seed=1,
                         also_read=(embedding_reader,))
    served = _epoch_rows(source, 0, embedding_reader)
    np.testing.assert_array_equal(np.sort(served), rows)
    assert (images.reads, embeddings.reads) == (60, 20)


def test_readers_with_other_chunk_sizes_are_read_by_the_coarsest_ones_chunks():
    """Grouping by the overlaps of both readers' chunks split every chunk over windows, and
    each was decoded once per window it fell in."""
    images = _CountingArray(np.zeros((960, 2, 2), np.float16), 16)  # 60 chunks, 10 kept
    embeddings = _CountingArray(np.ones((960, 3), np.float16), 20)  # 48 chunks, 8 kept
    image_reader = ChunkedReader(images, cache_bytes=10 * 16 * 4 * 4)
    embedding_reader = ChunkedReader(embeddings, cache_bytes=8 * 20 * 3 * 4)
    rows = np.arange(960)
    source = BatchSource(image_reader, np.zeros(960, np.int64), rows, 16, shuffle=True, seed=2,
                         also_read=(embedding_reader,))
    served = _epoch_rows(source, 0, embedding_reader)
    np.testing.assert_array_equal(np.sort(served), rows)
    assert embeddings.reads == 48  # the coarsest reader's chunks: once each
    assert images.reads <= 2 * 60  # a chunk across two of the coarse ones: at most twice


@pytest.mark.parametrize("options,row_bytes", [
    ({"pixel_branch": True}, 50 * 50 * 4),
    ({"pixel_branch": False, "fuse_embedding": True}, 24 * 4),
    ({"pixel_branch": False, "cache": "none"}, 50 * 50 * 4)])
def test_fit_reads_a_store_larger_than_its_readers_a_window_at_a_time(tmp_path, monkeypatch,
                                                                     options, row_bytes):
    """The training epoch reads store rows through the image reader (pixel branch, no
    cache) or the embedding reader (fusion): each decodes its chunks once an epoch."""
    import importlib

    from fastimg.train import data as data_module

    fit_module = importlib.import_module("fastimg.train.fit")  # the package's `fit` is the function
    path = tmp_path / "big.zarr"
    write_store(path, n_rows=1280)  # 64-row chunks: the training split spans 12 of them
    # the reader of the images (or of the 24 embedding features) keeps 4 chunks
    monkeypatch.setattr(data_module, "READER_CACHE_BYTES", 4 * 64 * row_bytes)
    decoded = []
    chunk = ChunkedReader._chunk

    def counting_chunk(self, index):
        decoded.append(index not in self._chunks)
        return chunk(self, index)

    monkeypatch.setattr(ChunkedReader, "_chunk", counting_chunk)
    per_epoch = []
    train_epoch = fit_module._Run.train_epoch

    def counted_epoch(self, epoch):
        start = len(decoded)
        out = train_epoch(self, epoch)
        per_epoch.append(sum(decoded[start:]))
        return out

    monkeypatch.setattr(fit_module._Run, "train_epoch", counted_epoch)
    config = TrainConfig(extractor="alexnet", **{**FAST, "epochs": 2, "probe": False,
                                                 **options})
    fit(path, config)
    assert per_epoch and all(n <= 12 for n in per_epoch), per_epoch


def test_windowed_order_shuffles_whole_chunks_and_the_rows_within_each_window():
    from fastimg.train.data import windowed_order

    groups = np.repeat(np.arange(12), 10)  # 12 chunks of 10 positions
    order = windowed_order(groups, 4, seed=0, epoch=0)
    np.testing.assert_array_equal(np.sort(order), np.arange(120))
    for start in range(0, 120, 40):  # windows of 4 whole chunks
        window = groups[order[start:start + 40]]
        assert np.unique(window).size == 4 and np.bincount(window).max() == 10
        # the rows of a window are mixed, not served chunk by chunk
        assert np.count_nonzero(np.diff(window)) > 10


def test_a_split_whose_chunks_all_fit_in_the_cache_gets_a_full_permutation():
    from fastimg.train.data import shuffled_order

    ids = np.repeat(np.arange(6), 8)  # 6 chunks, and the reader keeps 6
    np.testing.assert_array_equal(shuffled_order(48, 3, 1, [(ids, 6)]), epoch_order(48, 3, 1))
    assert not np.array_equal(shuffled_order(48, 3, 1, [(ids, 5)]), epoch_order(48, 3, 1))
