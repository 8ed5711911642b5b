"""The training loop and honest evaluation (the run folder's files: :mod:`.run_files`; an
unfinished fit's state: :mod:`.resume`)."""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from fastimg._validation import check_can_write, check_config, file_in_the_way
from fastimg.run_folder import (FEATURE_CACHE_DIR, RESUME_FILE, check_outside_stores,
                                holds_only_leftovers, is_unfinished, remove_cut_short_writes,
                                run_files_in)
from fastimg.store.location import resolve
from fastimg.store.locks import build_lock
from fastimg.train import resume
from fastimg.train.cache import build_cache, feature_cache_bytes, open_cache
from fastimg.train.config import TrainConfig, resolve_device
from fastimg.train.data import (LOADERS, BatchSource, ChunkedReader, Normaliser, StoreData,
                                make_loader, pixel_stats)
from fastimg.train.extractors import check_weights
from fastimg.train.head import build_classifier
from fastimg.train.probe import linear_probe
from fastimg.train.run_files import run_folder, store_name, write_run_files
from fastimg.train.scores import class_scores, confusion_matrix

logger = logging.getLogger("fastimg.train")


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    best_epoch : int
        1-based epoch with the best validation accuracy (its weights are in ``model``);
        selection (best epoch, early stopping, schedule) looks at validation only.
    val_accuracy, test_accuracy : float or None
        Accuracy of the best model on the validation and test splits (None: no such split).
    probe : dict or None
        The linear-probe baseline on the stored embeddings (``C`` chosen on validation,
        ``val_accuracy``, ``test_accuracy``, ...), or None when it was not run.
    history : list of dict
        Per epoch: ``epoch`` (1-based), ``train_loss``, ``train_accuracy``, ``val_loss``,
        ``val_accuracy``, ``lr_head``, ``lr_classifier`` (the rates it started with),
        ``seconds``; validation computed afresh every epoch.
    metrics : dict
        Everything written to ``metrics.json``.
    model : torch.nn.Module
        The classifier with the best epoch's weights, in eval mode.
    run_dir : pathlib.Path or None
    probe_pixels : dict or None
        The same probe on the image pixels (standardised per pixel on the training split).
    selection_biased : bool
        True when the store has no test split: the only figure is the validation accuracy,
        which chose the best epoch (optimistic). ``metrics["reported"]`` names the split.
    """

    best_epoch: int
    val_accuracy: float
    test_accuracy: float | None
    probe: dict | None
    # out of the repr, which a notebook shows: the model's layers and every epoch's metrics
    # made it thousands of characters long
    history: list = field(default_factory=list, repr=False)
    metrics: dict = field(default_factory=dict, repr=False)
    model: nn.Module | None = field(default=None, repr=False)
    run_dir: Path | None = None
    probe_pixels: dict | None = None
    selection_biased: bool = False


class _Run:
    """State of one fit: the model, the optimiser and the batch iterators of each split."""

    def __init__(self, data: StoreData, config: TrainConfig, device: torch.device, run_dir,
                 resume_key: dict | None = None, started: float | None = None):
        self.data, self.config, self.device, self.run_dir = data, config, device, run_dir
        self.resume_key = resume_key  # what the state saved after each epoch is filed under
        # when this process's fit began (time.perf_counter): its total time, and the time
        # saved with a state
        self.started = time.perf_counter() if started is None else started
        self.cache_mode = None  # the feature cache's place, once the fit has chosen it
        cuda = device.type == "cuda"
        self.amp = config.amp and cuda
        self.memory_format = (torch.channels_last if cuda and config.channels_last
                              else torch.contiguous_format)
        self.rows = {s: data.rows(s) for s in ("train", "val", "test")}
        self.images = ChunkedReader(data.images)
        self.loader_name = LOADERS.resolve(config.loader)
        self.embeddings = None
        if config.fuse_embedding:
            if data.embeddings is None:
                raise ValueError(f"{data.path} has no embeddings to fuse")
            self.embeddings = ChunkedReader(data.embeddings)
        # the model first: a weights file it cannot read fails before the pass over the store
        self.model = build_classifier(
            config, data.image_shape, data.n_classes,
            embedding_dim=data.embeddings.shape[1] if config.fuse_embedding else None)
        if config.normalize == "dataset":
            mean, inv_std = pixel_stats(self.images, self.rows["train"])
            self.normaliser = Normaliser("dataset", mean, inv_std)
        else:
            self.normaliser = Normaliser(config.normalize)
        extractor = self.model.extractor
        self.feature_shape = self.model.feature_shape
        self.model.to(device=device, memory_format=self.memory_format)
        self.model.memory_format = self.memory_format
        head_params = [p for m in (self.model.head, self.model.embedding_mlp,
                                   self.model.pixel_mlp, extractor)
                       if m is not None for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer(
            [{"params": head_params, "lr": config.lr_head},
             {"params": list(self.model.classifier.parameters()),
              "lr": config.lr_classifier}], weight_decay=config.weight_decay)
        self.step_scheduler = self.epoch_scheduler = None
        if config.schedule == "cosine":
            total = config.epochs * max(1, -(-self.rows["train"].size // config.batch_size))
            self.step_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total)
                                                                   / total)))
        elif config.schedule == "plateau":
            self.epoch_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max", factor=0.5, patience=1)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss_fn = nn.CrossEntropyLoss()
        self._loaders, self._calls = {}, {}
        self.caches = {}

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def loader(self, split: str, shuffle: bool):
        key = (split, shuffle)
        if key not in self._loaders:
            also_read = (self.embeddings,) if self.embeddings is not None else ()
            source = BatchSource(self.images, self.data.targets, self.rows[split],
                                 self.config.batch_size, shuffle=shuffle, seed=self.config.seed,
                                 also_read=also_read)
            self._loaders[key] = make_loader(self.loader_name, source, self.normaliser,
                                             self.device, num_workers=self.config.num_workers)
            self._calls[key] = 0
        return self._loaders[key]

    def _epoch_of(self, split, shuffle, epoch=None):
        """Batches of the loader of (split, shuffle): the given epoch, or its next pass."""
        loader = self.loader(split, shuffle)
        key = (split, shuffle)
        epoch = self._calls[key] if epoch is None else epoch
        self._calls[key] = epoch + 1
        return loader.epoch(epoch)

    def build_caches(self, where: str, folder=None, *, reuse: bool = False):
        """Compute the frozen extractor's features of every split once (``folder``: where
        the zarr arrays go); with ``reuse``, a split's finished on-disk cache of this fit
        there (a resumed fit's) is read instead."""
        key = None if self.resume_key is None else resume.key_digest(self.resume_key)
        for split, rows in self.rows.items():
            if rows.size:
                path = Path(folder) / split if folder is not None else None
                cache = (open_cache(path, rows, key) if reuse and where == "zarr"
                         and key is not None else None)
                self.caches[split] = cache or build_cache(
                    self.model, self.loader(split, False), rows, where=where,
                    path=path, autocast=self.autocast, progress=self.config.progress,
                    desc=f"features {split}", dtype=self.config.cache_dtype, key=key)
                self._calls[(split, False)] = 1

    def batches(self, split: str, *, train: bool, epoch: int = 0):
        """(inputs, embeddings, targets, images) of one pass over ``split``: ``inputs`` are
        the cached features (``images``: the normalised images the pixel branch needs, else
        None), or the normalised images themselves (``images`` is ``inputs``)."""
        if self.caches:
            cache = self.caches[split]
            n = len(cache)
            # the store's readers this pass reads by row, besides the cache
            also_read = [reader for reader, used in ((self.images, self.model.pixel_mlp),
                                                     (self.embeddings, self.embeddings))
                         if used is not None]
            order = cache.order(self.config.seed, epoch, also_read) if train else np.arange(n)
            size = self.config.batch_size
            for start in range(0, n, size):
                positions = order[start:start + size]
                rows = cache.rows[positions]
                feats = cache.get(positions).to(self.device, non_blocking=True)
                yield (feats.contiguous(memory_format=self.memory_format), self._emb(rows),
                       torch.from_numpy(self.data.targets[rows]).to(self.device),
                       self._pixels(rows))
        else:
            for images, targets, rows in self._epoch_of(split, train, epoch if train else None):
                yield (images, self._emb(np.asarray(rows.cpu())), targets.to(self.device),
                       images)

    def _emb(self, rows):
        if self.embeddings is None:
            return None
        return torch.from_numpy(self.embeddings.read(rows)).to(self.device, non_blocking=True)

    def _pixels(self, rows):
        if self.model.pixel_mlp is None:
            return None
        images = self.normaliser.numpy(self.images.read(rows))
        return torch.from_numpy(images).to(self.device, non_blocking=True)

    def forward(self, inputs, emb, images):
        if inputs is not images:  # cached features
            return self.model.forward_features(inputs, emb, images)
        return self.model(inputs, emb)

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        self.model.train()
        # sums stay on the device: no host sync per step
        total = 0
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        n_batches = -(-self.rows["train"].size // self.config.batch_size)
        bar = tqdm(self.batches("train", train=True, epoch=epoch), total=n_batches,
                   desc=f"epoch {epoch + 1}", leave=False, disable=not self.config.progress)
        for inputs, emb, targets, images in bar:
            if targets.shape[0] < 2:
                continue  # BatchNorm cannot train on a single sample (a last batch of one)
            with self.autocast():
                logits = self.forward(inputs, emb, images)
                loss = self.loss_fn(logits.float(), targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            if self.step_scheduler is not None and self.amp:
                # AMP skips the optimiser step of a batch with inf/NaN gradients (the scale
                # drops): the schedule advances with real steps only (one host sync a step,
                # only with AMP and a per-step schedule)
                scale = self.scaler.get_scale()
                self.scaler.update()
                if self.scaler.get_scale() >= scale:
                    self.step_scheduler.step()
            else:
                self.scaler.update()
                if self.step_scheduler is not None:
                    self.step_scheduler.step()
            loss_sum += loss.detach() * targets.shape[0]
            correct += (logits.detach().argmax(1) == targets).sum()
            total += targets.shape[0]
        return float(loss_sum) / max(1, total), int(correct) / max(1, total)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        self.model.eval()
        preds, trues, loss_sum = [], [], 0.0
        for inputs, emb, targets, images in self.batches(split, train=False):
            with self.autocast():
                logits = self.forward(inputs, emb, images).float()
            loss_sum += float(self.loss_fn(logits, targets)) * targets.shape[0]
            preds.append(logits.argmax(1).cpu().numpy())
            trues.append(targets.cpu().numpy())
        pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
        true = np.concatenate(trues) if trues else np.zeros(0, np.int64)
        n = max(1, true.size)
        return {"rows": int(true.size), "accuracy": float((pred == true).sum() / n),
                "loss": loss_sum / n, "predictions": pred, "targets": true}


def fit(store, config: TrainConfig | None = None, *, out_dir=None,
        overwrite: bool = False, storage_options: dict | None = None) -> TrainResult:
    """Train the image route on a dataset store and evaluate it honestly.

    Parameters
    ----------
    store : str or path
        A store written by ``fastimg build-dataset`` (labels, split, images, embeddings): a
        local path or an fsspec URL (``s3://bucket/imdb.zarr``).
    config : TrainConfig, optional
    out_dir : str or path, optional
        Run folder (:data:`RUN_FILES`), created once training can start (the weights and the
        store are checked first) and removed again when fit fails before writing its files,
        unless it existed before. It holds:

        - ``metrics.json``: per-epoch history, final accuracies, probes, timings;
        - ``best.pt``: the best epoch's ``state_dict`` of the whole classifier (reload with
          ``torch.load(path, weights_only=True)``);
        - ``config.json``: the resolved :class:`TrainConfig`;
        - ``bundle.json``: what :func:`fastimg.train.load_run` (``predict``, ``explain``)
          needs besides ``best.pt``: layout, encoder settings and fingerprint, class names,
          image shape and dtype, normalisation, train config, store path;
        - ``normaliser.npz``: the training split's per-pixel ``mean`` / ``inv_std``
          (``normalize="dataset"`` only);
        - ``feature_cache/``: the on-disk feature cache, when there is one (``cache="zarr"``).

        While the fit runs, ``resume.pt`` holds its state after the last finished epoch
        (:mod:`fastimg.train.resume`): a fit stopped early (Ctrl-C, a killed job) keeps the
        folder with it, and the same fit into the folder goes on after that epoch and ends
        with the numbers of an uninterrupted fit (an on-disk feature cache of it is read
        again, not recomputed). It goes once the run's files are written.
        Without ``out_dir`` nothing is written but an on-disk cache, in a temporary folder
        removed at the end.
    overwrite : bool
        Train into an ``out_dir`` that already holds a run, replacing its files (the earlier
        run's ``feature_cache/``, and its ``normaliser.npz`` when this run writes none, are
        removed), and starting over instead of resuming an unfinished run; without it such a
        folder is refused (before any work), as is one that holds other files (but an
        unfinished run's state, which the fit resumes, and what a fit killed before its
        first epoch left). ``metrics.json`` is written last: a folder without it holds no
        finished run.
    storage_options : dict, optional
        fsspec options for a store URL (``{"endpoint_url": ...}``).

    Returns
    -------
    TrainResult

    Raises
    ------
    TypeError
        ``config`` is not a :class:`TrainConfig` (a dict: ``TrainConfig(**settings)``).
    ValueError
        The store has no labels, no training or validation rows, or settings do not fit it;
        a weights file that is not a torch state_dict
        (:class:`fastimg.train.extractors.StateDictError`).
    FileNotFoundError, IsADirectoryError
        A weights path that does not exist, or is a folder.
    NotADirectoryError
        ``out_dir`` is a file, or lies under one.
    PermissionError
        ``out_dir`` cannot be written (before any work).
    fastimg.store.StoreError
        ``out_dir`` is a store or lies inside one, or another fit is writing into it (before
        any work).
    FileExistsError
        ``out_dir`` holds a run or other files, or the state of an unfinished one with other
        settings or on a store rebuilt since (the message names what differs), or a state
        that cannot be read, and ``overwrite`` is false.
    fastimg.store.StoreError
        The store was replaced or deleted while the fit read it (a ``--force`` rebuild ran
        meanwhile), checked at the end of each epoch and before the run files are written:
        none of them is written; the state of the epochs before (and their cache) is kept.
    fastimg.train.extractors.WeightsUnavailableError
        ImageNet weights are missing and cannot be downloaded.
    ImportError
        ``loader="dali"`` without NVIDIA DALI installed.

    Notes
    -----
    Selection is honest: the best epoch, early stopping and the plateau schedule see the
    validation split only, and the test split is evaluated once, at the end, with the best
    epoch's weights. Without a test split the reported figure is the validation accuracy,
    marked ``selection_biased`` in the metrics.

    The global torch RNG is forked for the run (``torch.random.fork_rng``) and seeded with
    ``config.seed``: initialisation and dropout are reproducible and the caller's random
    state is restored afterwards. Every epoch's order comes from
    ``np.random.default_rng([seed, epoch])``. Neither loader draws from the torch RNG, so one
    seed trains the same model with ``loader="torch"`` or ``"dali"``.
    """
    config = check_config("config", config, TrainConfig)
    check_weights(config.weights)
    store = resolve(store, storage_options)
    run_dir = Path(out_dir) if out_dir is not None else None
    blocker = None if run_dir is None else file_in_the_way(run_dir)
    if blocker is not None:
        raise NotADirectoryError(f"out_dir {run_dir} is a file, not a run folder"
                                 if blocker == run_dir else
                                 f"out_dir {run_dir}: {blocker} is a file, not a folder")
    if run_dir is None:
        return _checked_fit(store, config, run_dir, overwrite)
    check_outside_stores(run_dir)
    check_can_write(run_dir, f"the run folder {run_dir}")
    # a second fit into the folder would delete this one's feature cache and mix its files
    # with this one's: it is refused while this one runs
    with build_lock(run_dir):
        return _checked_fit(store, config, run_dir, overwrite)


def _checked_fit(store, config, run_dir, overwrite) -> TrainResult:
    """:func:`fit` once nothing else writes into ``run_dir``: the checks that read the folder
    and the store, then the fit."""
    # with an unfinished run's state, the run files are its own, cut short while written, or
    # those of the run a --force it was overwrites once it ends: load() checks the state
    if run_dir is not None and not overwrite and not is_unfinished(run_dir):
        _check_unused(run_dir)
    data = StoreData(store)
    for split in ("train", "val"):
        if data.rows(split).size == 0:
            raise ValueError(f"{store} has no {split} rows; training needs train and val splits")
    if data.rows("train").size < 2:
        raise ValueError(f"{store} has 1 train row; training needs at least 2 (BatchNorm "
                         f"cannot train on one sample)")
    device = resolve_device(config.device)
    saved = key = None
    if run_dir is not None:
        key = resume.resume_key(config, data, device, LOADERS.resolve(config.loader))
        if overwrite:
            (run_dir / RESUME_FILE).unlink(missing_ok=True)
        else:
            saved = resume.load(run_dir, key)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        return _fit(data, config, device, run_dir, key, saved)


def _check_unused(run_dir: Path) -> None:
    """Refuse a run folder that holds a run, or any file but what a fit killed before its
    first epoch left (:func:`~fastimg.run_folder.holds_only_leftovers`: the fit removes it)."""
    found = run_files_in(run_dir)
    if found:
        raise FileExistsError(f"out_dir {run_dir} already holds a run ({', '.join(found)}); "
                              f"pass overwrite=True to replace it, or choose another output "
                              f"path")
    if run_dir.is_dir() and not holds_only_leftovers(run_dir):
        raise FileExistsError(f"out_dir {run_dir} is not empty; pass overwrite=True to train "
                              f"into it anyway, or choose another output path")


def _resolve_cache(config: TrainConfig, run: "_Run") -> str:
    """The cache mode: ``"auto"`` keeps the features in memory while they fit
    ``config.cache_budget`` and falls back to zarr on disk otherwise."""
    mode = config.resolved_cache
    if mode != "none" and not run.model.extractor.fully_frozen:
        raise ValueError("the feature cache needs a fully frozen extractor")
    if config.cache == "auto" and mode == "memory":
        need = feature_cache_bytes(sum(int(r.size) for r in run.rows.values()),
                                   run.feature_shape, config.cache_dtype)
        budget = config.cache_budget_bytes
        if need > budget:
            logger.info("feature cache needs %.2f GiB, over the %.2f GiB budget (%s): on disk",
                        need / 2**30, budget / 2**30, config.cache_budget)
            return "zarr"
        logger.info("feature cache in memory: %.2f GiB of a %.2f GiB budget", need / 2**30,
                    budget / 2**30)
    return mode


def _fit(data, config, device, run_dir, key, saved) -> TrainResult:
    """The fit on a checked store: ``key`` is its :func:`~fastimg.train.resume.resume_key`
    (None without a run folder), ``saved`` the state of an unfinished run to go on from."""
    start = time.perf_counter()
    # builds the model: the weights are read here
    run = _Run(data, config, device, run_dir, resume_key=key, started=start)
    # where the features are cached sets the order of an on-disk cache's epochs: a resumed
    # fit keeps the one its epochs had (``auto`` chooses by the machine's RAM)
    cache_mode = saved["cache"] if saved is not None else _resolve_cache(config, run)
    run.cache_mode = cache_mode
    with contextlib.ExitStack() as stack:
        if run_dir is not None:
            stack.enter_context(run_folder(run_dir))
            if saved is None:
                # a previous run's cache (an overwritten run) is never reused: features of
                # another store, extractor or cut, and splits this store may not have; a
                # resumed run's own finished cache is (its key is checked)
                shutil.rmtree(run_dir / FEATURE_CACHE_DIR, ignore_errors=True)
            remove_cut_short_writes(run_dir)  # by a SIGKILL
        folder = None
        if cache_mode == "zarr":
            folder = (run_dir / FEATURE_CACHE_DIR if run_dir is not None else
                      stack.enter_context(tempfile.TemporaryDirectory(prefix="fastimg-cache-")))
        return _train(run, cache_mode, folder, saved)


def _train(run: _Run, cache_mode: str, folder, saved) -> TrainResult:
    """The fit of ``run``: its feature cache (in ``folder`` when on disk), the epochs (after
    those of the ``saved`` state, when there is one), the final evaluation, the probes, and
    the run files when it has a folder."""
    data, config, run_dir = run.data, run.config, run.run_dir
    timings = {}
    epochs = resume.restore(saved, run) if saved is not None else resume.Epochs()
    if cache_mode != "none":
        t0 = time.perf_counter()
        run.build_caches(cache_mode, folder, reuse=saved is not None)
        timings["cache_s"] = time.perf_counter() - t0
    logger.info("training %s (%s weights, cut %s) on %s, loader %s, cache %s, normalise %s, "
                "%s lr %.3g/%.3g wd %.3g schedule %s", config.extractor,
                "random" if config.weights is None else config.weights,
                config.cut, run.device, run.loader_name, cache_mode, config.normalize,
                config.optimizer, config.lr_head, config.lr_classifier, config.weight_decay,
                config.schedule)
    if saved is not None:  # last, as the next epoch of an uninterrupted run would find it
        resume.restore_random_state(saved, run)
    resumed_after = epochs.done if saved is not None else None
    if saved is not None:  # what the processes before this one ran, to their last state
        timings["before_resume_s"] = epochs.elapsed_s
    t0 = time.perf_counter()
    history, best, best_state, stopped_early = _epochs(run, epochs)
    timings["train_s"] = time.perf_counter() - t0
    timings["epoch_s"] = sum(epoch["seconds"] for epoch in history) / len(history)

    run.model.load_state_dict(best_state)
    final, reported = _final_evaluation(run)
    probe = probe_pixels = None
    if config.probe:
        probe = linear_probe(data, seed=config.seed, progress=config.progress)
        probe_pixels = linear_probe(data, features="pixels", seed=config.seed,
                                    progress=config.progress)
    timings["total_s"] = time.perf_counter() - run.started
    metrics = {
        "store": store_name(data), "config": config.to_dict(),
        "extractor": {"name": config.extractor, "weights": config.weights, "cut": config.cut,
                      "feature_shape": list(run.feature_shape),
                      "frozen": run.model.extractor.fully_frozen},
        "device": str(run.device), "loader": run.loader_name, "cache": cache_mode,
        "amp": run.amp, "class_names": data.class_names,
        "rows": {s: int(r.size) for s, r in run.rows.items()},
        "epochs": history, "best_epoch": best + 1, "epochs_run": len(history),
        "stopped_early": stopped_early, "resumed_after_epoch": resumed_after,
        "final": final, "reported": reported,
        "selection_biased": reported["selection_biased"], "probe": probe,
        "probe_pixels": probe_pixels, "timings": timings,
    }
    # the arrays are read by path: a store rebuilt meanwhile gave part of the epochs (and
    # the probes) another build's images, whose layout the bundle would not record
    data.reader.check_unchanged()
    if run_dir is not None:
        write_run_files(run, best_state, metrics)
    run.model.eval()
    return TrainResult(
        best_epoch=best + 1, val_accuracy=final["val"]["accuracy"],
        test_accuracy=None if final["test"] is None else final["test"]["accuracy"],
        probe=probe, history=history, metrics=metrics, model=run.model, run_dir=run_dir,
        probe_pixels=probe_pixels, selection_biased=reported["selection_biased"])


def _epochs(run: _Run, epochs: resume.Epochs):
    """Train epoch after epoch from ``epochs`` on, choosing the best on validation only (the
    test split is never looked at before the end); ``(history, best epoch index, its state on
    the CPU, stopped early)``. With a run folder the state after each epoch is saved there
    (:mod:`~fastimg.train.resume`)."""
    config = run.config
    history, best, best_state = list(epochs.history), epochs.best, epochs.best_state
    stopped_early = epochs.stopped_early
    bar = tqdm(total=config.epochs, initial=epochs.done, desc="train", unit="epoch",
               disable=not config.progress)
    for epoch in range(config.epochs if stopped_early else epochs.done, config.epochs):
        e0 = time.perf_counter()
        lrs = [group["lr"] for group in run.optimizer.param_groups]
        train_loss, train_acc = run.train_epoch(epoch)
        val = run.evaluate("val")
        history.append({"epoch": epoch + 1, "train_loss": train_loss,
                        "train_accuracy": train_acc, "val_loss": val["loss"],
                        "val_accuracy": val["accuracy"], "lr_head": lrs[0],
                        "lr_classifier": lrs[1], "seconds": time.perf_counter() - e0})
        if best is None or val["accuracy"] > history[best]["val_accuracy"]:
            best = epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in
                                        run.model.state_dict().items()})
        if run.epoch_scheduler is not None:
            run.epoch_scheduler.step(val["accuracy"])
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val['accuracy']:.3f}")
        logger.info("epoch %d: train loss %.4f, val accuracy %.4f", epoch + 1, train_loss,
                    val["accuracy"])
        bar.update()
        stopped_early = bool(config.patience and epoch - best >= config.patience)
        if run.run_dir is not None:
            # a state is saved only from epochs that read one build of the store
            run.data.reader.check_unchanged()
            resume.save(run.run_dir, run.resume_key, run, resume.Epochs(
                epoch + 1, history, best, best_state, stopped_early,
                epochs.elapsed_s + time.perf_counter() - run.started))
        if stopped_early:
            logger.info("early stop after epoch %d: no validation gain for %d epochs",
                        epoch + 1, config.patience)
            break
    bar.close()
    return history, best, best_state, stopped_early


