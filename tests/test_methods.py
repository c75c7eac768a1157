"""The registry of editing methods and the shared edit record."""

import pytest

from rome_lib import edits, evaluation, rome
from rome_lib.baselines import apply_ft, apply_ft_l
from rome_lib.methods import EDIT_METHODS, edit_function


def test_one_registry_names_every_method():
    assert evaluation.METHODS == ("none", *EDIT_METHODS)
    assert EDIT_METHODS["rome"] is rome.apply_rome
    assert EDIT_METHODS["ft"] is apply_ft and EDIT_METHODS["ft-l"] is apply_ft_l


def test_unknown_method_is_one_clear_error():
    with pytest.raises(ValueError, match="Unknown editing method 'memt'"):
        edit_function("memt")


def test_edit_record_is_reexported_from_rome():
    for name in ("Edit", "EditOrderError", "normalize_request", "target_ids", "active_edits", "undo_all"):
        assert getattr(rome, name) is getattr(edits, name)
