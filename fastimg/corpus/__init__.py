"""Corpus loading: a labelled text corpus -> ids, texts, integer labels and a train/val/test split.

The pure library core of ``fastimg build-dataset``'s sources; the CLI maps its flags onto
:class:`CorpusConfig` and reports :class:`CorpusError` as one line with exit code 2.

>>> corpus = load_corpus(CorpusConfig(dataset="imdb", limit=2000, seed=0))  # doctest: +SKIP
>>> corpus.summary()["counts"]  # doctest: +SKIP
"""
from fastimg.corpus._base import (DATASETS, PAPER_VAL_FRACTION, SPLIT_MODES, Corpus,
                                  CorpusConfig, CorpusError)
from fastimg.corpus._load import SPLIT_ALIASES, load_corpus
from fastimg.corpus.imdb import IMDB_MD5, IMDB_URL, cache_dir, download_imdb, resolve_imdb
from fastimg.corpus.readers import Table, read_table

__all__ = ["Corpus", "CorpusConfig", "CorpusError", "DATASETS", "IMDB_MD5", "IMDB_URL",
           "PAPER_VAL_FRACTION", "SPLIT_ALIASES", "SPLIT_MODES", "Table", "cache_dir",
           "download_imdb", "load_corpus", "read_table", "resolve_imdb"]
