"""Save and load task adapters of every method: ``adapter_model.safetensors`` + ``adapter_config.json``.

An adapter file stores what its method trains (its adapter tensors, the head and
the fusion's new parameters; every weight for ``full``). Keys never contain the
adapter name (``blocks.0.attn.qkv.lora_A``, ``head.weight``), so a saved adapter
loads under any name. medpeft 0.1 folders load too: format-1 configs, and the
multimodal runs' ``trainable.safetensors`` + ``model_spec.json``
(:mod:`medpeft.adapters_io.legacy`).

Many adapters on one frozen backbone: :func:`load_adapter` with ``model=...``
adds a keyed adapter (LoRA, MoRA) under a new name and turns ``model.head`` into a
:class:`TaskHeads`; a call picks its task through :func:`medpeft.routing.route`
(a call that routes none gets the first adapter loaded). Typical use::

    model, cfg = load_adapter("adapters/tb", weights="vit_b16.safetensors")
    load_adapter("adapters/blood", model)   # same backbone, second task
    with route(adapters="tb"):
        logits = model(images)
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medpeft.adapters_io.config import (
    WEIGHTS_NAME,
    AdapterConfig,
    Preprocessing,
    check_input_size,
    config_path,
    make_config,
    read_adapter_config,
    write_adapter_config,
)
from medpeft.adapters_io.legacy import LEGACY_SPEC_NAME, read_legacy_adapter
from medpeft.atomic import atomic_folder
from medpeft.backbones.base import Backbone, describe
from medpeft.backbones.checkpoints import BackboneIdentity, backbone_identity, identity_mismatch
from medpeft.backbones.timm_vit import timm_input
from medpeft.backbones.weights import copy_weights, read_state_dict, write_state_dict
from medpeft.errors import ConfigError, WeightsError
from medpeft.frozen_dtype import restore_trainable
from medpeft.heads import HEAD_NAME, HEADS_DICT, TaskHeads, head_of
from medpeft.methods import Method, get_method
from medpeft.methods.layers import adapter_names, delete_adapter
from medpeft.model import ModelSpec, build_architecture, build_model, check_frozen_dtype

HUB = "hub"  # backbone_weights value: pretrained weights from the hub
_WRAPPED = re.compile(r"\.base(?=\.)")


def adapter_parameters(model: nn.Module, adapter_name: str, method: Method) -> dict[str, torch.Tensor]:
    """Name-independent keys -> live tensors of one adapter (what its file stores)."""
    params = {}
    for name, param in model.named_parameters():
        key = _adapter_key(name, adapter_name, method)
        if key is not None and (key.startswith(model.trained_prefixes) or method.is_trainable(key)):
            params[key] = param
    return params


def _adapter_key(name: str, adapter_name: str, method: Method) -> str | None:
    """``name`` without the adapter's key; None for a tensor of another adapter."""
    parts = name.split(".")
    keyed = [i for i, part in enumerate(parts[:-1]) if part in (*method.adapter_dicts, HEADS_DICT)]
    if keyed:
        i = keyed[-1]
        if parts[i + 1] != adapter_name:
            return None
        parts = parts[: i + 1] + parts[i + 2 :]
        if parts[i] == HEADS_DICT:
            del parts[i]
    return _WRAPPED.sub("", ".".join(parts))


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    spec: ModelSpec,
    labels: list[str],
    task: str,
    preprocessing: Preprocessing | None = None,
    adapter_name: str = "default",
    backbone_weights: str | Path | None = None,
    kinds: dict[str, str] | None = None,
    inputs: dict | None = None,
    backbone_seed: int | None = None,
    spec_rebuilds: bool = True,
    positive_class: str | None = None,
    backbone: BackboneIdentity | None = None,
) -> Path:
    """Write one adapter as ``adapter_model.safetensors`` + ``adapter_config.json``.

    Both are written into a temporary folder that then takes the place of ``out_dir``
    (`medpeft.atomic.atomic_folder`): a failed save leaves no half adapter, and an
    adapter already there intact.

    Args:
        model: Model holding the adapter.
        out_dir: Folder to write (created if needed).
        spec: The spec the model was built from (backbone, fusion, method, settings).
        labels: Names of the head's outputs.
        task: ``multiclass`` or ``multilabel``.
        preprocessing: Image preprocessing; default: the backbone's own at ``spec.img_size``.
        adapter_name: Which adapter to save.
        backbone_weights: The frozen backbone's checkpoint file, or ``"hub"``; recorded
            so that loading finds them again.
        kinds: Modality -> ``image``/``text`` (default: from the spec).
        inputs: How samples were read (``missing_image``, ``combine``, ``tokenizer``).
        backbone_seed: The seed a random backbone was built after (``torch.manual_seed``
            right before ``build_model``), so loading rebuilds the same one.
        spec_rebuilds: ``spec`` rebuilds the model (checked: same adapter tensors); False for
            a backbone module passed in whose architecture arguments are unknown (loading then
            needs that module again).
        positive_class: The class a two-class task's sensitivity and ROC are about.
        backbone: The identity of the backbone weights (sha256, hub repo), as taken when
            training started; default: that of ``backbone_weights`` now.

    Returns:
        The output folder.
    """
    outputs = _head_outputs(head_of(model, adapter_name)) if hasattr(model, HEAD_NAME) else model.num_classes
    if len(labels) != outputs:
        raise ConfigError(f"{len(labels)} labels, but head {adapter_name!r} has {outputs} outputs")
    method = get_method(spec.method)
    tensors = adapter_parameters(model, adapter_name, method)
    if spec_rebuilds:
        _check_spec(tensors, spec, method)
    if preprocessing is None:
        preprocessing = default_preprocessing(model, spec.img_size)
    if backbone_weights not in (None, HUB):
        backbone_weights = str(Path(backbone_weights).resolve())
    if backbone is None and spec_rebuilds:
        local = None if backbone_weights == HUB else backbone_weights
        backbone = backbone_identity(spec.kind, spec.backbone, local, backbone_weights == HUB, model)
    config = make_config(spec, labels, task, preprocessing, kinds, inputs, backbone_weights)
    config.backbone_seed = backbone_seed if backbone_weights is None else None
    config.backbone_sha256, config.backbone_hub = (backbone.sha256, backbone.hub) if backbone else (None, None)
    config.positive_class = positive_class
    with atomic_folder(out_dir) as folder:
        write_state_dict(folder / WEIGHTS_NAME, tensors)
        write_adapter_config(config, folder)
    return Path(out_dir)


