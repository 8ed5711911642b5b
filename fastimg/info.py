"""What ``fastimg info`` says about a store or a training run folder: a short human summary
(a list of lines, at most about 30) or the full attributes as JSON-ready data."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from fastimg import store
from fastimg._validation import MAX_LISTED
from fastimg.run_folder import (CONFIG_FILE, METRICS_FILE, NORMALISER_FILE, RESUME_ADVICE,
                                RESUME_FILE, RUN_FILES, is_unfinished, run_files_in)

#: Layout entries that are arrays (thousands of numbers): left out of the JSON view.
LAYOUT_ARRAYS = ("pixel_index", "coords", "scaler")


def _trim_layout(layout: dict) -> dict:
    return {k: v for k, v in layout.items() if k not in LAYOUT_ARRAYS}


def store_json(reader: store.StoreReader) -> dict:
    """The store's attributes without the layout's arrays, plus its arrays and size."""
    attrs = dict(reader.attrs)
    if "layout" in attrs:
        attrs["layout"] = _trim_layout(attrs["layout"])
    stages = {}
    for name, record in reader.stages.items():
        record = dict(record)
        if isinstance(record.get("layout"), dict):
            record["layout"] = _trim_layout(record["layout"])
        stages[name] = record
    if stages:
        attrs["stages"] = stages
    attrs["arrays"] = reader.array_info()
    attrs["size_MiB"] = round(reader.size_bytes() / 2**20, 2)
    return attrs


#: What makes a class name read as something else in a list: a separator, a bracket,
#: doubled, leading or trailing spaces, nothing at all.
_AMBIGUOUS_NAME = re.compile(r"[,;/()]|\s\s|^\s|\s$|^$")


def _n(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _quoted(names) -> bool:
    """Whether a list of these class names quotes them: one of them would misread."""
    return any(_AMBIGUOUS_NAME.search(str(name)) for name in names)


def class_names_text(names) -> str:
    """Class names as a summary lists them: quoted, all of them, when one would misread
    (``very good, really`` read as two classes), and the first :data:`MAX_LISTED`
    with how many more when there are more."""
    names = [str(name) for name in names]
    quote = _quoted(names)
    shown = [repr(name) if quote else name for name in names[:MAX_LISTED]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f", ... ({_n(more)} more)" if more > 0 else "")


def class_counts_text(per_class: dict, separator: str = ", ") -> str:
    """Rows per class of one split: each class's (``name n``, or the counts alone joined by
    ``"/"``) up to :data:`MAX_LISTED` classes, the range per class past them (after
    the split's rows with ``"/"``, whose line does not give them)."""
    counts = [int(n) for n in per_class.values()]
    if len(counts) > MAX_LISTED:
        empty = sum(n == 0 for n in counts)
        low, high = min(counts), max(counts)
        return ((f"{_n(sum(counts))} rows, " if separator == "/" else "")
                + f"{_n(low)}{f' to {_n(high)}' if high != low else ''} per class"
                + (f", {_n(empty)} classes without rows" if empty else ""))
    if separator == "/":
        return "/".join(_n(n) for n in counts)
    quote = _quoted(per_class)
    return separator.join(f"{name!r} {_n(n)}" if quote else f"{name} {_n(n)}"
                          for name, n in per_class.items())


def _seconds(value) -> str:
    if value is None:
        return "?"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _rows_lines(reader: store.StoreReader) -> list[str]:
    """Rows per split and class (dataset stores), or per split (image stores with one)."""
    summary = reader.summary
    counts = summary.get("counts")
    if counts:
        names = reader.class_names
        lines = [f"classes   {len(names)}: {class_names_text(names)}"]
        for split in store.SPLIT_NAMES:
            per_class = counts.get(split)
            if not per_class:
                continue
            # the attrs keep keys sorted as text: class '10' came before '2'
            per_class = {**{n: per_class[n] for n in names if n in per_class}, **per_class}
            total = sum(per_class.values())
            detail = class_counts_text(per_class)
            lines.append(f"  {split:<7} {_n(total):>9} rows  ({detail})")
        return lines
    split_rows = summary.get("split_rows")
    if not split_rows and store.SPLIT in reader.group:
        codes = reader.split_codes()
        split_rows = {name: int((codes == code).sum())
                      for code, name in enumerate(store.SPLIT_NAMES)}
    if not reader.has_labels:
        # in split order: the attrs keep keys sorted as text (test before train)
        return (["splits    " + ", ".join(f"{s} {_n(split_rows[s])}" for s in store.SPLIT_NAMES
                                         if split_rows.get(s))] if split_rows else [])
    # labels without a count in the summary (a store written by another tool): count them
    names, targets, codes = reader.class_names, reader.targets(), reader.split_codes()
    lines = [f"classes   {len(names)}: {class_names_text(names)}"]
    for code, split in enumerate(store.SPLIT_NAMES):
        in_split = targets[codes == code]
        if in_split.size:
            detail = class_counts_text({name: int((in_split == k).sum())
                                        for k, name in enumerate(names)})
            lines.append(f"  {split:<7} {_n(int(in_split.size)):>9} rows  ({detail})")
    return lines


def _features_line(reader: store.StoreReader) -> str:
    features = reader.summary.get("features")
    if features is None and reader.embeddings is not None:
        features = int(reader.embeddings.shape[1])
    layers = reader.provenance.get("layers") or []
    line = f"features  {_n(features) if features is not None else 'not recorded'}"
    if layers and features and features % len(layers) == 0:
        line += f" = {len(layers)} layers x {_n(features // len(layers))} hidden"
    embeddings = reader.embeddings
    if embeddings is not None:
        line += f"; embeddings stored ({embeddings.dtype})"
    return line


def _images_line(reader: store.StoreReader) -> str:
    summary = reader.summary
    height, width = summary.get("image_shape") or reader.images.shape[1:]
    occupied = summary.get("occupied_pixels")
    line = f"images    {_n(int(reader.images.shape[0]))} x {height} x {width} {reader.images.dtype}"
    if occupied is not None:
        line += (f"; {_n(occupied)} of {_n(height * width)} pixels occupied "
                 f"({100 * occupied / (height * width):.1f}%)")
    return line


def _encoder_line(reader: store.StoreReader) -> str | None:
    encoder = reader.configs.get("encoder")
    if not encoder:
        return None
    prov = reader.provenance
    layers = prov.get("layers") or encoder.get("layers")
    model = encoder.get("model")
    if encoder.get("revision"):
        model += f"@{encoder['revision']}"
    precision = prov.get("precision") or encoder.get("precision") or prov.get("compute_dtype")
    if prov.get("int8_engine"):
        precision += f" ({prov['int8_engine']})"
    return (f"encoder   {model}, layers {layers} ({encoder.get('layers')}), "
            f"{encoder.get('pooling')} pooling, max_length {encoder.get('max_length')}, "
            f"truncation {encoder.get('truncation')}, {precision} on {prov.get('device', '?')}"
            f"{', packed batches' if prov.get('batching') == 'packed' else ''} "
            f"-> {encoder.get('output_dtype', '?')}")


def _layout_line(reader: store.StoreReader) -> str:
    layout = reader.configs.get("layout") or reader.attrs.get("layout", {}).get("config", {})
    backend = (reader.provenance.get("layout_backend")
               or reader.attrs.get("layout", {}).get("backend") or layout.get("backend"))
    method = layout.get("method")
    line = f"layout    {method}"
    if method == "tsne":
        line += f" ({backend}, perplexity {layout.get('perplexity')}, {layout.get('metric')})"
    line += f", scaling {layout.get('scaling')}, assignment {layout.get('assignment')}"
    settings = reader.stages.get("layout", {}).get("settings", {})
    fit_on = settings.get("fit_on") or reader.summary.get("fit_on")
    fit_rows = settings.get("fit_rows") or reader.summary.get("fit_rows")
    if fit_on:
        rows = "" if fit_rows is None else f" {_n(fit_rows)}"
        # an images store fitted on all its rows has no split: no evaluation rows
        leak = "" if reader.kind == "images" else " (evaluation rows included)"
        line += {"train": f"; fitted on the{rows} train rows",
                 "first_rows": f"; fitted on the first{rows} rows",
                 "all": f"; fitted on all{rows} rows{leak}"}.get(
                     fit_on, f"; fitted on {fit_on}{rows}")
    if layout.get("random_state") is not None:
        line += f", seed {layout.get('random_state')}"
    return line


def _elsewhere(source: str, path) -> bool:
    """Whether ``source``, the store a stage was copied from, is not the store at ``path``
    itself (a ``--force`` rebuild takes its stages from the store it replaces)."""
    if store.location.is_local(path):
        return "://" in source or os.path.abspath(source) != os.path.abspath(path)
    return source.rstrip("/") != str(path).rstrip("/")


def copied_from(records: dict, path) -> dict:
    """``{stage: store}`` for each of the stage ``records`` of the store at ``path`` that was
    copied from another store (``--reuse-from``, a relayout's source)."""
    return {name: record["reused_from"] for name, record in records.items()
            if record.get("reused_from") and _elsewhere(record["reused_from"], path)}


def reused_text(names, sources: dict) -> str:
    """The stages ``names`` a build reused, each one copied from another store followed by
    that store (``sources``: stage -> store): ``corpus, encode (from a.zarr)``, or
    ``corpus, encode (all from a.zarr)`` when every one of them came from that store."""
    names = list(names)
    origins = {sources.get(name) for name in names}
    if len(origins) == 1 and None not in origins:
        return f"{', '.join(names)} ({'all ' if len(names) > 1 else ''}from {origins.pop()})"
    return ", ".join(f"{name} (from {sources[name]})" if sources.get(name) else name
                     for name in names)


def _timings_line(reader: store.StoreReader) -> str | None:
    timings = reader.summary.get("timings") or {}
    parts = [f"{name.removesuffix('_s')} {_seconds(value)}" for name, value in timings.items()]
    if not parts:
        parts = [f"{name} {_seconds(record['seconds'])}" for name, record in
                 reader.stages.items() if record.get("seconds") is not None]
    if not parts:
        return None
    line = "timings   " + ", ".join(parts)
    sources = copied_from(reader.stages, reader.path)
    reused = list(reader.summary.get("reused") or [])
    reused += [name for name in sources if name not in reused]
    line += f"; reused: {reused_text(reused, sources)}" if reused else "; nothing reused"
    if reader.summary.get("resumed"):
        line += "; resumed"
    return line


def describe_store(reader: store.StoreReader) -> list[str]:
    """A short human summary of a finished store, one string per line."""
    kind = reader.kind
    versions = reader.provenance.get("versions") or reader.attrs.get("layout", {}).get(
        "versions", {})
    lines = [f"{reader.path}: fastimg {kind} store, "
             f"{'complete' if reader.complete else 'NOT complete'}, "
             f"{_size(reader.size_bytes())} on disk, format {reader.attrs.get('format_version')}"
             + (f", written by fastimg {versions['fastimg']}" if versions.get("fastimg") else "")]
    corpus = reader.corpus
    rows = reader.summary.get("rows") or int(reader.images.shape[0])
    source = corpus.get("source") or (reader.configs.get("corpus") or {}).get("dataset")
    lines.append(f"rows      {_n(rows)}" + (f" from {source}" if source else "")
                 + (f" (split: {corpus['split_mode']})" if corpus.get("split_mode") else ""))
    lines += _rows_lines(reader)
    lines.append(_features_line(reader))
    lines.append(_images_line(reader))
    layout_line = _layout_line(reader) if "layout" in reader.attrs else None
    for line in (_encoder_line(reader), layout_line, _timings_line(reader)):
        if line:
            lines.append(line)
    for warning in (corpus.get("warnings") or [])[:3]:
        lines.append(f"warning   {warning}")
    return lines


def unfinished_build(path) -> dict | None:
    """What the unfinished build of ``path`` (the store, or its ``.partial`` folder) holds:
    ``{"path", "complete": False, "stages": {name: done}, "built_by", "rows_done", "rows"}``
    (``built_by``: the process building it now, or None; the last two once encoding
    started), or None when there is none. Reads metadata only."""
    from fastimg.store import location
    from fastimg.store.schema import DONE_PREFIX, EMBED_ATTRS_KEY
    from fastimg.store.writer import finished_chunks

    path = location.resolve(path)
    partial = (path if isinstance(path, location.Location)  # built in place on object storage
               or path.name.endswith(store.PARTIAL_SUFFIX) else location.partial_path(path))
    if not location.exists(partial):
        return None
    try:
        group = location.open_group(partial, "r")
        stages = group.attrs.get(store.BUILD_KEY, {}).get("stages")
    except Exception:  # noqa: BLE001 - not a build of this fastimg: nothing to describe
        return None
    if not isinstance(stages, dict):
        return None
    out = (partial if isinstance(partial, location.Location)
           else partial.with_name(partial.name[:-len(store.PARTIAL_SUFFIX)]))
    found = {"path": str(partial), "complete": False,
             "stages": {name: bool(record.get("done")) for name, record in stages.items()},
             "built_by": location.lock_holder(out)}
    if store.EMBEDDINGS in group:
        embeddings = group[store.EMBEDDINGS]
        record = embeddings.attrs.get(EMBED_ATTRS_KEY, {})
        rows_done = int(record.get("rows_done", 0))
        markers = DONE_PREFIX + store.EMBEDDINGS
        if markers in group:  # a cluster build finishes chunks in any order
            starts, stops, finished = finished_chunks(group[markers][:], int(embeddings.shape[0]),
                                                      embeddings.chunks[0], rows_done)
            rows_done = int(max(rows_done, (stops - starts)[finished].sum()))
        found.update(rows_done=rows_done, rows=int(embeddings.shape[0]))
    return found


def _unfinished_state(found: dict, otherwise: str) -> tuple[str, str]:
    """``(the stages done, what to do)`` of :func:`unfinished_build`'s findings: the command
    building it now when one holds its lock, else ``otherwise``."""
    done = ", ".join(name for name, finished in found["stages"].items() if finished)
    holder = found.get("built_by")
    return (done or "none",
            f"being built now by another fastimg command ({holder})" if holder else otherwise)


def describe_unfinished(found: dict) -> list[str]:
    """:func:`unfinished_build`'s findings as lines."""
    done, what = _unfinished_state(
        found, "rerun the command that started it to resume (--force starts over)")
    running = [name for name, finished in found["stages"].items() if not finished]
    lines = [f"{found['path']}: an unfinished fastimg build; {what}", f"stages done  {done}"]
    if running:
        lines.append(f"unfinished   {', '.join(running)}")
    if "rows" in found:
        lines.append(f"encoded      {_n(found['rows_done'])} of {_n(found['rows'])} rows")
    return lines


def describe_unfinished_beside(found: dict) -> list[str]:
    """A line on :func:`unfinished_build`'s findings beside a complete store (a forced build
    that failed or was stopped late): what it holds and how to finish or drop it."""
    done, what = _unfinished_state(
        found, "rerun the forced command that started it to resume, or delete it")
    return [f"beside     an unfinished build at {found['path']} (stages done: {done}): {what}"]


def _accuracy(value) -> str:
    return "absent" if value is None else f"{value:.4f}"


def _class_scores_line(metrics: dict) -> str | None:
    """``by class`` of the reported split: macro F1, balanced accuracy and the class recalled
    least (what accuracy hides when the classes are imbalanced); None for runs saved before
    fastimg scored classes."""
    split = (metrics.get("reported") or {}).get("split")
    scores = ((metrics.get("final") or {}).get(split) or {})
    per_class = scores.get("per_class")
    if not per_class or scores.get("macro_f1") is None:
        return None
    name, worst = min(((n, c) for n, c in per_class.items() if c["support"]),
                      key=lambda item: item[1]["recall"])
    return (f"by class   {split}: macro F1 {scores['macro_f1']:.4f}, balanced accuracy "
            f"{scores['balanced_accuracy']:.4f}; lowest recall {name!r} {worst['recall']:.4f} "
            f"(of {plural(worst['support'], 'row')}); "
            + (f"classes {', '.join(per_class)}" if len(per_class) <= 8 else
               f"{len(per_class)} classes"))


def plural(count, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``; ``"? epochs"`` when the count is not recorded."""
    if count is None:
        return f"? {noun}s"
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _optimiser_line(config: dict) -> str:
    """The optimiser, its rates and schedule and early stopping, of a run's config (the
    settings an older run did not record left out)."""
    rates = (f"lr head {config.get('lr_head') or 'default'} / classifier "
             f"{config.get('lr_classifier') or 'default'}")
    parts = [f"{config['optimizer']}, {rates}" if config.get("optimizer") else rates]
    if config.get("weight_decay") is not None:
        parts.append(f"weight decay {config['weight_decay']:g}")
    if config.get("schedule") is not None:
        parts.append(f"schedule {config['schedule']}")
    patience = config.get("patience")
    if patience is not None:
        parts.append(f"early stop after {plural(patience, 'epoch')} without a val gain"
                     if patience else "no early stop")
    return ", ".join(parts)


def _head_line(config: dict) -> str:
    """Where the run cuts its extractor and what it adds around it (upsampling, branches);
    empty for a config that records none of it."""
    parts = []
    if config.get("cut") is not None:
        parts.append(f"{config['cut']} cut")
    if config.get("upsample") is not None:
        parts.append(f"upsample {config['upsample']}x")
    if config.get("pixel_branch"):
        parts.append("pixel branch")
    if config.get("fuse_embedding"):
        parts.append("embedding fused")
    return ", ".join(parts)


def _weights(value) -> str:
    """The extractor's starting weights in words (the run's ``weights`` setting)."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return "random init (none)"
    if isinstance(value, str) and value.upper() == "DEFAULT":
        return "ImageNet (DEFAULT)"
    return f"from {value}"


