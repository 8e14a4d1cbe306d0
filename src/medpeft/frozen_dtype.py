"""Frozen backbone weights stored in low precision (``model.frozen_dtype``).

:func:`cast_frozen` casts the frozen ``nn.Linear`` and ``nn.Conv*`` layers of a model
(weight and bias: all but a few thousandths of a ViT's parameters) to ``bfloat16`` or
``float16`` and leaves everything else as it is: trainable parameters (adapters, head),
normalisation layers, class/register tokens and position embeddings stay fp32. Each
cast layer gets two hooks: its floating inputs are cast to its own dtype before the
matmul and its output back to fp32, so activations between layers, adapter updates,
gradients, optimizer state and saved adapters stay fp32 and no layer of a method needs
to know (under autocast the output keeps autocast's dtype, as every other matmul's does).
Parameter names are unchanged.

``int8`` is weight-only int8 through torchao (``pip install 'medpeft[scale]'``): each frozen
Linear's weight is held as int8 with one scale per output row (about a quarter of fp32) and
its matmul runs in bf16; frozen Conv layers (the patch embedding) are held in bf16.

:func:`low_precision_build` builds a model without ever holding its fp32 copy: inside the
block, each Linear/Conv layer created is cast to the low dtype as soon as the next layer
starts registering parameters (its own ``__init__``, random init included, ran in fp32), and
later in-place writes into it (a library's init of the whole model, loaded weights) run on
an fp32 copy of that one tensor: the values are those of an fp32 build cast afterwards.
:func:`restore_trainable` then puts what trains (a new head, adapters created next to a
low-precision layer) back in fp32.
"""

from __future__ import annotations

import importlib.util
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from medpeft.errors import ConfigError, did_you_mean
from medpeft.heap import trim_heap

FROZEN_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int8": torch.int8,
}
INT8_COMPUTE = torch.bfloat16  # the matmul dtype of int8 weight-only layers
CAST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def frozen_dtype_named(name: str, key: str = "frozen_dtype") -> torch.dtype:
    """The dtype called ``name`` in :data:`FROZEN_DTYPES`.

    Raises:
        ConfigError: ``name`` is not one of them (``key`` names the setting), or it is ``int8``
            and torchao is not installed.
    """
    if name not in FROZEN_DTYPES:
        raise ConfigError(f"{key}: {name!r} is not one of {list(FROZEN_DTYPES)}{did_you_mean(name, FROZEN_DTYPES)}")
    if name == "int8" and importlib.util.find_spec("torchao") is None:
        raise ConfigError(f"{key}: 'int8' needs torchao: pip install 'medpeft[scale]'")
    return FROZEN_DTYPES[name]


