"""fastimg stores: one schema, one writer, one reader.

>>> from fastimg import store
>>> reader = store.StoreReader("imdb.zarr")
>>> reader.summary["rows"], reader.images.shape, reader.layout().config.grid
"""
from fastimg.store.keys import differences, stage_key
from fastimg.store.locks import build_lock
from fastimg.store.location import (is_complete, partial_path, read_attrs, recover,
                                    replaced_path, size_bytes)
from fastimg.store.reader import StoreReader, check_version, open_store
from fastimg.store.schema import (ATTRS_KEY, BUILD_KEY, COMPLETE, EMBEDDINGS,
                                  ENCODE_RUN_STATS, FORMAT_VERSION, IDS, IMAGE_CHUNK_ROWS,
                                  IMAGES, LABELS, PARTIAL_SUFFIX, REPLACED_SUFFIX, SPLIT,
                                  SPLIT_NAMES, STAGE_ARRAYS, STAGE_SETTINGS, STAGES, StoreError,
                                  split_code, split_rows)
from fastimg.store.writer import StoreWriter, check_writable, copy_array, write_store

__all__ = ["ATTRS_KEY", "BUILD_KEY", "COMPLETE", "EMBEDDINGS", "ENCODE_RUN_STATS",
           "FORMAT_VERSION", "IDS", "IMAGE_CHUNK_ROWS", "IMAGES", "LABELS", "PARTIAL_SUFFIX",
           "REPLACED_SUFFIX", "SPLIT", "SPLIT_NAMES", "STAGES", "STAGE_ARRAYS", "STAGE_SETTINGS",
           "StoreError", "StoreReader", "StoreWriter", "build_lock", "check_version",
           "check_writable", "copy_array", "differences", "is_complete", "open_store",
           "partial_path", "read_attrs", "recover", "replaced_path", "size_bytes", "split_code",
           "split_rows", "stage_key", "write_store"]
