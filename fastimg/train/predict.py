"""A trained run, reloaded from its folder alone: texts -> class probabilities.

>>> from fastimg.train import load_run
>>> run = load_run("runs/alex")                                   # doctest: +SKIP
>>> pred = run.predict(["A quiet, lovely film."])                 # doctest: +SKIP
>>> pred.names, pred.probabilities                                # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fastimg._validation import check_count, check_finite_rows
from fastimg.run_folder import BUNDLE_FILE, CHECKPOINT_FILE
from fastimg.train.bundle import RunBundleError, check_sha256, read_run_bundle
from fastimg.train.config import SETTINGS

logger = logging.getLogger("fastimg.train")

#: texts :meth:`Run.predict` encodes and classifies at a time (rounded to whole batches)
PREDICT_BLOCK_ROWS = 4_096


@dataclass(repr=False)
class Prediction:
    """What :meth:`Run.predict` returns.

    Attributes
    ----------
    indices : ndarray of int64, shape (n,)
        Predicted class index of each text.
    names : list of str
        Predicted class name of each text.
    probabilities : ndarray of float32, shape (n, n_classes)
        Softmax of the classifier's logits; columns follow ``class_names``.
    class_names : list of str
    """

    indices: np.ndarray
    names: list
    probabilities: np.ndarray
    class_names: list

    def __repr__(self) -> str:
        # the dataclass's repr listed every name (and numpy every probability up to 1,000):
        # a page per few hundred texts in a notebook
        shown = self.names
        names = (repr(list(shown)) if len(shown) <= 6 else
                 "[" + ", ".join(map(repr, shown[:3])) + ", ..., "
                 + ", ".join(map(repr, shown[-3:])) + "]")
        probabilities = np.asarray(self.probabilities)
        return (f"Prediction({len(shown)} rows, names={names}, probabilities="
                f"<{probabilities.dtype} {probabilities.shape}>, "
                f"class_names={list(self.class_names)})")

    def score(self, targets) -> dict:
        """How these predictions fare against the true classes ``targets``.

        Parameters
        ----------
        targets : array-like of int, shape (n,)
            The class index of each text (:meth:`Run.targets` maps labels to them).

        Returns
        -------
        dict
            ``rows``, ``accuracy``, ``confusion_matrix`` (``[n_classes, n_classes]`` counts as
            a list of lists; row = true class, column = predicted), and the per-class precision,
            recall, F1 and support with their macro F1 and balanced accuracy
            (:func:`fastimg.train.scores.class_scores`).

        Raises
        ------
        TypeError
            For targets that are no whole numbers (class names, ``"1"``, ``1.5``, booleans).
        ValueError
            For a count or shape other than the predictions', or an index out of range.
        """
        from fastimg.train.scores import class_scores, confusion_matrix

        given = np.asarray(targets)
        # dtype=int64 took "1" as 1, 1.9 as 1 and True as 1: labels, not class indices
        whole = given.dtype.kind in "iu" or (given.dtype.kind == "f" and bool(
            np.all(np.isfinite(given)) and np.all(given == np.round(given))))
        if given.size and not whole:
            raise TypeError(f"targets are class indices (whole numbers 0.."
                            f"{len(self.class_names) - 1}), got {given.dtype} values; map "
                            f"labels (class names or values) to them with Run.targets(labels)")
        if given.shape != np.shape(self.indices):
            what = f"of shape {'x'.join(map(str, given.shape))}" if given.ndim else "are a scalar"
            n = len(self.indices)
            raise ValueError(f"targets {what} for {n} "
                             f"prediction{'s' * (n != 1)}; give one class index per prediction")
        # the range as given: the cast took 1e30 to int64's least value
        if given.size and not 0 <= given.min() <= given.max() < len(self.class_names):
            raise ValueError(f"targets are class indices 0..{len(self.class_names) - 1} (one "
                             f"per class of {_shown_classes(self.class_names, None)}), got "
                             f"{given.min():.0f}..{given.max():.0f}; map labels (class names "
                             f"or values) to them with Run.targets(labels)")
        targets = given.astype(np.int64)
        confusion = confusion_matrix(targets, self.indices, len(self.class_names))
        accuracy = float(np.mean(targets == self.indices)) if targets.size else None
        # the keys of a split's figures in metrics.json
        return {"rows": int(targets.size), "accuracy": accuracy,
                "confusion_matrix": confusion.tolist(),
                **class_scores(confusion, self.class_names)}


def _read_checkpoint(path: Path) -> dict:
    """The state_dict in a run's ``best.pt``.

    Raises
    ------
    RunBundleError
        When torch cannot read it (truncated or corrupt), naming the file.
    """
    from fastimg.train.extractors import StateDictError, load_state_dict

    try:
        return load_state_dict(path)
    except StateDictError as exc:
        raise RunBundleError(f"{path} is unreadable (truncated or corrupt? {exc}): train the "
                             f"run again") from None


class Run:
    """A run folder reloaded: layout, encoder settings, normalisation and the classifier.

    Build it with :func:`load_run`. The classifier is rebuilt with a randomly initialised
    extractor (nothing is downloaded) and ``best.pt`` is loaded over all of it: the checkpoint
    holds the whole classifier, extractor included, so ImageNet weights are never needed.

    Parameters
    ----------
    run_dir, device, model
        As :func:`load_run` takes them.

    Attributes
    ----------
    run_dir : pathlib.Path
    device : torch.device
        Where the classifier (and the encoder, once texts come) runs.
    image_shape : tuple of int
        ``(H, W)`` of the run's images.
    text_columns : list of str or None
        The training store's text columns, joined as its build joined them (None: a run of
        a store of images, or from before fastimg recorded them).
    bundle : dict
        The contents of ``bundle.json``.
    config : fastimg.train.TrainConfig
    class_names : list of str
    class_values : list of int or None
        The stored label value of each class for a store built from integer labels (IMDB's
        0 / 1 for neg / pos), which :meth:`targets` matches integer labels by; None for text
        labels, and for runs trained before bundles recorded them.
    layout : fastimg.layout.DeepInsightLayout
    normaliser : fastimg.train.data.Normaliser
    model : fastimg.train.head.ImageClassifier
        In eval mode, on ``device``.
    store_path : str or None
        The training store (used by ``explain``; prediction never reads it).
    encoder_model : str or None
        Where the encoder is now (a folder or hub id) when it is not where the store was built;
        None: the recorded one. Its weights are checked against the recorded fingerprint.
    """

    def __init__(self, run_dir, *, device: str = "cpu", model=None):
        from fastimg.layout import DeepInsightLayout
        from fastimg.train.config import TrainConfig
        from fastimg.train.data import Normaliser

        self.run_dir = Path(check_run_dir(run_dir))
        self.encoder_model = None if model is None else os.fspath(model)
        self.bundle, stats = read_run_bundle(self.run_dir)
        try:
            self.config = TrainConfig.from_dict(self.bundle["train_config"])
        except (TypeError, ValueError) as exc:
            raise RunBundleError(f"{self.run_dir / BUNDLE_FILE}: its training settings are "
                                 f"refused ({exc}); train the run again") from None
        self.class_names = [str(n) for n in self.bundle["class_names"]]
        # the stored label value of each class (integer labels; None: text labels, or older)
        self.class_values = self.bundle.get("class_values")
        self.image_shape = tuple(self.bundle["image_shape"])
        self.store_path = self.bundle.get("store")
        # the training store's text columns (None: a run of an images store, or older)
        self.text_columns = self.bundle.get("text_columns")
        self.layout = (DeepInsightLayout.from_dict(self.bundle["layout"])
                       if self.bundle.get("layout") else None)
        if stats is not None:
            self.normaliser = Normaliser("dataset", stats["mean"], stats["inv_std"])
        else:
            self.normaliser = Normaliser(self.bundle["normalize"])
        from fastimg.train.config import resolve_device

        self.device = resolve_device(device)
        self.model = self._build_model()
        self._encoder = None  # loaded at the first texts, then kept for the next calls

    def __repr__(self) -> str:
        return (f"Run({str(self.run_dir)!r}, extractor={self.config.extractor!r}, "
                f"classes={self.class_names}, image_shape={self.image_shape}, "
                f"device={str(self.device)!r})")

    def _build_model(self):
        from fastimg.train.head import build_classifier

        # random init on purpose: best.pt overwrites every parameter and buffer of the cut
        model = build_classifier(self.config, self.image_shape, len(self.class_names),
                                 embedding_dim=self.bundle["n_features"], weights=None)
        state = _read_checkpoint(self.run_dir / CHECKPOINT_FILE)
        # after the load: a best.pt replaced before or during it differs from the bundle's
        check_sha256(self.run_dir, CHECKPOINT_FILE, self.bundle)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            # settings added since the run was trained took today's defaults, which can
            # describe another model (a run from before pixel_branch gets a pixel branch)
            unset = sorted(set(SETTINGS) - set(self.bundle["train_config"]))
            if unset:
                raise RunBundleError(
                    f"{self.run_dir} was trained by an older fastimg, whose model this one does "
                    f"not rebuild (its {BUNDLE_FILE} predates the training settings "
                    f"{', '.join(unset)}): train the run again") from None
            first = str(exc).strip().splitlines()[0]
            raise RunBundleError(f"{self.run_dir / CHECKPOINT_FILE} does not fit the run's "
                                 f"config.json ({first})") from None
        return model.to(self.device).eval()

    # -- the text route -----------------------------------------------------------------
    def encoder_config(self):
        """The :class:`~fastimg.embed.EncoderConfig` of the training store (its model where
        :attr:`encoder_model` says, when given)."""
        from fastimg.embed import EncoderConfig

        if not self.bundle.get("encoder") or self.layout is None:
            raise RunBundleError(f"{self.run_dir} was trained on a store not built from texts "
                                 f"(no encoder settings or layout): it cannot predict texts")
        config = EncoderConfig.from_dict(self.bundle["encoder"])
        if self.encoder_model is not None:
            config = replace(config, model=self.encoder_model)
        return config

    def check_model(self) -> None:
        """Refuse an encoder whose weights differ from those the store was encoded with.

        Raises
        ------
        RunBundleError
            When the installed model's fingerprint differs from the recorded one.
        ModelNotAvailableError
            When the recorded model is gone (a moved folder: ``model=`` / ``--model`` names
            where it is now).
        """
        from fastimg.embed import ModelNotAvailableError, resolve_model

        config = self.encoder_config()
        recorded = self.bundle.get("model_fingerprint")
        if not recorded:
            logger.warning("%s records no model fingerprint; the encoder is not checked",
                           self.run_dir)
            return
        try:
            source = resolve_model(config.model, config.revision)
        except ModelNotAvailableError as exc:
            if self.encoder_model is not None:
                raise
            raise ModelNotAvailableError(
                f"{exc} (moved? predict --model FOLDER, or load_run(..., model=FOLDER), "
                f"names where it is now; its weights are checked against the run's)") from None
        found = source.fingerprint()
        if found != recorded:
            raise RunBundleError(
                f"encoder {config.model!r} has fingerprint {found[:12]}, but {self.run_dir} was "
                f"trained on embeddings from fingerprint {recorded[:12]}: install the same "
                f"model weights (predictions from other weights would be meaningless)")

    def encode_chunks(self, texts, *, progress: bool = False):
        """Embeddings of ``texts`` a chunk at a time: the store's encoder (its fingerprint
        checked first, before this returns) on this run's device.

        Parameters
        ----------
        texts : iterable of str
            The texts, read into a list first.
        progress : bool
            A progress bar over the texts.

        Returns
        -------
        iterator of (int, int, ndarray)
            ``(start, stop, embeddings of texts[start:stop])`` in order, as
            :func:`fastimg.embed.encode_chunks` gives them.

        Raises
        ------
        RunBundleError
            A model fingerprint mismatch, or a run trained on a store not built from texts.
        fastimg.embed.ModelNotAvailableError
            The run's encoder cannot be found here.
        """
        from fastimg.embed import encode_chunks, load_model

        config = self.encoder_config().on_device(self.device.type)
        self.check_model()
        if self._encoder is None:  # once: a caller predicting in a loop loaded it every call
            self._encoder = load_model(config.model, config.revision)
        return encode_chunks(list(texts), config, model=self._encoder, progress=progress)

    def images_of(self, features) -> np.ndarray:
        """The float32 images of embeddings, as the training loader saw them: the store's
        layout and image dtype (stored as that dtype, read back).

        Parameters
        ----------
        features : array-like of shape (n, n_features)
            Embeddings of the store's width (its encoder's, as :meth:`encode_chunks` gives).

        Returns
        -------
        ndarray of float32, shape (n, H, W)
            Un-normalised, as :meth:`logits` takes them (``uint8`` images read in [0, 1]).
        """
        from fastimg.raster import to_image_dtype
        from fastimg.train.data import as_loaded

        return as_loaded(to_image_dtype(self.layout.transform(features),
                                        self.bundle["image_dtype"]))

    def predict(self, texts, *, batch_size: int = 256, progress: bool = False) -> Prediction:
        """Class and probabilities of each text.

        Parameters
        ----------
        texts : sequence of str
        batch_size : int
            Images per forward pass.
        progress : bool
            Progress bars while encoding and while classifying.

        Returns
        -------
        Prediction
            One entry per text (none for no texts).

        Raises
        ------
        TypeError
            ``texts`` is one str, a mapping, or holds an item that is no str.
        ValueError
            ``batch_size`` below 1, or a text with a lone surrogate.
        RunBundleError
            A model fingerprint mismatch, or a run trained on a store not built from texts.
        fastimg.embed.ModelNotAvailableError
            The run's encoder cannot be found here (give its new place: ``load_run(...,
            model=PATH)``).
        """
        from fastimg.embed.texts import check_texts

        texts = check_texts(texts)  # one str, a dict, a non-str item: refused
        check_count("batch_size", batch_size)  # before encoding, not after
        if not texts:  # an empty last batch of a caller's loop: an empty answer
            return Prediction(np.empty(0, dtype=np.int64), [],
                              np.empty((0, len(self.class_names)), dtype=np.float32),
                              list(self.class_names))
        # the texts are encoded and classified a block at a time, so memory stays at a block
        # (at 50 x 50 and 2,304 features, 100,000 texts took 1 GB of float32 images and 0.46
        # GB of embeddings); a block is whole batches, so the classifier sees the batches of
        # a single pass
        block = batch_size * max(1, PREDICT_BLOCK_ROWS // batch_size)
        logits = np.empty((len(texts), len(self.class_names)), dtype=np.float32)
        held, done, stop = [], 0, 0  # embeddings not yet classified; rows classified, encoded
        # closed on an error too: the encoder's tokeniser thread stops with it
        # the encoder is checked (encode_chunks) before any progress bar is drawn
        with contextlib.closing(self.encode_chunks(texts, progress=progress)) as chunks, \
                _bar(len(texts), progress) as bar:
            for _, stop, features in chunks:
                held.append(features)
                while stop - done >= block or (stop == len(texts) and stop > done):
                    features = np.concatenate(held) if len(held) > 1 else held[0]
                    part = features[:block]
                    logits[done:done + len(part)] = self._logits(self.images_of(part), part,
                                                                 batch_size, bar)
                    held, done = [features[len(part):]], done + len(part)
        if stop != len(texts):  # never classify rows the encoder did not give
            raise RuntimeError(f"the encoder gave {stop} of {len(texts)} embeddings")
        return self._prediction(logits)

    def logits(self, images, embeddings=None, *, batch_size: int = 256,
               progress: bool = False) -> np.ndarray:
        """float32 logits of raw (un-normalised) images, as stored.

        Parameters
        ----------
        images : array-like of shape (n, H, W)
            Images of the run's image shape; ``uint8`` ones are read in [0, 1], as the trainer
            read them, float ones as they are.
        embeddings : array-like of shape (n, n_features), optional
            One row per image: needed by a run that fuses the embedding, ignored otherwise.
        batch_size : int
            Images per forward pass.
        progress : bool
            A progress bar over the images.

        Returns
        -------
        ndarray of float32, shape (n, n_classes)
            One row per image, in the order of :attr:`class_names`.

        Raises
        ------
        ValueError
            ``batch_size`` below 1, images of another shape or with a non-finite value, or
            embeddings missing or not one row per image of the store's width (fused runs).
        """
        check_count("batch_size", batch_size)
        with _bar(len(images), progress) as bar:
            return self._logits(images, embeddings, batch_size, bar)

    @torch.no_grad()
    def _logits(self, images, embeddings, batch_size: int, bar) -> np.ndarray:
        from fastimg.train.data import as_loaded

        images = np.asarray(images)
        # as the trainer read them: a uint8 store's images in [0, 1], not 0..255
        images = (as_loaded(images) if images.dtype == np.uint8
                  else images.astype(np.float32, copy=False))
        if images.shape[1:] != self.image_shape:
            raise ValueError(f"images of shape {images.shape[1:]} given to a run trained on "
                             f"{self.image_shape}")
        # NaN logits would still name a class (argmax), a confident answer of no meaning
        check_finite_rows(images.reshape(images.shape[0], images[0].size if len(images) else 0),
                          "the image array")  # no images: no predictions, as predict([])
        if self.config.fuse_embedding:  # else torch's errors from inside the model
            self._check_embeddings(embeddings, images.shape[0])
        out = np.empty((images.shape[0], len(self.class_names)), dtype=np.float32)
        for start in range(0, images.shape[0], batch_size):
            x = self.normaliser(torch.from_numpy(images[start:start + batch_size]).to(self.device))
            emb = None
            if self.config.fuse_embedding:
                emb = torch.from_numpy(np.asarray(embeddings[start:start + batch_size],
                                                  dtype=np.float32)).to(self.device)
            out[start:start + x.shape[0]] = self.model(x, emb).float().cpu().numpy()
            bar.update(x.shape[0])
        return out

    def _check_embeddings(self, embeddings, n_images: int) -> None:
        """Refuse embeddings that do not fit the images of a run that fuses them."""
        if embeddings is None:
            raise ValueError("this run fuses the embedding: give the embeddings too")
        shape = np.shape(embeddings)  # a zarr array's shape, without reading it
        expected = (n_images, self.bundle["n_features"])
        if tuple(shape) != expected:
            raise ValueError(f"embeddings of shape {tuple(shape)} given with {n_images} "
                             f"images; this run fuses embeddings of {expected[1]} features, "
                             f"one row per image: shape {expected}")

    def predict_images(self, images, embeddings=None, *, batch_size: int = 256,
                       progress: bool = False) -> Prediction:
        """:class:`Prediction` of raw ``[n, H, W]`` images (and embeddings for fused runs).

        Parameters
        ----------
        images, embeddings, batch_size, progress
            As :meth:`logits` takes them.

        Returns
        -------
        Prediction
            One entry per image (none for no images).

        Raises
        ------
        ValueError
            When the images are not of the run's image shape, or a run that fuses the
            embedding is given none, or embeddings that are not one row per image of the
            store's width.
        """
        return self._prediction(self.logits(images, embeddings, batch_size=batch_size,
                                            progress=progress))

    def targets(self, labels) -> np.ndarray:
        """The class index of each of ``labels``, as ``build-dataset`` read the training
        store's labels: a class's name (``"pos"``), or its integer value for a store built
        from integer labels (``1``, ``"1"`` or ``1.0``).

        Parameters
        ----------
        labels : iterable
            One label per text (a list, an array, a column, a generator).

        Returns
        -------
        ndarray of int64, shape (n,)
            Indices into :attr:`class_names`, for :meth:`Prediction.score`.

        Raises
        ------
        TypeError
            For one label given alone (``"pos"``, ``1``) rather than one per text.
        ValueError
            Naming the labels that are no class of the run (or missing), with their counts.
            A run from before the bundle recorded the class values (``class_values``) knows
            its classes by name only.
        """
        return class_indices(labels, self.class_names, self.class_values,
                             values_recorded="class_values" in self.bundle)

    def _prediction(self, logits: np.ndarray) -> Prediction:
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        indices = probs.argmax(1).astype(np.int64) if probs.size else np.zeros(0, np.int64)
        return Prediction(indices, [self.class_names[i] for i in indices], probs,
                          list(self.class_names))


class _Missing:
    """How :func:`class_indices` names a missing label (empty, NaN or None)."""

    def __repr__(self) -> str:
        return "a missing label"


_MISSING = _Missing()

#: characters of a label :func:`class_indices` shows (a text column given as the labels)
_SHOWN_CHARS = 40


def _shown_label(label) -> str:
    text = repr(label)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 3] + "..."


#: what :func:`class_indices` asks of labels it refuses
_FIX_LABELS = "; correct those rows or leave them out"


def _shown_classes(class_names, class_values) -> str:
    """The classes a label may name: ``neg (0), pos (1)`` where they have values."""
    shown = [name if value is None or name == str(value) else f"{name} ({value})"
             for name, value in zip(class_names, class_values or [None] * len(class_names))]
    more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
    return ", ".join(shown[:10]) + more


def _integer_of(label) -> int | None:
    """The integer a label is (``1``, ``"1"``, ``1.0``, ``np.int64(1)``), or None: text, a
    fraction, a missing label (``as_integer``'s ``False`` for a fraction is told from ``0`` by
    identity)."""
    from fastimg.corpus.cells import as_integer, is_missing_label

    if isinstance(label, np.generic):
        label = label.item()
    if is_missing_label(label):
        return None
    number = as_integer(label)
    return None if number is None or number is False else number


def class_indices(labels, class_names, class_values=None, *,
                  values_recorded: bool = True) -> np.ndarray:
    """int64 index into ``class_names`` of each label: an integer label by ``class_values``
    (the stored value of each class) when they are given, any other by its name (``1.0`` is
    ``"1"``, text is stripped). ValueError naming the labels that match no class; with
    ``values_recorded`` false (a run from before bundles recorded class values), one that
    holds integer labels while the classes have other names says why they are unknown."""
    from collections.abc import Hashable

    from fastimg.corpus.cells import class_name, is_missing_label

    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__") or getattr(
            labels, "ndim", None) == 0:  # a 0-d array or tensor has __iter__, and fails in it
        raise TypeError(f"labels are one label per text (a list, an array, a column), got "
                        f"{type(labels).__name__} {_shown_label(labels)}")
    labels = list(labels)  # a generator has no len()
    names = {name: k for k, name in enumerate(class_names)}
    values = {int(v): k for k, v in enumerate(class_values)} if class_values else {}

    def class_of(label) -> int:
        number = _integer_of(label)
        if values and number is not None:
            return values.get(number, -1)
        return names.get(class_name(label), -1)

    index, unknown = {}, {}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        if isinstance(label, np.generic):  # np.int64(5) is shown as 5
            label = label.item()
        missing = is_missing_label(label)
        key = _MISSING if missing else label if isinstance(label, Hashable) else repr(label)
        if key not in index:
            index[key] = -1 if missing else class_of(label)
        out[i] = index[key]
        if out[i] < 0:
            unknown[key] = unknown.get(key, 0) + 1
    if unknown:
        shown = ", ".join(f"{repr(label) if label is _MISSING else _shown_label(label)} "
                          f"({count} row{'s' * (count != 1)})"
                          for label, count in list(unknown.items())[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        advice = _FIX_LABELS
        # classes named 3 / 7 match integer labels by name: those of neg / pos may not
        if not values_recorded and not all(_integer_of(name) is not None
                                           for name in class_names) and any(
                _integer_of(label) is not None for label in labels):
            advice = (f"; this run's {BUNDLE_FILE} is older than the class values it now "
                      f"records, so integer labels are unknown to it: give the class names, "
                      f"or train the run again")
        raise ValueError(f"labels that are no class of the run "
                         f"({_shown_classes(class_names, class_values)}): {shown}{more}"
                         f"{advice}")
    return out


def _bar(total: int, progress: bool):
    """The classifier pass's progress bar (off without ``progress``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="classify", unit="img", disable=not progress)


