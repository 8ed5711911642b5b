"""The pieces of the GPU run (benchmarks/gpu) that work without a GPU."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks" / "gpu").glob("*.sh"))


def test_random_model_has_the_given_shape_and_tokenizer_and_new_weights(tiny_bert_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, BertModel

    from benchmarks.encode import random_model

    out = random_model(str(tmp_path / "m"), tokenizer=str(tiny_bert_dir),
                       config=str(tiny_bert_dir), seed=1)
    made, tiny = BertModel.from_pretrained(out), BertModel.from_pretrained(tiny_bert_dir)
    assert made.config.hidden_size == tiny.config.hidden_size == 32
    assert made.config.num_hidden_layers == tiny.config.num_hidden_layers
    assert AutoTokenizer.from_pretrained(out).get_vocab() == \
        AutoTokenizer.from_pretrained(tiny_bert_dir).get_vocab()
    w = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(made.state_dict()[w], tiny.state_dict()[w])
    again = BertModel.from_pretrained(random_model(str(tmp_path / "again"), str(tiny_bert_dir),
                                                   str(tiny_bert_dir), seed=1))
    assert torch.equal(made.state_dict()[w], again.state_dict()[w])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_prepare_without_the_reviews_exits_2_and_writes_nothing(tmp_path):
    kit = tmp_path / "kit"
    env = {**os.environ, "FASTIMG_DATA": str(tmp_path / "nowhere"), "KIT": str(kit)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/prepare.sh")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "imdb.csv.gz" in done.stderr and not kit.exists()
