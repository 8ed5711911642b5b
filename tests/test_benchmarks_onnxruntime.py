"""The encode suite's ONNX Runtime columns (``benchmarks.onnxruntime_encoder``), on the tiny
random BERT."""
import logging

import pytest

pytest.importorskip("onnxruntime")


def test_export_says_nothing_on_the_console(tiny_bert_dir, tmp_path, caplog):
    """``encode --quick`` printed ONNX Runtime's quantiser's 'Please consider to run
    pre-processing before quantization' (a root-logger WARNING): the graph it quantises is
    already optimised by ORT's BERT fusions, and dynamic int8 takes its activation scales at
    run time, so there is nothing for a user to do about it."""
    from benchmarks import onnxruntime_encoder
    from fastimg.embed import load_model

    loaded = load_model(str(tiny_bert_dir))
    with caplog.at_level(logging.WARNING):
        paths = onnxruntime_encoder.export(loaded.model, (1, 2), tmp_path)
    assert all(path.is_file() for path in paths.values())
    # the quantiser's only (the BERT optimiser warns that the tiny model's vocabulary is
    # smaller than its positions, which MiniLM's is not)
    quantiser = [r.getMessage() for r in caplog.records if "quantization" in r.pathname]
    assert quantiser == []