def _head_outputs(head: nn.Module) -> int:
    """Outputs of a head (its last Linear)."""
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features


def _check_spec(tensors: Mapping[str, torch.Tensor], spec: ModelSpec, method: Method) -> None:
    """Refuse to save a spec that does not describe the adapter (timm: same tensors)."""
    if spec.kind != "timm":
        return
    kwargs = dict(spec.model_kwargs)  # built on the meta device: shapes only, no memory
    with torch.device("meta"):
        ref = build_model(ModelSpec(**{**vars(spec), "model_kwargs": kwargs}))
    described = {k: tuple(v.shape) for k, v in adapter_parameters(ref, "default", method).items()}
    actual = {k: tuple(v.shape) for k, v in tensors.items()}
    if described != actual:
        differ = sorted(set(described.items()) ^ set(actual.items()))[:4]
        raise ConfigError(
            f"the adapter's tensors differ from what its spec (method {spec.method!r}, settings "
            f"{spec.settings_dict()}) describes: {differ}"
        )


def default_preprocessing(model: nn.Module, img_size: int | None) -> Preprocessing:
    """The backbone's own preprocessing (its family's :meth:`~medpeft.backbones.base.Backbone.preprocessing`),
    at ``img_size`` when given.

    ``model`` is a fusion model or a native backbone; a module no family reads (ViLT)
    gets timm's defaults.
    """
    if hasattr(model, "backbone_views"):
        natural = next(iter(model.backbone_views().values())).preprocessing()
    else:
        natural = timm_input(model)
    return Preprocessing(**{**natural, "size": img_size or natural["size"]})


