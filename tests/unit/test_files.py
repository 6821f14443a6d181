"""The atomic writers every output goes through: a failure leaves the old file or folder, never a mix."""

from __future__ import annotations

import pytest

from softprompt.files import atomic_folder, atomic_open, atomic_write_text, one_line
from softprompt.report import number


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "a.jsonl", "old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]
    with atomic_open(path) as f:
        f.write("new\n")
    assert path.read_text() == "new\n" and oct(path.stat().st_mode & 0o777) != "0o600"


@pytest.mark.parametrize("existing, expected", [("merge", {"log", "w", "old"}), ("replace", {"w", "old"}),
                                                ("keep", {"log"})])
def test_a_folder_is_filled_beside_its_name_then_merged_replaced_or_kept(tmp_path, existing, expected):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "log").write_text("run log")

    def write(tmp):
        (tmp / "w").write_text("weights")
        (tmp / "old").write_text("x")

    atomic_folder(folder, write, existing=existing)
    assert {p.name for p in folder.iterdir()} == expected
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left
    with pytest.raises(OSError):
        atomic_folder(tmp_path / "new", lambda tmp: (_ for _ in ()).throw(OSError("disk full")))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_one_line_and_number():
    assert one_line(ValueError("a\n  b\tc")) == "a b c" and len(one_line("x" * 500)) == 200
    assert [number(None), number(3), number(0.123456), number(12.3456), number(2.5e7), number(1.005, 2)] == [
        "", "3", "0.1235", "12.35", "2.5e+07", "1.00"]