def check_run_dir(run_dir):
    """``run_dir`` when it is a path (str or ``os.PathLike``), else a TypeError naming it
    (pathlib's named neither; a :class:`Run` given for its folder is told to pass its
    ``run_dir``)."""
    if isinstance(run_dir, Run):
        raise TypeError(f"run_dir is a run folder's path, got a Run: pass its run_dir "
                        f"({run_dir.run_dir})")
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir is a run folder's path, got {type(run_dir).__name__}")
    return run_dir


def load_run(run_dir, *, device: str = "cpu", model=None) -> Run:
    """Reload a run folder written by :func:`fastimg.train.fit` (``out_dir``).

    Parameters
    ----------
    run_dir : str or path
    device : str
        Where the encoder and the classifier run (int8 encodes on the CPU): ``"cpu"`` (the
        default; ``fastimg predict --device`` defaults to ``"auto"``), ``"cuda[:N]"`` or
        ``"auto"`` (CUDA when torch sees a GPU).
    model : str or path, optional
        The encoder (a folder or hub id) when it is no longer where the training store was
        built from it; its weights must have the recorded fingerprint (checked before
        encoding). None: the recorded model.

    Returns
    -------
    Run

    Raises
    ------
    TypeError
        ``run_dir`` is no path (a :class:`Run`, None).
    RunBundleError
        (a ``ValueError``) When ``best.pt``, ``bundle.json`` or ``normaliser.npz`` is missing
        (a run from an older fastimg), unreadable (truncated or corrupt), or they do not fit
        together; the message names the file.
    ValueError
        A ``device`` that is unknown or cannot run here.
    """
    return Run(run_dir, device=device, model=model)
