"""Model names -> factories and default specs; `package.module:factory` for anything else.

A user's model is a first-class citizen: any importable callable returning an `nn.Module` works. Its spec
comes from, in order: `--spec FILE.json`, an `edgeface_spec` dict attribute on the model or the factory's
module (`EDGEFACE_SPEC`), then defaults (112x112 RGB, mean/std 0.5) with the embedding size measured by one
forward pass, since guessing it wrong would only fail later and more confusingly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from edgeface.errors import EdgefaceError, ModelError
from edgeface.spec import GRAY, ModelSpec, with_defaults

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


@contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    """A probe forward: eval mode (BatchNorm on its running statistics, no dropout), no autograd, and the
    model's own mode back afterwards, whatever the forward raised."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class _FirstConv(Exception):
    """Raised by a pre-hook to stop the probe forward at the first conv: only its input matters."""


def first_conv(model: nn.Module, input_size: tuple[int, int], channels: int = 3) -> tuple[str, int] | None:
    """(name, in_channels) of the first Conv2d the forward calls on a `channels`-channel input, when that
    conv receives the input's channels unchanged; else None (no conv, or the forward changes the channel
    count first, as a model that converts to grey itself does: then the conv says nothing about what the
    model takes).

    The module order of a model says nothing about the order its forward runs; a pre-hook sees the first
    conv actually called, and stops the forward there, before the conv can fail on a wrong channel count.
    """
    import torch

    names = {m: n for n, m in model.named_modules()}
    found: list[tuple[str, int, int]] = []

    def hook(m: nn.Module, args: Any) -> None:
        got = args[0].shape[1] if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4 else -1
        found.append((names.get(m, type(m).__name__), int(m.in_channels), int(got)))  # type: ignore[arg-type]
        raise _FirstConv

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with _probing(model):
            model(torch.zeros(1, channels, *input_size))
    except Exception:  # noqa: BLE001 - _FirstConv, or a forward that fails before any conv
        pass
    finally:
        for h in handles:
            h.remove()
    if not found or found[0][2] != channels:
        return None
    return found[0][0], found[0][1]


def _channel_error(model: nn.Module, spec: ModelSpec) -> EdgefaceError | None:
    """Why a forward on the spec's channels failed, when the reason is the first conv's channel count.

    torch's own "expected input[1, 3, 112, 112] to have 1 channels" names neither the layer nor the spec
    field to fix."""
    conv = first_conv(model, spec.input_size, spec.channels)
    if conv is None or conv[1] == spec.channels:
        return None
    name, cin = conv
    if cin not in (1, 3):
        return ModelError(
            f"the model's first conv '{name}' takes {cin} input channels; edgeface feeds faces as 3 channels "
            "(channel_order RGB or BGR) or 1 (GRAY): make the model's stem take one of those"
        )
    want = (
        'channel_order "GRAY" with one mean and one std value'
        if cin == 1
        else "channel_order RGB or BGR with three mean and three std values"
    )
    return EdgefaceError(
        f"the model's first conv '{name}' takes {cin} input channel{'s' if cin > 1 else ''} but the spec "
        f"feeds {spec.channels} (channel_order {spec.channel_order}); declare {want} "
        "(--spec or edgeface_spec)"
    )