def load_adapter(
    path: str | Path,
    model: nn.Module | None = None,
    adapter_name: str | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    allow_random_backbone: bool = False,
    allow_other_weights: bool = False,
    frozen_dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, AdapterConfig]:
    """Load a saved adapter, building its model or adding it to a given one.

    Args:
        path: Adapter folder (or its ``adapter_config.json``).
        model: A model with the same backbone to add this adapter to (methods with
            named adapters: LoRA, MoRA); its other adapters stay. ``None`` builds a
            model from the config.
        adapter_name: Name for the adapter; defaults to the folder name.
        weights: Backbone checkpoint when building the model; by default the one
            recorded at save time (see `AdapterConfig.backbone_weights`).
        pretrained: Fetch the backbone's hub weights when building the model.
        allow_random_backbone: Build a random backbone when the adapter records
            neither weights nor the seed of its random backbone (outputs are then
            meaningless; tests and demos only).
        allow_other_weights: Build on backbone weights other than those the adapter
            records (another sha256 or hub repo) with a warning, instead of refusing.
        frozen_dtype: dtype of the built model's frozen Linear/Conv layers
            (:mod:`medpeft.frozen_dtype`: bf16 halves them, int8 quarters the Linear ones); the
            adapter and head are loaded in fp32, as saved.

    Returns:
        The model and the adapter's config. A call serves the adapter it routes
        (:func:`medpeft.routing.route`), else the model's first adapter.

    Raises:
        WeightsError: the backbone weights differ from those the adapter records
            (`verify_weights`).
    """
    folder = config_path(path).parent
    config, state, source = read_adapter_folder(folder)
    name = adapter_name or folder.resolve().name
    method = get_method(config.method)
    if model is None:
        check_frozen_dtype(method, frozen_dtype, "frozen_dtype")
        if weights is None and not pretrained:
            weights, pretrained = recorded_backbone(config, folder, allow_random_backbone)
        model = build_adapter_model(config, weights, pretrained, name, frozen_dtype)
        actual = backbone_identity(config.kind, config.backbone, weights, pretrained, model)
        verify_weights(config, folder, actual, allow_other_weights)
        check_input_size(model, config, folder)
        copy_weights(adapter_parameters(model, name, method), state, source)
        return model, config
    if not method.adapter_dicts:
        raise ConfigError(f"{folder}: {config.method!r} adapters cannot join a given model")
    check_backbone(model, config, folder)
    check_input_size(model, config, folder)
    add_adapter_weights(model, name, method, config.method_settings(), state, source)
    return model, config


def read_adapter_folder(folder: str | Path) -> tuple[AdapterConfig, dict[str, torch.Tensor], Path]:
    """Config, tensors and tensor file of an adapter folder (current or 0.1 layout)."""
    folder = config_path(folder).parent
    if _is_legacy(folder):
        return read_legacy_adapter(folder)
    source = folder / WEIGHTS_NAME
    return read_adapter_config(folder), read_state_dict(source), source


def _is_legacy(folder: Path) -> bool:
    return (folder / LEGACY_SPEC_NAME).is_file() and not config_path(folder).is_file()


def read_config(path: str | Path) -> AdapterConfig:
    """The config of an adapter folder of any layout (medpeft 0.1 included), without its tensors."""
    folder = config_path(path).parent
    return read_legacy_adapter(folder)[0] if _is_legacy(folder) else read_adapter_config(folder)


def recorded_backbone(
    config: AdapterConfig, folder: Path, allow_random_backbone: bool = False
) -> tuple[str | None, bool]:
    """``(weights, pretrained)`` the adapter was trained on, as recorded in its config.

    A randomly initialised backbone is rebuilt exactly from its recorded seed (see
    `build_adapter_model`); without a recorded seed it cannot be, and loading is
    refused unless ``allow_random_backbone``.

    Raises:
        WeightsError: if the recorded checkpoint is not on this machine, or the
            backbone was random and its seed is unknown: the adapter on another
            backbone would predict nonsense.
    """
    recorded = config.backbone_weights
    if get_method(config.method).trains_everything or (recorded is None and config.backbone_seed is not None):
        return None, False
    if recorded is None:
        if not allow_random_backbone:
            raise WeightsError(
                f"{folder} records no backbone weights (trained on a random backbone, or "
                "imported without --weights); on an unknown backbone its outputs are "
                "meaningless. Pass the checkpoint with --weights (Python: weights=...), or "
                "--random-backbone (allow_random_backbone=True) to run it anyway"
            )
        warnings.warn(
            f"{folder} runs on a randomly initialised backbone: its outputs are meaningless",
            stacklevel=3,
        )
        return None, False
    if recorded == HUB:
        return None, True
    path = folder / recorded  # absolute paths stay as they are
    if not path.exists():
        raise WeightsError(
            f"{folder} was trained on the backbone weights in {recorded}, which is not here; "
            "pass that checkpoint with --weights (Python: weights=...)"
        )
    return str(path), False


