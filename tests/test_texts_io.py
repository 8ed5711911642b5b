"""Texts in for ``fastimg predict``: lines from a stream."""
import io
import logging

from fastimg.train.texts_io import read_input_texts, read_lines


def test_lines_keep_their_numbers_as_ids_when_blank_ones_are_skipped(caplog):
    with caplog.at_level(logging.WARNING):
        ids, texts = read_lines(io.StringIO("Great film.\n\n  \nAwful film.\r\nOk\n"))
    assert texts == ["Great film.", "Awful film.", "Ok"]
    assert ids == ["0", "3", "4"]
    assert "skipped 2 blank lines of 5" in caplog.text


def test_one_blank_line_is_one_line(caplog):
    with caplog.at_level(logging.WARNING):
        assert read_lines(io.StringIO("a\n\nb\n")) == (["0", "2"], ["a", "b"])
    assert "skipped 1 blank line of 3;" in caplog.text


def test_lines_without_blanks_say_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        assert read_lines(io.StringIO("a\nb")) == (["0", "1"], ["a", "b"])
    assert not caplog.records


def test_input_texts_refuse_nested_values_and_read_binary_parquet_as_text(tmp_path):
    import json

    import pytest

    from fastimg.corpus import CorpusError
    from fastimg.train.texts_io import read_input_texts

    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n"
                    + json.dumps({"text": {"title": "T", "body": "B"}}) + "\n")
    with pytest.raises(CorpusError, match=r"column 'text' holds a nested object at line 2"):
        read_input_texts(path)
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([b"caf\xc3\xa9", b"b"], pa.binary())}),
                   tmp_path / "b.parquet")
    assert read_input_texts(tmp_path / "b.parquet") == (["0", "1"], ["caf\u00e9", "b"])
    pq.write_table(pa.table({"text": pa.array([b"a", b"\xff"], pa.binary())}),
                   tmp_path / "c.parquet")
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_input_texts(tmp_path / "c.parquet")


def test_lines_that_are_not_utf8_are_named_by_their_line():
    """Bytes that are not UTF-8 on stdin (which Python decodes with surrogateescape) were
    refused as 'texts[1] holds a lone surrogate ... decode the text with errors='replace'',
    naming neither the input nor the line, with advice for the library."""
    import pytest

    from fastimg.corpus import CorpusError

    stream = io.TextIOWrapper(io.BytesIO(b"fine\n\ncaf\xe9 au lait\n"), encoding="utf-8",
                              errors="surrogateescape")
    with pytest.raises(CorpusError, match=r"^stdin is not valid UTF-8: bad byte 0xe9 at line "
                                          r"3; re-encode the texts as UTF-8$"):
        read_lines(stream)
    with pytest.raises(CorpusError, match=r"^the text at line 2 of stdin holds a lone "
                                          r"surrogate '\\ud800'"):
        read_lines(io.StringIO("a\nb \ud800 c\n"))


def test_input_texts_with_a_lone_surrogate_are_named_by_their_row(tmp_path):
    """A JSON '\\ud800' escape in a predict input was refused as 'texts[0] holds ...' (the
    library's argument), not by its line in the file as build-dataset names it."""
    import pytest

    from fastimg.corpus import CorpusError
    from fastimg.train.texts_io import read_input_texts

    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "bad \\ud800 half"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"^the text at line 2 of .*a\.jsonl holds a lone "
                                          r"surrogate '\\ud800'"):
        read_input_texts(path)


def test_a_plain_text_file_is_pointed_to_stdin(tmp_path):
    """``predict --input reviews.txt`` (one text per line) was refused with the readers'
    advice for build-dataset (an aclImdb folder or tarball), naming nothing that reads such a
    file; ``--input -`` does."""
    import pytest

    from fastimg.corpus import CorpusError
    from fastimg.train.texts_io import read_input_texts

    for name in ("reviews.txt", "reviews"):
        path = tmp_path / name
        path.write_text("Great film.\nAwful film.\n", encoding="utf-8")
        with pytest.raises(CorpusError, match=rf"^unsupported input format '{name}': .*; a "
                                              rf"file of one text per line is read from stdin: "
                                              rf"--input - < .*{name}$"):
            read_input_texts(path)
    (tmp_path / "a.csv").write_text("text\nfine\n", encoding="utf-8")
    assert read_input_texts(tmp_path / "a.csv") == (["0"], ["fine"])


def test_empty_or_repeated_ids_are_warned_of(tmp_path, caplog):
    """Empty and repeated ids were written as given without a word: the predictions could
    not be joined back to the rows."""
    path = tmp_path / "t.csv"
    path.write_text("id,text\na,one\n,two\nb,three\na,four\nb,five\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="fastimg"):
        ids, texts = read_input_texts(path, id_column="id")
    assert ids == ["a", "", "b", "a", "b"] and texts[3] == "four"
    assert (f"ids in column 'id' of {path}: 1 empty and 2 repeated (first: 'a'); written as "
            f"given") in caplog.text
    caplog.clear()
    path.write_text("id,text\na,one\nb,two\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="fastimg"):
        read_input_texts(path, id_column="id")
    assert not caplog.records


def test_lines_over_bytes_are_utf8_whatever_the_locale():
    """stdin was decoded in the locale's encoding: under a Latin-1 locale 'café' reached the
    model as 'cafÃ©', and a byte-order mark as part of the first text."""
    stream = io.TextIOWrapper(io.BytesIO("\ufeffcaf\u00e9\nna\u00efve\r\n".encode()),
                              encoding="latin-1")
    assert read_lines(stream) == (["0", "1"], ["caf\u00e9", "na\u00efve"])
    assert not stream.closed  # stdin stays usable