def _measure_embedding_dim(model: nn.Module, spec: ModelSpec) -> int:
    """The embedding size of one forward pass on a zero face of the spec's input size.

    Every later step (tracing, calibration, parity, the runtime) assumes a [batch, dim] tensor from an
    input of `spec.input_size`; a model that returns a tuple or a dict, or a spec that does not fit the
    model, is refused here with one line instead of failing deep inside an export.
    """
    import torch

    c, (h, w) = spec.channels, spec.input_size
    try:
        with _probing(model):
            out = model(torch.zeros(1, c, h, w))
    except Exception as e:
        reason = _channel_error(model, spec)
        if reason is not None:
            raise reason from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgefaceError(
            f"the model fails on a 1x{c}x{h}x{w} input ({type(e).__name__}: {first}); give --spec with its "
            "input_size, or declare EDGEFACE_SPEC in its module"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        raise EdgefaceError(
            f"model output must be a [batch, dim] embedding tensor, got {_describe(out)}; make the factory "
            "return a module whose forward returns only the embedding"
        )
    return int(out.shape[1])


def check_spec(model: nn.Module, spec: ModelSpec, declared: bool = True) -> ModelSpec:
    """`spec` with the embedding size the model really returns; a declared size that differs is refused."""
    dim = _measure_embedding_dim(model, spec)
    if declared and spec.embedding_dim != dim:
        raise EdgefaceError(
            f"the model returns {dim}-d embeddings but its spec says embedding_dim {spec.embedding_dim}; "
            "fix the spec (--spec or edgeface_spec)"
        )
    return spec.replace(embedding_dim=dim)


def _default_spec(model: nn.Module, name: str, declared: dict[str, Any]) -> ModelSpec:
    """The documented defaults (112x112 RGB, mean/std 0.5), GRAY when the declared mean or std has one
    value (only GRAY takes one), or when none is declared and the model's first conv takes 1 channel: for
    a 1-channel model RGB would be a default that cannot run. Declared three-value mean/std keep RGB, so a
    1-channel model gets the channel error that names its first conv."""
    counts = {len(v) for k in ("mean", "std") if isinstance(v := declared.get(k), list)}
    if counts:
        gray = counts == {1}
    else:
        size = declared.get("input_size")
        probe = (
            tuple(size)
            if isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and 8 <= v <= 4096 for v in size)
            else (112, 112)
        )
        conv = first_conv(model, probe)  # type: ignore[arg-type]
        gray = conv is not None and conv[1] == 1
    return ModelSpec(name=name, channel_order=GRAY, mean=(0.5,), std=(0.5,)) if gray else ModelSpec(name=name)


def defaulted_note(defaulted: list[str], spec: ModelSpec) -> str | None:
    """One line naming the spec fields the model did not declare and the values they took."""
    if not defaulted:
        return None
    shown = {
        "input_size": "x".join(map(str, spec.input_size)),
        "layout": spec.layout,
        "channel_order": spec.channel_order,
        "mean": "/".join(f"{v:g}" for v in spec.mean),
        "std": "/".join(f"{v:g}" for v in spec.std),
        "embedding_dim": f"{spec.embedding_dim} (measured)",
    }
    parts = ", ".join(f"{k} {shown[k]}" for k in defaulted)
    return f"{spec.name}: the spec does not declare {', '.join(defaulted)}; using the defaults: {parts}"


def build_model(
    name: str, spec_override: ModelSpec | dict[str, Any] | None = None
) -> tuple[nn.Module, ModelSpec]:
    """Instantiate a model (random weights) and its spec.

    `spec_override` is a complete spec, or a user's declared fields (`--spec FILE.json`) that may leave
    some out; the fields left out take the defaults and are listed in the spec's provenance under
    `spec_defaults` (`defaulted_note` words them for the user)."""
    if name in REGISTRY:
        entry = REGISTRY[name]
        if isinstance(spec_override, dict):  # a partial --spec: the rest is this model's own spec
            spec, missing = with_defaults({"name": name, **spec_override}, entry.spec)
            model = entry.factory()
            return model, _record_defaults(
                check_spec(model, spec), [k for k in missing if k != "embedding_dim"]
            )
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
    if isinstance(spec_override, ModelSpec):
        return model, check_spec(model, spec_override)
    declared = spec_override
    if declared is None:
        declared = getattr(model, "edgeface_spec", None) or getattr(
            importlib.import_module(name.partition(":")[0]), "EDGEFACE_SPEC", None
        )
    if isinstance(declared, ModelSpec):
        return model, check_spec(model, declared)
    if declared is None:
        declared = {}
    elif not isinstance(declared, Mapping):
        raise EdgefaceError(f"--model {name}: edgeface_spec must be a dict, got {type(declared).__name__}")
    declared = dict(declared)
    spec, missing = with_defaults({"name": name, **declared}, _default_spec(model, name, declared))
    spec = check_spec(model, spec, declared="embedding_dim" not in missing)
    if not declared and spec.channel_order != GRAY:
        return model, spec  # nothing declared: the documented defaults, as always (no note on every run)
    return model, _record_defaults(spec, missing)


def _record_defaults(spec: ModelSpec, missing: list[str]) -> ModelSpec:
    if not missing:
        return spec
    return spec.replace(provenance={**spec.provenance, "spec_defaults": list(missing)})
