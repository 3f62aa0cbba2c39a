"""Model names -> factories and default specs; `package.module:factory` for anything else.

A user's model is a first-class citizen: any importable callable returning an `nn.Module` works. Its spec
comes from, in order: `--spec FILE.json`, an `edgeface_spec` dict attribute on the model or the factory's
module (`EDGEFACE_SPEC`), then defaults (112x112 RGB, mean/std 0.5) with the embedding size measured by one
forward pass, since guessing it wrong would only fail later and more confusingly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Entry:
    factory: Callable[..., nn.Module]
    spec: ModelSpec
    about: str


def _mobilefacenet() -> nn.Module:
    from edgeface.models.mobilefacenet import MobileFaceNet

    return MobileFaceNet()


def _iresnet(depth: int) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from edgeface.models.iresnet import IResNet

        return IResNet(depth)

    return make


def _mbf() -> nn.Module:
    from edgeface.models.mbf import MBF

    return MBF()


REGISTRY: dict[str, Entry] = {
    "mobilefacenet": Entry(
        _mobilefacenet,
        ModelSpec(name="mobilefacenet", mean=IMAGENET_MEAN, std=IMAGENET_STD, embedding_dim=128),
        "foamliu MobileFaceNet, ReLU6, 128-d (loads ../shared/models/mobilefacenet_ms1m.pt)",
    ),
    **{
        f"iresnet{d}": Entry(
            _iresnet(d),
            ModelSpec(name=f"iresnet{d}", mean=HALF, std=HALF, embedding_dim=512),
            f"arcface_torch IResNet-{d}, PReLU, 512-d",
        )
        for d in (18, 34, 50, 100)
    },
    "mbf": Entry(
        _mbf,
        ModelSpec(name="mbf", mean=HALF, std=HALF, embedding_dim=512),
        "arcface_torch MobileFaceNet (mbf), PReLU, 512-d",
    ),
}


def _import_factory(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise EdgefaceError(
            f"model '{ref}' is neither a known name ({', '.join(REGISTRY)}) nor module:factory"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure of user code is a user error here
        raise EdgefaceError(f"cannot import module '{module_name}' for --model {ref}: {e}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EdgefaceError(f"module '{module_name}' has no attribute '{attr}' (from --model {ref})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise EdgefaceError(f"--model {ref}: '{attr}' is not callable")
    return obj  # type: ignore[no-any-return]


def torchscript_part(model: Any) -> str | None:
    """The name of a TorchScript module inside `model` ("" for the model itself), else None.

    A factory returning `torch.jit.script(net)` gives a module that runs and exports to ONNX, but torch.fx
    (quantize) and litert-torch (TFLite) need the Python forward; they fail with messages about control
    flow or state-dict entries that do not point at the cause."""
    import torch

    for name, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            return name
    return None


def scripted_hint(model: Any, what: str) -> str | None:
    """One error line for `what` (an operation) on a model holding TorchScript, else None."""
    part = torchscript_part(model)
    if part is None:
        return None
    where = f"its submodule '{part}' is" if part else "it is"
    return (
        f"{what} needs the model's Python forward, but {where} TorchScript (torch.jit.script/trace): have "
        "the factory return the plain nn.Module (ONNX export takes TorchScript)"
    )


def _describe(out: Any) -> str:
    if isinstance(out, dict):
        return f"a dict with keys {sorted(map(str, out))[:4]}"
    if isinstance(out, tuple | list):
        return f"a {type(out).__name__} of {len(out)} items"
    return str(getattr(out, "shape", type(out).__name__))


def _measure_embedding_dim(model: nn.Module, spec: ModelSpec) -> int:
    """The embedding size of one forward pass on a zero face of the spec's input size.

    Every later step (tracing, calibration, parity, the runtime) assumes a [batch, dim] tensor from an
    input of `spec.input_size`; a model that returns a tuple or a dict, or a spec that does not fit the
    model, is refused here with one line instead of failing deep inside an export.
    """
    import torch

    h, w = spec.input_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, h, w))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgefaceError(
            f"the model fails on a 1x3x{h}x{w} input ({type(e).__name__}: {first}); give --spec with its "
            "input_size, or declare EDGEFACE_SPEC in its module"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        raise EdgefaceError(
            f"model output must be a [batch, dim] embedding tensor, got {_describe(out)}; make the factory "
            "return a module whose forward returns only the embedding"
        )
    return int(out.shape[1])


def _checked(model: nn.Module, spec: ModelSpec, declared: bool = True) -> ModelSpec:
    """`spec` with the embedding size the model really returns; a declared size that differs is refused."""
    dim = _measure_embedding_dim(model, spec)
    if declared and spec.embedding_dim != dim:
        raise EdgefaceError(
            f"the model returns {dim}-d embeddings but its spec says embedding_dim {spec.embedding_dim}; "
            "fix the spec (--spec or edgeface_spec)"
        )
    return spec.replace(embedding_dim=dim)


def build_model(name: str, spec_override: ModelSpec | None = None) -> tuple[nn.Module, ModelSpec]:
    """Instantiate a model (random weights) and its spec."""
    if name in REGISTRY:
        entry = REGISTRY[name]
        return entry.factory(), spec_override or entry.spec
    if ":" not in name:
        raise EdgefaceError(
            f"unknown model '{name}'; known: {', '.join(REGISTRY)} (or give package.module:factory)"
        )
    factory = _import_factory(name)
    try:
        model = factory()
    except Exception as e:
        raise EdgefaceError(f"factory --model {name} failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise EdgefaceError(f"factory --model {name} returned {type(model).__name__}, not a torch.nn.Module")
    if spec_override is not None:
        return model, _checked(model, spec_override)
    declared = getattr(model, "edgeface_spec", None) or getattr(
        importlib.import_module(name.partition(":")[0]), "EDGEFACE_SPEC", None
    )
    if declared is not None:
        data = dict(declared)
        data.setdefault("schema_version", 1)
        data.setdefault("name", name)
        spec = ModelSpec.from_dict(data)
    else:
        return model, _checked(model, ModelSpec(name=name), declared=False)
    return model, _checked(model, spec)