def _run_files(path: Path, config: dict) -> dict:
    """``{name: present}`` of the run files the folder should hold (``normaliser.npz`` only
    with ``dataset`` normalisation, or when it is there)."""
    files = {name: (path / name).is_file() for name in RUN_FILES}
    if not files[NORMALISER_FILE] and config.get("normalize") != "dataset":
        del files[NORMALISER_FILE]
    return files


def _read_json(path: Path, missing):
    """The JSON object at ``path``, or ``missing`` when there is no such file.

    Raises
    ------
    ValueError
        When the file is not valid JSON, or holds something other than an object.
    """
    if not path.is_file():
        return missing
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the run's JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} holds a JSON {type(document).__name__}, not the object "
                         f"fastimg train writes (edited or cut short?)")
    return document


def describe_run(path) -> list[str]:
    """A short human summary of a training run folder (:data:`RUN_FILES`), one string per line.

    Raises
    ------
    ValueError
        When the folder's ``metrics.json`` or ``config.json`` is not valid JSON, or does not
        hold what ``fastimg train`` writes.
    """
    path = Path(path)
    metrics, config, saved = _run_documents(path)
    try:
        return _run_lines(path, metrics or {}, config or {}, saved)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        # a field of another type than train writes ("final": {"val": 1}): hand-edited
        raise ValueError(f"{path}: its {METRICS_FILE} or {CONFIG_FILE} does not hold what "
                         f"fastimg train writes ({type(exc).__name__}: {exc}; edited?)") from None


