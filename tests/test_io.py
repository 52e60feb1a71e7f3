"""Crash-safe output: atomic files and directories, foreign directories, full and read-only disks."""

import errno
import os
import tempfile

import pytest

from tensorslim.cli import main
from tensorslim.errors import TensorslimError
from tensorslim.io import (
    MARKER,
    atomic_dir,
    atomic_file,
    begin_dir,
    build_path,
    check_output_dir,
    finish_dir,
    read_marker,
    swap_dir,
)


def test_atomic_file_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write("half of the new con")
        raise RuntimeError("crash")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["result.json"]
    with atomic_file(target) as handle:
        handle.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["result.json"]
    assert target.stat().st_mode & 0o644 == 0o644  # not mkstemp's 0600


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), atomic_dir(out / "deeper", "cmd") as tmp:
        (tmp / "model.safetensors").write_text("partial")
        raise KeyboardInterrupt
    assert not out.exists() and os.listdir(tmp_path) == []  # nor the parent it created
    with atomic_dir(out, "cmd") as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1" and read_marker(out) == {"command": "cmd", "entries": ["a"]}
    with atomic_dir(out, "cmd") as tmp:  # ours: replaced without --overwrite
        (tmp / "b").write_text("2")
    assert sorted(os.listdir(out)) == sorted([MARKER, "b"]) and sorted(os.listdir(tmp_path)) == ["out"]


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "data.txt").write_text("user's")
    with pytest.raises(TensorslimError, match="not written by tensorslim"):
        check_output_dir(tmp_path, "cmd")
    assert check_output_dir(tmp_path, "cmd", overwrite=True) == tmp_path
    with pytest.raises(TensorslimError, match="is a file"):
        check_output_dir(tmp_path / "data.txt", "cmd")


def test_another_commands_output_or_added_files_are_refused(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "finetune") as tmp:
        (tmp / "model.safetensors").write_text("weights")
    with pytest.raises(TensorslimError, match="holds the output of `tensorslim finetune`"):
        check_output_dir(out, "decompose")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TensorslimError, match="did not write: notes.txt"):
        check_output_dir(out, "finetune")
    assert check_output_dir(out, "finetune", overwrite=True) == out
    (out / MARKER).write_text("")  # a marker from before markers named their command
    with pytest.raises(TensorslimError, match="an older tensorslim"):
        check_output_dir(out, "finetune")


@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_an_input_is_never_an_output_even_with_overwrite(tmp_path, where):
    model = tmp_path / "model"
    model.mkdir()
    out = {"is": model, "inside": model / "sub", "contains": tmp_path}[where]
    with pytest.raises(TensorslimError, match="the input"):
        check_output_dir(out, "cmd", inputs=[model], overwrite=True)


def test_a_replacement_is_built_beside_and_swapped_in(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "cmd") as tmp:
        (tmp / "old").write_text("old")
    work = begin_dir(out, "cmd")
    assert work == build_path(out) and (out / "old").read_text() == "old"
    (work / "new").write_text("new")
    assert begin_dir(out, "cmd", continue_existing=True) == work  # a resumed replacement continues there
    finish_dir(work, out, "cmd")
    assert sorted(os.listdir(out)) == [MARKER, "new"] and os.listdir(tmp_path) == ["out"]


def test_swap_dir_puts_the_old_directory_back_when_the_second_rename_fails(tmp_path, monkeypatch):
    old, new = tmp_path / "out", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "keep").write_text("1")
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        swap_dir(new, old)
    assert (old / "keep").read_text() == "1"


def test_full_disk_gives_a_clear_error_and_no_output(tiny_bert_dir, tmp_path, monkeypatch, caplog):
    real_fsync = os.fsync

    def full(fd):  # the first fsync of a finished file fails as on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "student"
    assert main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(out), "--rank", "4"]) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert "No space left on device" in caplog.text and "free disk space" in caplog.text
    assert not out.exists() and os.listdir(tmp_path) == []


def test_read_only_output_gives_a_clear_error(tiny_bert_dir, tmp_path, monkeypatch, caplog):
    def read_only(*args, **kwargs):  # root ignores permission bits, so simulate the mount
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(tmp_path / "s"), "--rank", "4"]) == 2
    assert "Read-only file system" in caplog.text and "writable" in caplog.text
