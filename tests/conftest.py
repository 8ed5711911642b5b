import numpy as np
import pytest


def _gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def structured_matrix(rng, n_samples, n_features, rank=6):
    """Low-rank positive-ish data with feature groups, like stacked embeddings."""
    factors = rng.standard_normal((n_samples, rank))
    loadings = rng.standard_normal((rank, n_features))
    return factors @ loadings + 0.1 * rng.standard_normal((n_samples, n_features))
