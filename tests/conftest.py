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


@pytest.fixture(autouse=True)
def no_imdb_download(monkeypatch):
    """Tests never download: the IMDB recipe fetches 80 MB when the data is absent, so a test
    that reached it without the data would hang on the network. Tests that check the download
    replace ``_urlopen`` themselves; the others skip without the data (see shared_imdb)."""
    try:
        from fastimg.corpus import imdb
    except ImportError:
        return

    def refuse(url, timeout=None):
        raise OSError(f"tests do not download ({url}): put imdb/imdb.csv.gz in $FASTIMG_DATA")

    monkeypatch.setattr(imdb, "_urlopen", refuse)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def structured_matrix(rng, n_samples, n_features, rank=6):
    """Low-rank positive-ish data with feature groups, like stacked embeddings."""
    factors = rng.standard_normal((n_samples, rank))
    loadings = rng.standard_normal((rank, n_features))
    return factors @ loadings + 0.1 * rng.standard_normal((n_samples, n_features))


TINY_WORDS = ("the a film movie good bad was is and not very plot actor it of to i this story "
              "acting great awful scene end music").split()


def tiny_reviews(n, *, seed=0, words=10, labels=("pos", "neg")):
    """``n`` rows ``(id, text, label)`` of random words the tiny BERT knows; labels alternate."""
    rng = np.random.default_rng(seed)
    return [(f"r{i}", " ".join(rng.choice(TINY_WORDS, words)), labels[i % 2]) for i in range(n)]


def one_line(err: str) -> str:
    """A command's stderr, checked to be one line (a user mistake's message)."""
    err = err.strip()
    assert err and "\n" not in err, err
    return err


def write_csv(path, rows, header=("id", "text", "label")):
    """A CSV file of ``rows`` under ``header``; returns ``path``."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 12-layer, 32-wide random BertModel and a WordPiece tokenizer, saved like a hub model."""
    import string

    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TINY_WORDS
             + list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
             + list(".,!?'"))
    path = tmp_path_factory.mktemp("tiny-bert")
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=12,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


NEEDS_IMDB_REASON = ("needs the IMDB reviews ($FASTIMG_DATA/imdb/imdb.csv.gz or "
                     "../shared/data beside the checkout); tests never download them")


def shared_imdb():
    """The IMDB file beside the checkout (``$FASTIMG_DATA`` or ``../shared/data``), or None."""
    import os
    from pathlib import Path

    roots = [os.environ.get("FASTIMG_DATA"), Path(__file__).resolve().parents[2] / "shared/data"]
    for root in roots:
        if root and (Path(root) / "imdb" / "imdb.csv.gz").is_file():
            return Path(root)
    return None
