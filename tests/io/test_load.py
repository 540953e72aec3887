from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from compressor.errors import ModelError
from compressor.graph.capture import capture
from compressor.io.load import ModelFormat, load_model
from tests.helpers import save_model
from tests.nets import tiny

X = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))


def saved(tmp_path: Path, kind: str) -> Path:
    return save_model(tiny(), tmp_path / f"model.{kind}", kind, X)


@pytest.mark.parametrize("kind, fmt, arch, trust", [
    ("ts", ModelFormat.TORCHSCRIPT, None, False),
    ("pt2", ModelFormat.EXPORTED_PROGRAM, None, False),
    ("sd", ModelFormat.STATE_DICT, "tests.nets:tiny", False),
    ("ckpt", ModelFormat.STATE_DICT, "tests.nets:tiny", False),
    ("pickle", ModelFormat.PICKLED_MODULE, None, True),
])
def test_every_format_loads_and_captures_the_same_function(tmp_path, kind, fmt, arch, trust):
    model = load_model(saved(tmp_path, kind), arch=arch, trust_pickle=trust)
    assert model.format is fmt
    expected = tiny().eval()(X)
    torch.testing.assert_close(capture(model, X[:2])(X), expected)


def test_pickled_module_is_refused_without_trust_pickle(tmp_path):
    with pytest.raises(ModelError, match="unpickling runs arbitrary code.*--trust-pickle"):
        load_model(saved(tmp_path, "pickle"))


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x13\x37 not a model at all", "not a PyTorch model file"),
])
def test_bad_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_truncated_archive_is_a_clear_error(tmp_path):
    path = saved(tmp_path, "sd")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match="corrupt|re-save"):
        load_model(path, arch="tests.nets:tiny")


@pytest.mark.parametrize("arch, message", [
    (None, "pass --arch module:callable"),
    ("tests.nets", "must look like module:callable"),
    ("tests.nowhere:tiny", "cannot find --arch"),
    ("tests.nets:NotPrunable", "do not fit --arch"),
])
def test_state_dict_needs_a_matching_arch(tmp_path, arch, message):
    with pytest.raises(ModelError, match=message):
        load_model(saved(tmp_path, "sd"), arch=arch)


def test_arch_with_a_self_describing_archive_is_refused(tmp_path):
    with pytest.raises(ModelError, match="drop --arch"):
        load_model(saved(tmp_path, "ts"), arch="tests.nets:tiny")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ModelError, match="is a directory"):
        load_model(tmp_path)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_a_data_parallel_or_compiled_state_dict_loads_into_the_plain_arch(tmp_path, prefix):
    path = tmp_path / "wrapped.pt"
    torch.save({prefix + k: v for k, v in tiny().state_dict().items()}, path)
    model = load_model(path, arch="tests.nets:tiny")
    torch.testing.assert_close(model.run(X), tiny().eval()(X))


def test_a_state_dict_that_does_not_fit_names_the_first_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "renamed.pt"
    torch.save({k.replace("0.", "first."): v for k, v in tiny().state_dict().items()}, path)
    with pytest.raises(ModelError, match=r"missing 0\.bias, 0\.weight; unexpected "
                                         r"first\.bias, first\.weight"):
        load_model(path, arch="tests.nets:tiny")


def test_trust_pickle_finds_classes_in_the_current_directory_as_arch_does(tmp_path,
                                                                         monkeypatch):
    (tmp_path / "user_models.py").write_text(
        "import torch\n\nclass Net(torch.nn.Sequential):\n    def __init__(self):\n"
        "        super().__init__(torch.nn.Linear(20, 8), torch.nn.ReLU(),\n"
        "                         torch.nn.Linear(8, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_models

    torch.save(user_models.Net(), tmp_path / "whole.pt")
    monkeypatch.delitem(sys.modules, "user_models")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(tmp_path), "", ".")])
    monkeypatch.chdir(tmp_path)
    model = load_model(Path("whole.pt"), trust_pickle=True)
    assert model.format is ModelFormat.PICKLED_MODULE and model.run(X).shape == (5, 4)


def test_a_program_torch_cannot_read_back_names_its_data_dependent_shape(tmp_path, monkeypatch):
    path = saved(tmp_path, "pt2")

    def refuse(_path):  # what torch.export.load raises for a BART classifier's program
        raise AssertionError("expected no unbacked symbols, got 1: {u0}")

    monkeypatch.setattr(torch.export, "load", refuse)
    with pytest.raises(ModelError, match="depends on the data.*state_dict and give --arch"):
        load_model(path)
