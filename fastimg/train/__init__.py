"""Training on a dataset store: frozen pretrained extractors (the paper's five cuts), the
paper's conv head and dense classifier, DALI or torch loaders, honest evaluation.

>>> from fastimg.train import TrainConfig, fit
>>> result = fit("imdb.zarr", TrainConfig(extractor="alexnet", epochs=10), out_dir="runs/a")
"""
from fastimg.train.config import TrainConfig
from fastimg.train.extractors import (EXTRACTORS, StateDictError, WeightsUnavailableError,
                                      build_extractor)
from fastimg.train.fit import TrainResult, fit
from fastimg.train.predict import Prediction, Run, load_run
from fastimg.train.probe import linear_probe
from fastimg.train.torch_dataset import StoreDataset, StoreSampler

__all__ = ["EXTRACTORS", "StateDictError", "TrainConfig", "TrainResult", "WeightsUnavailableError",
           "build_extractor", "fit", "linear_probe", "load_run", "Prediction", "Run",
           "StoreDataset", "StoreSampler"]
