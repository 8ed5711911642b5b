"""Texts in for ``fastimg predict``: lines from a stream."""
import io
import logging

from fastimg.train.texts_io import read_lines


def test_lines_keep_their_numbers_as_ids_when_blank_ones_are_skipped(caplog):
    with caplog.at_level(logging.WARNING):
        ids, texts = read_lines(io.StringIO("Great film.\n\n  \nAwful film.\r\nOk\n"))
    assert texts == ["Great film.", "Awful film.", "Ok"]
    assert ids == ["0", "3", "4"]
    assert "skipped 2 blank lines of 5" in caplog.text


def test_lines_without_blanks_say_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        assert read_lines(io.StringIO("a\nb")) == (["0", "1"], ["a", "b"])
    assert not caplog.records