def run_json(path) -> dict:
    """A training run folder for scripts (``fastimg info RUN --json``): ``run_folder``,
    ``files`` (the :data:`RUN_FILES` it holds, and ``resume.pt`` while a run is unfinished),
    ``finished`` (``metrics.json`` is written last), ``unfinished`` (the unfinished run whose
    state is there, ``{"epochs_done", "epochs"}``, else None; a train ``--force`` over a
    finished run, stopped, leaves both), and the ``config`` and ``metrics`` that ``fastimg
    train`` wrote (None where absent; an unfinished run's config from its state).

    Raises
    ------
    ValueError
        When the folder's ``metrics.json`` or ``config.json`` is not a valid JSON object.
    """
    path = Path(path)
    metrics, config, saved = _run_documents(path)
    files = run_files_in(path) + ([RESUME_FILE] if saved is not None else [])
    return {"run_folder": str(path), "files": files, "finished": metrics is not None,
            "unfinished": None if saved is None else {
                "epochs_done": saved.get("done"),
                "epochs": (saved.get("config") or {}).get("epochs")},
            "config": config, "metrics": metrics}


def _run_documents(path: Path) -> tuple[dict | None, dict | None, dict | None]:
    """``(metrics, config, saved)`` of a run folder: its ``metrics.json`` and config (None
    where absent), and its unfinished run's state (:func:`_saved_epochs`). An unfinished
    run's config is its state's: its ``config.json`` may be that of the run a ``--force`` of
    it overwrites."""
    metrics = _read_json(path / METRICS_FILE, None)
    saved = _saved_epochs(path)
    config = (saved or {}).get("config") if metrics is None else None
    return metrics, config or _read_json(path / CONFIG_FILE, (metrics or {}).get("config")), saved


