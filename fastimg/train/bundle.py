"""The run bundle: everything a run folder needs to predict and explain without its store.

:func:`save_run_bundle` writes, beside ``best.pt``:

- ``bundle.json``: the fitted layout (``DeepInsightLayout.to_dict()``), the encoder settings and
  the model fingerprint they were encoded with, the resolved encoder layers and hidden size,
  the class names, the image shape and dtype, the normalisation mode, the train config and the
  store path (which ``explain`` reads its split from);
- ``normaliser.npz``: the per-pixel ``mean`` / ``inv_std`` of the training split (``dataset``
  normalisation only), read back with ``allow_pickle=False``.

Nothing is pickled: JSON and plain numpy arrays only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from fastimg._files import replace_file
from fastimg.run_folder import (BUNDLE_FILE, CHECKPOINT_FILE, NORMALISER_FILE, RESUME_ADVICE,
                                is_unfinished, why_not_a_run)

logger = logging.getLogger("fastimg.train")

#: bumped when the bundle's fields change incompatibly
BUNDLE_VERSION = 1
#: what :func:`save_run_bundle` writes, and :func:`read_run_bundle` requires
BUNDLE_KEYS = ("bundle_version", "store", "class_names", "image_shape", "image_dtype",
               "n_features", "encoder", "model_fingerprint", "layers", "hidden_size", "layout",
               "normalize", "train_config")


#: ``{file: sha256}`` of the files written before ``bundle.json`` (``best.pt``,
#: ``normaliser.npz``): a reader checks it reads the files of this bundle (absent in runs
#: written before it, which are read unchecked)
SHA256_KEY = "sha256"


class RunBundleError(ValueError):
    """A run folder that cannot be used for prediction (missing or foreign files)."""


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(run_dir, name: str, bundle: dict) -> None:
    """Raise :class:`RunBundleError` when the file ``name`` of ``run_dir`` is not the one its
    ``bundle`` was written with: a ``train --force`` rewrote the run while it was read (the
    bundle of one run and the weights of the other), or files were copied from another
    run."""
    expected = (bundle.get(SHA256_KEY) or {}).get(name)
    path = Path(run_dir) / name
    if expected is not None and file_sha256(path) != expected:
        raise RunBundleError(being_written(run_dir) or (
            f"{path} is not the file {BUNDLE_FILE} was written with (a train rewrote the run "
            f"while it was read, or it comes from another run): run the command again once "
            f"no train writes the folder"))


def being_written(run_dir) -> str | None:
    """A message naming the train writing ``run_dir`` now (it holds the folder's lock), or
    None: what a reader says when it finds the run's files missing or mismatched."""
    from fastimg.store.locks import lock_holder

    holder = lock_holder(run_dir)
    if holder is None:
        return None
    return (f"{run_dir} is being written by a train ({holder}): run this again once it has "
            f"finished")


def save_run_bundle(run_dir, data, normaliser, config) -> Path:
    """Write ``bundle.json`` (and ``normaliser.npz``) into ``run_dir``.

    Parameters
    ----------
    run_dir : str or path
    data : fastimg.train.data.StoreData
        The training store (its reader gives the layout, encoder settings and provenance).
    normaliser : fastimg.train.data.Normaliser
    config : fastimg.train.TrainConfig

    Returns
    -------
    pathlib.Path
        The path of ``bundle.json``.
    """
    run_dir = Path(run_dir)
    reader = data.reader
    configs = reader.configs
    provenance = reader.provenance
    # the precision as the build resolved it, so predict encodes as the store did
    encoder = reader.encoder_config().to_dict() if configs.get("encoder") else None
    layers = provenance.get("layers")
    layout = reader.attrs.get("layout")
    n_features = int(data.embeddings.shape[1]) if data.embeddings is not None else None
    if n_features is None and layout:
        n_features = len(layout["pixel_index"])
    hidden = None
    if n_features and layers:
        hidden = n_features // len(layers)
    bundle = {
        "bundle_version": BUNDLE_VERSION,
        # a local store by its absolute path, an object store by its URL (never credentials)
        "store": (os.fspath(reader.path.resolve()) if isinstance(reader.path, Path)
                  else str(reader.path)),
        "class_names": list(data.class_names),
        # integer labels: the stored value of each class (predict matches labels by it)
        "class_values": reader.class_values,
        "image_shape": list(data.image_shape),
        "image_dtype": str(np.dtype(data.images.dtype)),
        "n_features": n_features,
        "encoder": encoder,
        "model_fingerprint": provenance.get("model_fingerprint"),
        "layers": list(layers) if layers else None,
        "hidden_size": hidden,
        "layout": layout,
        "normalize": normaliser.mode,
        "train_config": config.to_dict(),
        # the columns its texts were read from: predict reads a table's the same way
        "text_columns": (configs.get("corpus") or {}).get("text_columns"),
    }
    if normaliser.mode == "dataset":  # through a file object: np.savez adds .npz to a path
        stats = {"mean": np.asarray(normaliser.mean, np.float32),
                 "inv_std": np.asarray(normaliser.inv_std, np.float32)}
        replace_file(run_dir / NORMALISER_FILE, lambda tmp: _write_npz(tmp, stats))
    bundle[SHA256_KEY] = {name: file_sha256(run_dir / name)
                          for name in (CHECKPOINT_FILE, NORMALISER_FILE)
                          if name == CHECKPOINT_FILE or normaliser.mode == "dataset"}
    path = run_dir / BUNDLE_FILE
    # whole or not at all: a reader never sees half a file
    replace_file(path, lambda tmp: tmp.write_text(json.dumps(bundle, indent=1),
                                                  encoding="utf-8"))
    logger.info("run bundle written to %s", path)
    return path


def _write_npz(path, arrays: dict) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def read_run_bundle(run_dir) -> tuple[dict, dict | None]:
    """``(bundle, stats)`` of a run folder; ``stats`` holds ``mean``/``inv_std`` or is None.

    Raises
    ------
    RunBundleError
        When the folder, ``bundle.json``, ``best.pt`` or ``normaliser.npz`` is missing (a run
        from an older fastimg), ``bundle.json`` or ``normaliser.npz`` is unreadable, or the
        bundle is of another version.
    """

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunBundleError(f"run folder {run_dir} "
                             f"{'is a file' if run_dir.exists() else 'does not exist'}")
    path = run_dir / BUNDLE_FILE
    if not path.is_file():
        raise RunBundleError(being_written(run_dir) or (
            f"{run_dir} holds a training run that did not finish (no {BUNDLE_FILE} yet): "
            f"{RESUME_ADVICE}" if is_unfinished(run_dir) else why_not_a_run(run_dir)))
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise RunBundleError(being_written(run_dir) or (
            f"{run_dir} has no {CHECKPOINT_FILE}: its training did not finish"))
    try:
        bundle = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunBundleError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(bundle, dict):
        raise RunBundleError(f"{path} holds a JSON {type(bundle).__name__}, not a run bundle: "
                             f"train the run again")
    if bundle.get("bundle_version") != BUNDLE_VERSION:
        raise RunBundleError(f"{path} is of bundle version {bundle.get('bundle_version')}; this "
                             f"fastimg reads version {BUNDLE_VERSION}: train the run again")
    missing = [key for key in BUNDLE_KEYS if key not in bundle]
    if missing:
        raise RunBundleError(f"{path} lacks {', '.join(missing)} (edited or cut short?): train "
                             f"the run again")
    stats = None
    if bundle.get("normalize") == "dataset":
        npz = run_dir / NORMALISER_FILE
        if not npz.is_file():
            raise RunBundleError(f"{run_dir} has no {NORMALISER_FILE} (dataset normalisation "
                                 f"statistics): train the run again")
        stats = _read_stats(npz, bundle.get("image_shape"))
        check_sha256(run_dir, NORMALISER_FILE, bundle)
    return bundle, stats


def _read_stats(path: Path, image_shape) -> dict:
    """``mean`` and ``inv_std`` of ``normaliser.npz``, checked against the run's image shape.

    Raises
    ------
    RunBundleError
        When the file is unreadable (truncated, corrupt, not an npz of plain arrays) or its
        arrays are missing or of another shape; the message names the file.
    """
    try:
        # our own handle: np.load leaves its own open when the zip is unreadable
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            stats = {"mean": f["mean"], "inv_std": f["inv_std"]}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        why = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if isinstance(exc, ValueError) and "pickled" in str(exc):
            why = "not an npz of plain arrays"  # numpy's text suggests allow_pickle: unsafe
        raise RunBundleError(f"{path} is unreadable (truncated or corrupt? {why}): train the "
                             f"run again") from None
    shapes = {name: tuple(array.shape) for name, array in stats.items()}
    if image_shape is not None and set(shapes.values()) != {tuple(image_shape)}:
        raise RunBundleError(f"{path} holds statistics of shape {shapes}, not of the run's "
                             f"{tuple(image_shape)} images: train the run again")
    return stats
