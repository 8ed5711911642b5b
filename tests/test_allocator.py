"""fastimg.embed.allocator: freed memory stays mapped inside the block, is given back after."""
import os

import numpy as np
import pytest

from fastimg.embed import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")

BLOCK = 96 << 20  # past glibc's largest mmap threshold (32 MiB): served by mmap by default


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _freed_bytes_returned() -> int:
    """Allocate and touch a large block, free it: how much resident memory that gave back."""
    block = np.ones(BLOCK, dtype=np.uint8)
    before = _rss()
    del block
    return before - _rss()


@pytest.fixture
def untuned(monkeypatch):
    for name in allocator._USER_TUNING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "ENABLED", True)


def test_freed_memory_is_kept_inside_and_given_back_after(untuned):
    assert _freed_bytes_returned() > BLOCK // 2  # glibc's default: unmapped on free
    with allocator.keep_freed_memory():
        with allocator.keep_freed_memory():  # re-entrant
            assert _freed_bytes_returned() < BLOCK // 8
        assert _freed_bytes_returned() < BLOCK // 8  # the outer block still holds
        kept = _rss()
    assert kept - _rss() > BLOCK // 2  # trimmed on leaving
    assert _freed_bytes_returned() > BLOCK // 2  # and glibc's defaults are back


@pytest.mark.parametrize("switch", ["env", "flag"])
def test_user_tuning_or_the_switch_leaves_glibc_alone(untuned, monkeypatch, switch):
    if switch == "env":
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    else:
        monkeypatch.setattr(allocator, "ENABLED", False)
    with allocator.keep_freed_memory():
        assert _freed_bytes_returned() > BLOCK // 2