def _saved_epochs(path: Path) -> dict | None:
    """The unfinished run's state in ``path`` (:func:`fastimg.train.resume.saved_epochs`; torch
    is imported only for a folder that holds one): None without one, ``{}`` for one that
    cannot be read."""
    if not is_unfinished(path):
        return None
    from fastimg.train.resume import saved_epochs

    return saved_epochs(path) or {}


def _unfinished_text(saved: dict, config: dict) -> str:
    """The epochs an unfinished run's state says are done, in words."""
    if not saved:
        return (f"its {RESUME_FILE} cannot be read (cut short, or of another fastimg): "
                f"fastimg train --force starts over")
    history, best = saved["history"], saved["best"]
    return (f"{saved['done']} of {plural(config.get('epochs'), 'epoch')} done"
            + (f" (best val accuracy {_accuracy(history[best]['val_accuracy'])} at epoch "
               f"{best + 1})" if history and best is not None else ""))


def _store_state(recorded) -> str:
    """`` (not there now: ...)`` after a run's local training store when it is no longer a complete
    store there (a URL is not looked up: info reads no object storage for a run)."""
    from fastimg.store import location

    where = location.resolve(recorded)
    if not location.is_local(where) or location.is_complete(where):
        return ""
    return (" (not there now: moved or deleted? explain reads the split from it; give the "
            "new path with --store)")