def verify_weights(
    config: AdapterConfig, folder: str | Path, actual: BackboneIdentity, allow_other_weights: bool = False
) -> None:
    """Refuse backbone weights other than those the adapter records (a warning with
    ``allow_other_weights``); adapters that record none (saved by an older medpeft, or on a
    random backbone) are not checked.

    Raises:
        WeightsError: naming the weights file and both sha256 (or both hub repos).
    """
    if get_method(config.method).trains_everything:
        return  # the adapter holds every weight
    recorded = config.recorded_identity
    mismatch = identity_mismatch(recorded, actual)
    if mismatch is None:
        if recorded.known and not _comparable(recorded, actual):
            what = f"sha256 {recorded.sha256}" if recorded.sha256 else f"hub repo {recorded.hub}"
            warnings.warn(f"{folder}: the backbone weights loaded now cannot be compared with those "
                          f"the adapter records ({what}); they are not checked", stacklevel=3)
        return
    if not allow_other_weights:
        raise WeightsError(
            f"{folder} was trained on other backbone weights: {mismatch}. Pass the checkpoint it "
            "was trained on with --weights, or --allow-other-weights (Python: "
            "allow_other_weights=True) to run it on these anyway"
        )
    warnings.warn(f"{folder} runs on other backbone weights than it was trained on ({mismatch}); "
                  "its outputs may be wrong", stacklevel=3)


def _comparable(recorded: BackboneIdentity, actual: BackboneIdentity) -> bool:
    return bool((recorded.sha256 and actual.sha256) or (recorded.hub and actual.hub))