def _final_evaluation(run: _Run) -> tuple[dict, dict]:
    """``(final, reported)``: the best epoch's val and test figures, and the one to report
    (test's; val's, marked selection-biased, when the store has no test split)."""
    final = {}
    for split in ("val", "test"):
        if run.rows[split].size:
            result = run.evaluate(split)
            confusion = confusion_matrix(result["targets"], result["predictions"],
                                         run.data.n_classes)
            final[split] = {"rows": result["rows"], "accuracy": result["accuracy"],
                            "loss": result["loss"], "confusion_matrix": confusion.tolist(),
                            **class_scores(confusion, run.data.class_names),
                            # the best epoch was chosen on val: its figure is optimistic
                            "selection_biased": split == "val"}
        else:
            final[split] = None
    has_test = final["test"] is not None
    shown = final["test" if has_test else "val"]
    reported = {"split": "test" if has_test else "val", "accuracy": shown["accuracy"],
                "macro_f1": shown["macro_f1"], "balanced_accuracy": shown["balanced_accuracy"],
                "selection_biased": not has_test}
    if not has_test:
        reported["note"] = ("the store has no test split: the validation accuracy chose the "
                            "best epoch and is optimistic; build with --test-fraction to carve "
                            "a test split")
        logger.warning("%s has no test split: the reported validation accuracy is "
                       "selection-biased", run.data.path)
    return final, reported
