"""What ``fastimg info`` says about a store: a short human summary (a list of lines, at most
about 30) or the full attributes as JSON-ready data (a run folder's: :mod:`fastimg.run_summary`)."""
from __future__ import annotations

import os
import re

import numpy as np

from fastimg import store
from fastimg._validation import MAX_LISTED

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


def number_text(value) -> str:
    """``12,500`` for a count; anything else (``?``, a recorded string) as it is."""
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
    return ", ".join(shown) + (f", ... ({number_text(more)} more)" if more > 0 else "")


def class_counts_text(per_class: dict, separator: str = ", ") -> str:
    """Rows per class of one split: each class's (``name n``, or the counts alone joined by
    ``"/"``) up to :data:`MAX_LISTED` classes, the range per class past them (after
    the split's rows with ``"/"``, whose line does not give them)."""
    counts = [int(n) for n in per_class.values()]
    if len(counts) > MAX_LISTED:
        empty = sum(n == 0 for n in counts)
        low, high = min(counts), max(counts)
        return ((f"{number_text(sum(counts))} rows, " if separator == "/" else "")
                + f"{number_text(low)}{f' to {number_text(high)}' if high != low else ''} per class"
                + (f", {number_text(empty)} classes without rows" if empty else ""))
    if separator == "/":
        return "/".join(number_text(n) for n in counts)
    quote = _quoted(per_class)
    return separator.join(f"{name!r} {number_text(n)}" if quote else f"{name} {number_text(n)}"
                          for name, n in per_class.items())


def seconds_text(value) -> str:
    """``4.21 s``, ``37.5 s``; ``?`` when not recorded."""
    if value is None:
        return "?"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _rows_lines(reader: store.StoreReader) -> list[str]:
    """Rows per split and class (dataset stores), or per split (image stores with one)."""
    summary = reader.summary
    counts = summary.get("counts")
    if not counts and reader.has_labels:  # a store written by another tool: count them
        targets, codes = reader.targets(), reader.split_codes()
        counts = {split: {name: int(np.count_nonzero(targets[codes == code] == k))
                          for k, name in enumerate(reader.class_names)}
                  for code, split in enumerate(store.SPLIT_NAMES) if np.any(codes == code)}
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
            lines.append(f"  {split:<7} {number_text(total):>9} rows  ({detail})")
        return lines
    split_rows = summary.get("split_rows")
    if not split_rows and store.SPLIT in reader.group:
        codes = reader.split_codes()
        split_rows = {name: int((codes == code).sum())
                      for code, name in enumerate(store.SPLIT_NAMES)}
    # in split order: the attrs keep keys sorted as text (test before train)
    return (["splits    " + ", ".join(f"{s} {number_text(split_rows[s])}"
                                      for s in store.SPLIT_NAMES if split_rows.get(s))]
            if split_rows else [])


def _features_line(reader: store.StoreReader) -> str:
    features = reader.summary.get("features")
    if features is None and reader.embeddings is not None:
        features = int(reader.embeddings.shape[1])
    layers = reader.provenance.get("layers") or []
    line = f"features  {number_text(features) if features is not None else 'not recorded'}"
    if layers and features and features % len(layers) == 0:
        line += f" = {len(layers)} layers x {number_text(features // len(layers))} hidden"
    embeddings = reader.embeddings
    if embeddings is not None:
        line += f"; embeddings stored ({embeddings.dtype})"
    return line


def _images_line(reader: store.StoreReader) -> str:
    summary = reader.summary
    height, width = summary.get("image_shape") or reader.images.shape[1:]
    occupied = summary.get("occupied_pixels")
    line = (f"images    {number_text(int(reader.images.shape[0]))} x {height} x {width} "
            f"{reader.images.dtype}")
    if occupied is not None:
        line += (f"; {number_text(occupied)} of {number_text(height * width)} pixels occupied "
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
        rows = "" if fit_rows is None else f" {number_text(fit_rows)}"
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
    parts = [f"{name.removesuffix('_s')} {seconds_text(value)}" for name, value in timings.items()]
    if not parts:  # every stage reused: their own times, in build order, named as above
        records = reader.stages
        parts = [f"{'raster' if name == 'images' else name} "
                 f"{seconds_text(records[name]['seconds'])}" for name in store.STAGES
                 if records.get(name, {}).get("seconds") is not None]
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
    lines.append(f"rows      {number_text(rows)}" + (f" from {source}" if source else "")
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
    from fastimg.store.locks import lock_holder
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
             "built_by": lock_holder(out)}
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
        lines.append(f"encoded      {number_text(found['rows_done'])} of "
                     f"{number_text(found['rows'])} rows")
    return lines


def describe_unfinished_beside(found: dict) -> list[str]:
    """A line on :func:`unfinished_build`'s findings beside a complete store (a forced build
    that failed or was stopped late): what it holds and how to finish or drop it."""
    done, what = _unfinished_state(
        found, "rerun the forced command that started it to resume, or delete it")
    return [f"beside     an unfinished build at {found['path']} (stages done: {done}): {what}"]