def _run_lines(path: Path, metrics: dict, config: dict, saved: dict | None) -> list[str]:
    """:func:`describe_run`'s lines of a run's parsed ``metrics`` and ``config``, and of the
    ``saved`` state of its finished epochs while it is unfinished."""
    files = _run_files(path, config)
    present = ", ".join(n for n, ok in files.items() if ok)
    missing = ", ".join(n for n, ok in files.items() if not ok)
    lines = [f"{path}: fastimg training run ({present}"
             + (f"; missing {missing}" if missing else "") + ")"]
    if metrics.get("store"):
        lines.append(f"store      {metrics['store']}{_store_state(metrics['store'])}")
    extractor = metrics.get("extractor") or {"name": config.get("extractor"),
                                              "weights": config.get("weights")}
    shape = extractor.get("feature_shape")
    if extractor.get("name") is None:  # neither file says: not "random init"
        lines.append("extractor  not recorded")
    else:
        lines.append(f"extractor  {extractor.get('name')}, weights "
                     f"{_weights(extractor.get('weights'))}"
                     + (f", features {' x '.join(map(str, shape))}" if shape else "")
                     + ("" if extractor.get("frozen", True) else ", partly trained"))
    preset = f" (preset {config['preset']})" if config.get("preset") else ""
    lines.append(f"training   {plural(config.get('epochs'), 'epoch')}, batch "
                 f"{config.get('batch_size')}, normalise {config.get('normalize')}, seed "
                 f"{config.get('seed')}{preset}")
    lines.append(f"optimiser  {_optimiser_line(config)}")
    head = _head_line(config)
    if head:
        lines.append(f"head       {head}")
    if metrics.get("device"):
        lines.append(f"ran on     {metrics['device']}, loader {metrics.get('loader')}, cache "
                     f"{metrics.get('cache')}, amp {metrics.get('amp')}")
    rows = metrics.get("rows")
    if rows:
        lines.append("rows       " + ", ".join(f"{s} {_n(n)}" for s, n in rows.items()))
    epochs = metrics.get("epochs") or []
    if epochs:
        best = metrics.get("best_epoch")
        # why fewer epochs ran than the config's: train's own summary says so
        stopped = (f", stopped early (no val gain in {plural(config.get('patience'), 'epoch')})"
                   if metrics.get("stopped_early") else "")
        if metrics.get("resumed_after_epoch") is not None:  # a stopped run run again
            stopped += f", resumed after epoch {metrics['resumed_after_epoch']}"
        lines.append(f"epochs     {len(epochs)} run{stopped}, best epoch {best} (val accuracy "
                     f"{_accuracy(epochs[best - 1]['val_accuracy'] if best else None)}), "
                     f"last train loss {epochs[-1]['train_loss']:.4f}")
    final = metrics.get("final") or {}
    if final:
        biased = ("; no test split: the val figure chose the best epoch (selection-biased)"
                  if metrics.get("selection_biased") else "")
        lines.append(f"accuracy   val {_accuracy((final.get('val') or {}).get('accuracy'))}, "
                     f"test {_accuracy((final.get('test') or {}).get('accuracy'))} "
                     f"(best epoch's weights{biased})")
        scores = _class_scores_line(metrics)
        if scores:
            lines.append(scores)
    probe = metrics.get("probe")
    if metrics:
        lines.append("probe      " + ("not run" if not probe else
                                      f"val {_accuracy(probe.get('val_accuracy'))}, test "
                                      f"{_accuracy(probe.get('test_accuracy'))} "
                                      f"({probe.get('model', 'linear')})"))
    pixels = metrics.get("probe_pixels")
    if pixels:
        lines.append(f"  pixels   val {_accuracy(pixels.get('val_accuracy'))}, test "
                     f"{_accuracy(pixels.get('test_accuracy'))} (the same probe on the image "
                     f"pixels)")
    total = (metrics.get("timings") or {}).get("total_s")
    if total is not None:
        lines.append(f"time       {_seconds(total)}")
    if not metrics:
        from fastimg.store.location import lock_holder

        holder = lock_holder(path)
        done = "" if saved is None else f", {_unfinished_text(saved, config)}"
        lines.append("no metrics.json: " + (
            f"being trained now by another fastimg command ({holder}){done}" if holder else
            f"the run did not finish{done}" + (f"; {RESUME_ADVICE}" if saved else "")))
    elif saved is not None:  # a train --force over this run, stopped: it replaces this one
        lines.append(f"unfinished a train over this run (--force) stopped, "
                     f"{_unfinished_text(saved, saved.get('config') or {})}"
                     + ("; the same command without --force resumes it and replaces this run "
                        "when it ends" if saved else ""))
    return lines
