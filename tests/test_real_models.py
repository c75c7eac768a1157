"""Getting a real model's GGUF from a local file or wheel: the checksum guards both (no network)."""

from __future__ import annotations

import zipfile

import pytest

from rome_lib.data import sha256_of
from rome_lib.models import ModelNotAvailableError
from rome_lib.real_models import WheelModel, local_gguf

MEMBER = "pkg/model.gguf"


def _spec(sha256: str) -> WheelModel:
    return WheelModel(name="m", package="pkg", version="1", member=MEMBER, sha256=sha256,
                      license="MIT", what="a test file")


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)))
    return path


def test_a_local_gguf_with_the_pinned_checksum_is_used_as_it_is(gguf):
    assert local_gguf(_spec(sha256_of(gguf)), gguf, gguf.parent) == gguf


def test_a_wheel_is_opened_and_its_gguf_checked(gguf, tmp_path):
    wheel = tmp_path / "pkg-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf, MEMBER)
    got = local_gguf(_spec(sha256_of(gguf)), wheel, tmp_path / "out")
    assert got.read_bytes() == gguf.read_bytes()


def test_another_file_is_refused_by_its_checksum(gguf):
    with pytest.raises(ModelNotAvailableError, match="Checksum mismatch"):
        local_gguf(_spec("0" * 64), gguf, gguf.parent)


def test_a_wheel_without_the_model_is_refused(gguf, tmp_path):
    wheel = tmp_path / "other-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other/readme.txt", "no model here")
    with pytest.raises(ModelNotAvailableError, match="does not contain"):
        local_gguf(_spec(sha256_of(gguf)), wheel, tmp_path / "out")


def test_a_missing_path_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        local_gguf(_spec("0" * 64), tmp_path / "nowhere.gguf", tmp_path)
