"""Atomic writes: whole or absent, with the permissions of an ordinary new file; output folders probed safely."""
import os
import stat
import sys

import pytest

from omoe_lab.io import atomic_write, atomic_write_text, writable_folder


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_written_files_get_the_permissions_open_would_give(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_text(tmp_path / "report.html", "<html></html>\n")
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "metrics.json", "old\n")

    def crash(tmp):
        with open(tmp, "w") as handle:
            handle.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_text_has_unix_line_ends(tmp_path):
    assert atomic_write_text(tmp_path / "a.json", "1\n2\n").read_bytes() == b"1\n2\n"


def test_probing_a_folder_leaves_another_process_probe_alone(tmp_path):
    """Processes of one ``accelerate launch`` probe the same output folder at once: each probe has a
    name of its own, so none deletes another's (a fixed ``.write-test`` name did, and the other
    process's ``unlink`` then failed as "cannot write to output folder")."""
    other = tmp_path / ".write-test"
    other.write_text("another process's probe")
    assert writable_folder(tmp_path) == tmp_path
    assert other.read_text() == "another process's probe"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".write-test"]
