"""fastimg._files.replace_file: a reader never finds half a file under its name."""
import threading

import pytest

from fastimg._files import replace_file


def test_threads_writing_one_path_each_use_their_own_temp_file(tmp_path):
    target, both_writing = tmp_path / "weights.pt", threading.Barrier(2)
    errors = []

    def download(payload):
        def write(tmp):
            tmp.write_bytes(payload[:3])
            both_writing.wait(timeout=10)  # the two writes overlap
            with open(tmp, "ab") as fh:
                fh.write(payload[3:])

        try:
            replace_file(target, write, write_through=False)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=download, args=(p,)) for p in (b"aaaaaa", b"bbbbbb")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and target.read_bytes() in (b"aaaaaa", b"bbbbbb")
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


@pytest.mark.parametrize("write_through", [True, False])
def test_a_symlink_is_written_through_or_replaced(tmp_path, write_through):
    elsewhere, link = tmp_path / "elsewhere.bin", tmp_path / "cache.bin"
    link.symlink_to(elsewhere)  # dangling

    def cut_short(tmp):
        tmp.write_bytes(b"part")
        raise TimeoutError("the read operation timed out")

    with pytest.raises(TimeoutError):
        replace_file(link, cut_short, write_through=write_through)
    # written through, a cut-short write lands at the link's target; replaced, nowhere
    assert elsewhere.exists() is write_through
    replace_file(link, lambda tmp: tmp.write_bytes(b"whole"), write_through=write_through)
    assert link.read_bytes() == b"whole" and link.is_symlink() is write_through