def build_adapter_model(
    config: AdapterConfig,
    weights: str | None,
    pretrained: bool,
    adapter_name: str,
    frozen_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The adapter's model (frozen Linear/Conv layers in ``frozen_dtype``, :func:`build_model`);
    a random backbone is drawn from its recorded seed (caller's RNG kept)."""
    with torch.random.fork_rng(devices=[]):
        if weights is None and not pretrained and config.backbone_seed is not None:
            torch.manual_seed(config.backbone_seed)
        return build_model(config.to_spec(), pretrained=pretrained, weights=weights, adapter_name=adapter_name,
                           frozen_dtype=frozen_dtype)


def add_adapter_weights(
    model: nn.Module,
    name: str,
    method: Method,
    settings: object,
    state: Mapping[str, torch.Tensor],
    source: str | Path,
) -> None:
    """Add adapter ``name`` with its own head, fill it from ``state`` (the model's first adapter stays
    the default of calls that route none).

    On any error the model is left as it was.
    """
    if name in adapter_names(model):
        raise ConfigError(f"the model already has an adapter named {name!r}; choose another name")
    head_weight = state.get(f"{HEAD_NAME}.weight")
    if head_weight is None:
        raise WeightsError(f"{source}: missing tensor {HEAD_NAME}.weight")
    try:
        method.attach(model, settings, name)
        _add_head(model, name, head_weight.shape[0])
        restore_trainable(model)  # adapters attached to low-precision frozen layers: fp32, as trained
        copy_weights(adapter_parameters(model, name, method), state, source)
    except (ConfigError, WeightsError):
        delete_adapter(model, name)
        raise


def _add_head(model: nn.Module, name: str, outputs: int) -> None:
    """Give adapter ``name`` a fresh head, turning ``model.head`` into :class:`TaskHeads`."""
    heads = model.get_submodule(HEAD_NAME)
    if not isinstance(heads, TaskHeads):
        owner = next((a for a in adapter_names(model) if a != name), "base")
        heads = TaskHeads({owner: heads})
        setattr(model, HEAD_NAME, heads)
    ref = next(iter(heads.heads.values())).weight
    heads.add_head(name, nn.Linear(ref.shape[1], outputs, device=ref.device, dtype=ref.dtype))


def check_backbone(model: nn.Module, config: AdapterConfig, source: str | Path) -> None:
    """Raise :class:`WeightsError` unless ``model``'s backbone is the config's, of any family.

    Builds the adapter's recorded architecture on the meta device and compares, backbone
    by backbone: the family and class (and timm architecture name), the number of blocks
    and every tensor's shape (width, MLP, patch grid from ``img_size``). The heads are
    not compared: each adapter brings its own.
    """
    if config.kind == "vilt" or len(config.modalities) != 1 or config.fusion != "auto" or config.missing_token:
        raise ConfigError(
            f"{source}: only single-image adapters join a given model; this one reads "
            f"{dict(config.modalities)} ({config.kind}, fusion {config.fusion!r})"
        )
    reference = build_architecture(config.to_spec(), *_architecture_source(config, Path(source)))
    problems = _backbone_differences(model, reference)
    if problems:
        raise WeightsError(
            f"{source}: adapter was trained on {config.backbone} ({config.kind}, img_size {config.img_size}, "
            f"{config.model_kwargs or 'default dims'}), the given model differs: "
            f"{'; '.join(problems[:4])}. Load it without model= to build its own backbone."
        )


def _architecture_source(config: AdapterConfig, folder: Path) -> tuple[str | None, bool]:
    """``(weights, pretrained)`` where the recorded backbone's architecture is read from (the
    config.json of a transformers folder or hub id; other kinds need neither)."""
    recorded = config.backbone_weights
    if config.kind != "transformers" or recorded is None:
        return None, False
    return (None, True) if recorded == HUB else (str(folder / recorded), False)


def _backbone_differences(model: nn.Module, reference: nn.Module) -> list[str]:
    """How the backbones of ``model`` differ from those of ``reference`` (a meta-device build)."""
    own_views = model.backbone_views() if hasattr(model, "backbone_views") else {"": describe(model)}
    problems = []
    for prefix, wanted in reference.backbone_views().items():
        got = own_views.get(prefix)
        if got is None or got.describe() != wanted.describe():
            problems.append(f"backbone: expected {wanted.describe()}, got {got.describe() if got else 'none'}")
            continue
        if _timm_name(got) != _timm_name(wanted):
            problems.append(f"architecture: expected {_timm_name(wanted)}, got {_timm_name(got)}")
        if len(got.block_names()) != len(wanted.block_names()):
            problems.append(f"depth: expected {len(wanted.block_names())}, got {len(got.block_names())}")
        wanted.prepare()  # the layout adapters see (open_clip: PackedAttention), as in ``model``
        got.prepare()
        problems += _shape_differences(got.module, wanted.module, prefix)
    return problems


def _timm_name(view: Backbone) -> str | None:
    """timm's architecture name of a backbone (None for other libraries)."""
    return getattr(view.module, "pretrained_cfg", {}).get("architecture")


def _shape_differences(own: nn.Module, wanted: nn.Module, prefix: str) -> list[str]:
    """Tensors of ``wanted`` that ``own`` lacks or holds in another shape (heads and adapters aside)."""
    def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
        tensors = [*module.named_parameters(), *module.named_buffers()]
        return {_WRAPPED.sub("", name): tuple(t.shape) for name, t in tensors}

    own_shapes = shapes(own)
    head = HEAD_NAME if not prefix else None  # a timm ViT is its own fusion model: its head is the adapter's
    problems = []
    for key, shape in shapes(wanted).items():
        if not (head and key.startswith(head)) and own_shapes.get(key) != shape:
            got = own_shapes.get(key, "missing")
            problems.append(f"{prefix + '.' if prefix else ''}{key}: expected {shape}, got {got}")
    return problems
