"""Load a model file: TorchScript, torch.export `.pt2`, state_dict + `--arch`, or (opt-in) a
pickled module. Nothing here modifies the file."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelError, first_line
from .callables import call, importable_from_here
from .files import zip_members
from .quiet import quiet


class ModelFormat(str, Enum):
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "torch.export"
    STATE_DICT = "state_dict"
    PICKLED_MODULE = "pickled module"


@dataclass
class LoadedModel:
    """A loaded model: `run` is callable on a batch; `program` is set for `.pt2` files."""

    path: Path
    format: ModelFormat
    run: Callable[[torch.Tensor], Any]
    program: torch.export.ExportedProgram | None = None


def load_model(path: Path, *, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Detect the format of `path` and load it on the CPU.

    Args:
        path: the model file.
        arch: `module:callable` that builds the module, for state_dict files.
        trust_pickle: allow unpickling a whole `nn.Module` (runs code from the file).

    Returns:
        The loaded model.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {path} does not exist: check the path")
    if path.is_dir():
        raise ModelError(f"model path {path} is a directory: pass the model file itself")
    if path.stat().st_size == 0:
        raise ModelError(f"model file {path} is empty: re-save the model")
    fmt = _sniff(path)
    if arch is not None and fmt in (ModelFormat.TORCHSCRIPT, ModelFormat.EXPORTED_PROGRAM):
        raise ModelError(f"--arch is only for state_dict files, but {path} is a {fmt.value} "
                         "archive that describes itself: drop --arch")
    if fmt is ModelFormat.TORCHSCRIPT:
        module = _guard(path, "TorchScript archive", lambda: torch.jit.load(str(path), "cpu"))
        return LoadedModel(path, fmt, module.eval())
    if fmt is ModelFormat.EXPORTED_PROGRAM:
        program = _guard(path, "torch.export program", lambda: torch.export.load(str(path)))
        return LoadedModel(path, fmt, program.module(), program)
    return _load_pickle(path, arch=arch, trust_pickle=trust_pickle)


def check_float32(model: LoadedModel) -> None:
    """Refuse weights that are not float32, naming the dtype and the fix (a float64 model
    otherwise fails later with an error about the data's shape)."""
    tensors = model.program.state_dict.values() if model.program is not None else \
        [*model.run.parameters(), *model.run.buffers()] if isinstance(model.run, nn.Module) \
        else []
    dtypes = {t.dtype for t in tensors if t.is_floating_point()} - {torch.float32}
    if dtypes:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        raise ModelError(f"the model's weights are {names}: compressor prunes and exports "
                         "float32 models; call model.float() before saving it")


def output_tensor(out: Any) -> torch.Tensor:
    """The single logits tensor a model returns (a 1-tuple is unwrapped)."""
    if isinstance(out, (tuple, list)) and len(out) == 1:
        out = out[0]
    if isinstance(out, (tuple, list)):
        raise ModelError(f"the model returns a {type(out).__name__} of {len(out)} outputs: pass "
                         f"--logits INDEX (0 to {len(out) - 1}) to say which are the logits")
    if isinstance(out, dict):
        keys = ", ".join(map(str, list(out)[:8]))
        raise ModelError(f"the model returns a dict ({keys}): pass --logits KEY to say which "
                         "entry are the logits")
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"the model returns {type(out).__name__}; compressor needs a model that "
                         "returns one tensor of logits [batch, classes]")
    return out


class _Logits(nn.Module):
    """A model that returns one entry (`key`) of what `inner` returns."""

    def __init__(self, inner: nn.Module, key: int | str) -> None:
        super().__init__()
        self.inner, self.key = inner, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        try:
            return out[self.key]
        except (IndexError, KeyError, TypeError) as e:
            what = f"{len(out)} outputs" if isinstance(out, (tuple, list)) else \
                f"keys {', '.join(map(str, out))}" if isinstance(out, dict) else \
                type(out).__name__
            raise ModelError(f"--logits {self.key}: the model returns {what}, which has no "
                             f"entry {self.key!r}") from e


def select_logits(model: LoadedModel, key: str) -> LoadedModel:
    """`model` returning only its output `key` (an index into a tuple, or a dict key)."""
    if model.format is ModelFormat.TORCHSCRIPT:
        raise ModelError("--logits works for nn.Module models (state_dict, pickled module) and "
                         ".pt2 programs; for TorchScript, script a module that returns the logits")
    chosen: int | str = int(key) if key.lstrip("-").isdigit() else key
    return LoadedModel(model.path, model.format, _Logits(model.run, chosen).eval())