def build_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the frozen layers are built and cast in for ``dtype`` (int8 is quantized from bf16)."""
    return INT8_COMPUTE if dtype == torch.int8 else dtype


def inference_autocast(dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dtype of forwards over frozen layers held in ``dtype`` when nothing trains
    (serving, prediction): the low dtype itself (int8's: bf16, its matmuls' dtype), so the
    activations between layers stay low too; None for fp32."""
    return None if dtype == torch.float32 else build_dtype(dtype)


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast every frozen Linear/Conv layer of ``model`` to ``dtype`` in place.

    A layer counts as frozen when none of its own parameters requires grad (a LoRA
    layer's wrapped ``base`` is frozen, the LoRA layer itself is not a cast layer).
    ``float32`` leaves the model as it is; ``int8`` casts to bf16 and then quantizes the
    frozen Linear weights (torchao weight-only int8, one scale per output row). The heap's
    free pages are then returned to the system (:func:`~medpeft.heap.trim_heap`): without it,
    a ViT-L built in bf16 stays 0.07-0.2 GiB larger, and a training step without
    checkpointing peaks 0.1-0.2 GiB higher (benchmarks/results/memory-breakdown.md).

    Returns:
        The number of parameter elements now held in ``dtype`` (bf16 for int8's Conv layers).
    """
    if dtype == torch.float32:
        return 0
    quantize = _int8_weight_only() if dtype == torch.int8 else None
    cast = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if not isinstance(module, CAST_LAYERS) or not params or any(p.requires_grad for p in params):
            continue
        module.to(build_dtype(dtype))
        if quantize is not None and isinstance(module, nn.Linear):
            quantize(module)
            if type(module) is nn.Linear:
                module.__class__ = Int8WeightLinear
        module.register_forward_pre_hook(_inputs_to_own_dtype)
        module.register_forward_hook(_output_to_float32)
        cast += sum(p.numel() for p in params)
    trim_heap()  # the freed fp32 weights and a layer-by-layer build's temporaries, else kept resident
    return cast


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a quantized tensor (``int8``), which cannot be written or merged into."""
    return type(weight.data) is not torch.Tensor


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes ``tensor`` holds: a quantized one's int8 values and scales (its ``element_size`` is
    that of the dtype it computes in), any other its own."""
    if not is_quantized(tensor):
        return tensor.nbytes
    names, _ = tensor.__tensor_flatten__()
    return sum(getattr(tensor, n).nbytes for n in names if getattr(tensor, n) is not None)


@contextmanager
def low_precision_build(dtype: torch.dtype) -> Iterator[None]:
    """Inside the block, every Linear/Conv layer built is held in ``dtype`` once its own
    ``__init__`` has run (``int8``: in bf16, quantized later by :func:`cast_frozen`);
    ``float32`` changes nothing.

    Each layer's floating parameters are swapped for new ``dtype`` parameters (the fp32 ones are
    freed) when a parameter of another module is registered, and the last ones when the block
    ends. In-place writes to a swapped parameter afterwards (a library's init of the whole model,
    weights loaded into it) run on an fp32 copy of that one tensor, rounded once when another
    tensor is touched (:class:`_Fp32Writes`), so the values are those of an fp32 build cast
    after it, and at most about one layer is ever alive in fp32. The layers get no hooks here:
    :func:`cast_frozen` adds them once the trainable parameters are known.
    """
    dtype = build_dtype(dtype)
    if dtype == torch.float32:
        yield
        return
    writes = _Fp32Writes()
    pending: list[nn.Module] = []

    def swap(layer: nn.Module) -> None:
        for param in _swap_parameters(layer, dtype):
            writes.track(param)

    def on_register(module: nn.Module, name: str, param: Any) -> None:
        for layer in [m for m in pending if m is not module]:
            swap(layer)
            pending.remove(layer)
        if isinstance(module, CAST_LAYERS) and module not in pending:
            pending.append(module)

    handle = nn.modules.module.register_module_parameter_registration_hook(on_register)
    try:
        with writes:
            yield
            for layer in pending:
                swap(layer)
    finally:
        handle.remove()


class _Fp32Writes(TorchFunctionMode):
    """In-place ops on tracked low-precision tensors run on an fp32 copy of the tensor written
    to; the copy is rounded back into it when any other op runs, so a sequence of in-place
    ops (``uniform_``, ``erfinv_``, ``mul_``, ``clamp_``: a truncated-normal init) rounds once."""

    def __init__(self) -> None:
        super().__init__()
        self.tracked: dict[int, weakref.ref] = {}  # data_ptr -> parameter
        self.open: tuple[torch.Tensor, torch.Tensor] | None = None  # (low tensor, its fp32 copy)

    def track(self, param: torch.Tensor) -> None:
        self.tracked[param.data_ptr()] = weakref.ref(param)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if target is None or not self._is_tracked_write(func, target):
            self._close()
            return func(*args, **kwargs)
        if self.open is None or self.open[0].data_ptr() != target.data_ptr():
            self._close()
            self.open = (target, target.detach().float())
        func(self.open[1], *args[1:], **kwargs)
        return target

    def __exit__(self, *exc: Any) -> Any:
        self._close()
        return super().__exit__(*exc)

    def _is_tracked_write(self, func: Any, target: torch.Tensor) -> bool:
        name = getattr(func, "__name__", "")
        if not name.endswith("_") or name.endswith("__") or target.is_meta:
            return False
        param = self.tracked.get(target.data_ptr(), lambda: None)()
        return param is not None and param.dtype == target.dtype

    def _close(self) -> None:
        if self.open is not None:
            low, copy = self.open
            self.open = None
            with torch.no_grad():
                low.copy_(copy)


def restore_trainable(model: nn.Module) -> int:
    """Put the parameters of every module of ``model`` that has a trainable parameter of its own
    back in fp32 (new Parameter objects: build optimizers after); returns how many were restored.

    Such a module is not frozen, so :func:`cast_frozen` leaves it in fp32: after
    :func:`low_precision_build` this undoes the build's cast of a new head or of adapters
    created in their base layer's dtype (their random init keeps bf16 precision).
    """
    restored = 0
    for module in model.modules():
        if any(p is not None and p.requires_grad for p in module._parameters.values()):
            restored += len(_swap_parameters(module, torch.float32))
    return restored


def _swap_parameters(module: nn.Module, dtype: torch.dtype) -> list[nn.Parameter]:
    """Replace ``module``'s own floating parameters by new ``dtype`` ones (the old ones are freed)."""
    swapped = []
    for name, param in list(module._parameters.items()):
        if param is not None and param.is_floating_point() and param.dtype != dtype:
            module._parameters[name] = nn.Parameter(param.detach().to(dtype), requires_grad=param.requires_grad)
            swapped.append(module._parameters[name])
    return swapped


def _int8_weight_only() -> Callable[[nn.Linear], Any]:
    """torchao's weight-only int8 quantization of one Linear (one scale per output row)."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        raise ConfigError(f"frozen_dtype: 'int8' needs torchao: pip install 'medpeft[scale]' ({e})") from e
    config = Int8WeightOnlyConfig(set_inductor_config=False)

    def quantize(layer: nn.Linear) -> None:
        quantize_(layer, config)
        trim_heap()  # the freed bf16 weight and fp32 temporaries, else held between the int8 weights

    return quantize


class Int8WeightLinear(nn.Linear):
    """A frozen Linear whose weight torchao holds as int8, and whose backward multiplies by that
    weight dequantized on the fly: through torchao's own linear, autograd would keep a bf16
    copy of every layer's weight until the backward reaches it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Int8WeightMatmul.apply(x, self.weight, self.bias)


class _Int8WeightMatmul(torch.autograd.Function):
    """``linear(x, W, b)`` for a frozen quantized ``W``: saves ``W`` itself (no copy); the input's
    gradient is ``grad @ dequantize(W)``, built in the gradient's dtype and freed at once."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        out = nn.functional.linear(x, weight, bias)
        return out.clone() if out._is_view() else out  # torchao returns a reshaped view; layers add in place

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (weight,) = ctx.saved_tensors
        return grad @ weight.dequantize(grad.dtype), None, None


def _inputs_to_own_dtype(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: floating tensor arguments in the layer's weight dtype."""
    dtype = module.weight.dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _output_to_float32(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: the layer's output back in fp32 for the rest of the model (under autocast
    it stays in the autocast dtype, as autocast leaves every matmul's output)."""
    if not torch.is_tensor(output) or torch.is_autocast_enabled(output.device.type):
        return output
    return output.float()
