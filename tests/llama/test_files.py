"""Whether a path can be a model file (llama/files.py): the library, the loader and the profiles
share one rule, so a path the command line refuses in one line is one line through the library
too (a name too long for the system was a raw OSError from ``check_gguf``)."""

from __future__ import annotations

import pytest

from eft_local import EftEngine
from eft_local.errors import UserError
from eft_local.llama.files import check_gguf, file_problem
from eft_local.models.profiles import role_file
from tests.models.test_profiles import UNUSABLE


def test_a_missing_file_and_a_file_that_is_not_gguf(tmp_path):
    with pytest.raises(UserError, match="^model file not found: "):
        check_gguf(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(UserError, match="not a GGUF"):
        check_gguf(bad)


@pytest.mark.parametrize("path, reason", [*UNUSABLE, ("/tmp/a\0b.gguf", "null")])
def test_every_unusable_path_is_the_command_lines_one_line(tmp_path, path, reason):
    from pathlib import Path

    with pytest.raises(UserError) as lib:
        check_gguf(Path(path))
    with pytest.raises(UserError) as cli:
        role_file("base", path)
    problem = file_problem(Path(path))
    assert reason in problem
    assert str(lib.value) == f"model file {path}: {problem}" and str(cli.value) == f"--base {path}: {problem}"


def test_a_symlink_loop(tmp_path):
    loop = tmp_path / "loop.gguf"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match="Too many levels of symbolic links"):
        check_gguf(loop)


def test_the_library_refuses_a_name_too_long_in_one_line(family):
    paths = {**family.paths(), "base": "/tmp/" + "a" * 5000 + ".gguf"}
    with pytest.raises(UserError, match="^model file /tmp/a+\\.gguf: File name too long$"):
        EftEngine.load(paths, n_ctx=256, n_threads=1)