def _sniff(path: Path) -> ModelFormat:
    names = zip_members(path, ModelError, fix="re-save the model or copy it again")
    if names is None:
        with path.open("rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":  # a legacy (non-zip) torch.save pickle
            return ModelFormat.STATE_DICT
        if head == b"PK":  # a zip whose directory at the end is missing
            raise ModelError(f"{path} is a damaged or truncated zip archive: re-save the model "
                             "or copy it again")
        if path.suffix.lower() == ".onnx":
            raise ModelError(f"{path} is an ONNX file: compress takes the PyTorch model it was "
                             "exported from (to measure an ONNX file, use compress check)")
        raise ModelError(f"{path} is not a PyTorch model file (not a zip archive or pickle): "
                         "save it with torch.save, torch.jit.save or torch.export.save")
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return ModelFormat.TORCHSCRIPT
    if any(n.endswith("archive_format") or "serialized_exported_program" in n for n in names):
        return ModelFormat.EXPORTED_PROGRAM
    if any(n.endswith("data.pkl") for n in names):
        return ModelFormat.STATE_DICT
    raise ModelError(f"{path} is a zip archive but not a PyTorch model (no TorchScript code, "
                     "exported program or torch.save data): check the file")


def _load_pickle(path: Path, *, arch: str | None, trust_pickle: bool) -> LoadedModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise ModelError(
                f"{path} is a pickled Python object (probably a whole nn.Module), and unpickling "
                "runs arbitrary code from the file: pass --trust-pickle only if you trust it, or "
                "save model.state_dict() and pass --arch module:callable") from e
        importable_from_here()  # as --arch: classes defined beside the model are found
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except (AttributeError, ModuleNotFoundError) as e2:
            raise ModelError(f"cannot unpickle {path}: the classes it names must be importable "
                             f"({first_line(e2)}); define them in a module on PYTHONPATH, or save "
                             "a state_dict and pass --arch") from e2
        except Exception as e2:  # corrupt pickles raise many types
            raise ModelError(f"{path} is a corrupt pickle ({first_line(e2)}): re-save the "
                             "model") from e2
    except Exception as e:  # corrupt archives raise RuntimeError, EOFError, KeyError, ...
        raise ModelError(f"{path} is corrupt or truncated ({first_line(e)}): re-save the model") from e
    if isinstance(obj, nn.Module):
        if arch is not None:
            raise ModelError(f"{path} holds a whole module: drop --arch")
        return LoadedModel(path, ModelFormat.PICKLED_MODULE, obj.eval())
    state = _state_dict_of(obj)
    if state is None:
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a state_dict or module: save "
                         "model.state_dict() (or a checkpoint dict with a 'state_dict' entry)")
    if arch is None:
        raise ModelError(f"{path} is a state_dict without the model's code: pass "
                         "--arch module:callable, a function or class that builds the module")
    module = build_arch(arch)
    state = _unwrapped(state, set(module.state_dict()))
    expected, given = set(module.state_dict()), set(state)
    if expected != given:
        raise ModelError(f"the weights in {path} do not fit --arch {arch}: "
                         f"{_key_difference(expected - given, given - expected)}; pass the "
                         "architecture they were trained with")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"the weights in {path} do not fit --arch {arch} "
                         f"({first_line(e)}): pass the architecture they were trained with") from e
    return LoadedModel(path, ModelFormat.STATE_DICT, module.eval())


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def _unwrapped(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """`state` without the key prefix DataParallel, DistributedDataParallel or torch.compile
    put on every key, when the module expects the keys without it."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and \
                not any(k.startswith(prefix) for k in expected):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _key_difference(missing: set[str], unexpected: set[str], shown: int = 3) -> str:
    """`missing fc.weight, fc.bias; unexpected head.weight (+2 more)`."""
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            first = sorted(keys)[:shown]
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{what} {', '.join(first)}{more}")
    return "; ".join(parts)


def build_arch(arch: str) -> nn.Module:
    """Import `module:callable` (from the current directory or PYTHONPATH) and call it."""
    module = call(arch, option="--arch", error=ModelError, example="models.mlp:paper_mlp")
    if not isinstance(module, nn.Module):
        raise ModelError(f"--arch {arch}() returned {type(module).__name__}, not an nn.Module")
    return module


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj:
                return _state_dict_of(obj[key])
    return None


def _guard(path: Path, what: str, load: Callable[[], Any]) -> Any:
    try:
        with quiet():  # torch.export.load logs its own traceback before raising
            return load()
    except Exception as e:  # loaders raise many types for damaged files
        if "unbacked symbol" in str(e):  # saved, but torch.export.load cannot read it back
            raise ModelError(f"cannot load {path}: the program has a shape that depends on the "
                             "data (an unbacked symbol, e.g. from boolean-mask indexing), which "
                             "torch.export.load cannot read back; save the model's state_dict "
                             "and give --arch, or the module itself with --trust-pickle") from e
        raise ModelError(f"cannot load {path} as a {what} ({first_line(e)}): re-save the model "
                         "with the same torch version (2.13)") from e
