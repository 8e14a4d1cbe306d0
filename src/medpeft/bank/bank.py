"""An adapter bank: one frozen backbone serving many task adapters, by name, in mixed batches.

Every task is a saved adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``) trained on the same backbone. Adapters are
loaded onto the shared backbone when first used and kept in a bounded LRU cache
(by count and by bytes); when the backbone is on a GPU, evicted adapters stay in
CPU memory (the CPU tier) and come back without reading the disk. A batch may
mix tasks: each sample names its own, all LoRA updates are computed together
(:meth:`medpeft.methods.lora.layer.LoRALinear.add_mixed_delta`) and each sample is
classified by its task's head. Nothing is copied to switch tasks: the call's
routing (:mod:`medpeft.routing`) picks each sample's adapter.

Example::

    bank = AdapterBank.from_directory("adapters/", max_loaded=8)
    x = bank.preprocess("tb", {"image": "cxr.png"})
    y = bank.preprocess("blood", {"image": png_bytes})
    probs = bank.predict(["tb", "blood"], [x, y])   # one forward
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from medpeft.adapters_io.config import (
    WEIGHTS_NAME,
    AdapterConfig,
    check_input_size,
    config_path,
    read_adapter_config,
)
from medpeft.adapters_io.folder import (
    HUB,
    add_adapter_weights,
    build_adapter_model,
    recorded_backbone,
    verify_weights,
)
from medpeft.backbones.checkpoints import BackboneIdentity, backbone_identity
from medpeft.backbones.weights import read_state_dict
from medpeft.bank.errors import BadInput, UnknownTask, WrongModality
from medpeft.bank.inputs import Input, Preprocessor
from medpeft.bank.tasks import TaskInfo, check_task_name, task_folders, tensor_bytes
from medpeft.errors import ConfigError, WeightsError, did_you_mean
from medpeft.frozen_dtype import inference_autocast, stored_bytes
from medpeft.methods import Method, get_method, method_names
from medpeft.methods.layers import delete_adapter
from medpeft.methods.lora.attach import cache_merged_weights, lora_layers
from medpeft.mixed_precision import autocast
from medpeft.routing import route

BASE_HEAD = "base"  # the backbone's own head, which no task uses


class AdapterBank:
    """Task adapters on one frozen backbone; build with :meth:`from_directory`.

    ``autocast_dtype``: forwards run under autocast to it (bf16 or fp16 on CUDA, bf16 on
    the CPU; :func:`medpeft.mixed_precision.autocast`), None: in the model's own dtypes.

    Thread-safe: loading, eviction and forwards are serialised by one lock.
    """

    def __init__(
        self,
        model: nn.Module,
        reference: AdapterConfig,
        backbone_id: tuple,
        device: str | torch.device = "cpu",
        max_loaded: int | None = None,
        max_bytes: int | None = None,
        explicit_backbone: bool = False,
        weights_identity: BackboneIdentity | None = None,
        allow_other_weights: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if max_loaded is not None and max_loaded < 1:
            raise ConfigError(f"max_loaded: expected an integer >= 1 or None, got {max_loaded}")
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"max_bytes: expected an integer >= 1 or None, got {max_bytes}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.max_loaded, self.max_bytes = max_loaded, max_bytes
        self.cpu_tier = self.device.type != "cpu"
        self._reference = reference
        self._backbone_id = backbone_id
        self._explicit_backbone = explicit_backbone
        self._weights_identity = weights_identity or BackboneIdentity()
        self._allow_other_weights = allow_other_weights
        self.autocast_dtype = autocast_dtype  # forwards under autocast to it (None: in the model's own dtypes)
        self._backbone_bytes = _module_bytes(self.model)
        self._folders: dict[str, Path] = {}
        self._configs: dict[str, AdapterConfig] = {}
        self._bytes: dict[str, int] = {}
        self._preprocessors: dict[str, Preprocessor] = {}
        self._loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._cpu: dict[str, dict[str, torch.Tensor]] = {}
        self._lock = threading.RLock()  # the model: loading, eviction, forwards
        self._tasks_lock = threading.Lock()  # the task registry alone: lookups never wait for a forward
        self.skipped: dict[str, str] = {}  # task name -> why it is not served (skip_unservable)

    @classmethod
    def from_directory(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device = "cpu",
        max_loaded: int | None = None,
        max_bytes: int | None = None,
        weights: str | Path | None = None,
        pretrained: bool = False,
        allow_random_backbone: bool = False,
        allow_other_weights: bool = False,
        skip_unservable: bool = False,
        frozen_dtype: torch.dtype = torch.float32,
    ) -> AdapterBank:
        """A bank of the adapter folders of ``directory`` (:func:`~medpeft.bank.tasks.task_folders`:
        subfolders holding ``adapter_config.json``, run folders, or the folder itself).

        Each task is named after its folder; all must share one backbone (architecture,
        input size, and the recorded weights or random seed). Nothing is loaded yet.

        Args:
            directory: Folder of task folders.
            device: Where the backbone and loaded adapters live.
            max_loaded: Most adapters on the backbone at once (None: no limit).
            max_bytes: Most adapter bytes on the backbone at once (None: no limit).
            weights: Backbone checkpoint for every task (default: the one they record).
            pretrained: Use the backbone's hub weights for every task.
            allow_random_backbone: Run tasks that record neither weights nor a seed.
            allow_other_weights: Serve tasks trained on other backbone weights (another
                sha256) with a warning, instead of refusing them.
            skip_unservable: Leave out the tasks the bank cannot serve (another method,
                backbone or weights) and name each with its reason in :attr:`skipped`,
                instead of refusing them all. None servable: ConfigError naming every
                reason; every servable one refused at registration: the first reason.
            frozen_dtype: dtype of the shared backbone's frozen Linear/Conv layers
                (:mod:`medpeft.frozen_dtype`: ``torch.bfloat16`` halves them, ``torch.int8``
                quarters the Linear ones); adapters and heads are held in fp32, as trained. With
                any but fp32, forwards run under autocast (:func:`~medpeft.frozen_dtype.inference_autocast`:
                bf16 for int8; matmuls, attention and adapter updates in low precision; on a CPU
                with native bf16, bf16 takes about 0.31x fp32's CPU time at 224 px, 0.54x that of
                bf16 layers with fp32 activations between them, int8 0.45x:
                benchmarks/results/serve_precision.md). A fully fine-tuned model's backbone is its
                adapter: it keeps fp32 weights.
        """
        return cls.from_folders(
            task_folders(directory), device=device, max_loaded=max_loaded, max_bytes=max_bytes,
            weights=weights, pretrained=pretrained, allow_random_backbone=allow_random_backbone,
            allow_other_weights=allow_other_weights, skip_unservable=skip_unservable, frozen_dtype=frozen_dtype,
        )

    @classmethod
    def from_folders(
        cls,
        folders: Mapping[str, str | Path],
        *,
        device: str | torch.device = "cpu",
        max_loaded: int | None = None,
        max_bytes: int | None = None,
        weights: str | Path | None = None,
        pretrained: bool = False,
        allow_random_backbone: bool = False,
        allow_other_weights: bool = False,
        skip_unservable: bool = False,
        frozen_dtype: torch.dtype = torch.float32,
    ) -> AdapterBank:
        """A bank of the given ``{task name: adapter folder}``; arguments as :meth:`from_directory`."""
        if not folders:
            raise ConfigError("an adapter bank needs at least one task folder")
        skipped: dict[str, str] = {}
        if skip_unservable:
            folders, skipped = _split_servable(folders)
        first = config_path(next(iter(folders.values()))).parent
        reference = read_adapter_config(first)
        _check_servable(reference, first, alone=len(folders) == 1)
        explicit = weights is not None or pretrained
        if not explicit:
            weights, pretrained = recorded_backbone(reference, first, allow_random_backbone)
        base = dataclasses.replace(reference, method="linear", settings={})
        weights = None if weights is None else str(weights)
        owned = get_method(reference.method).trains_everything  # its backbone is its adapter: fp32, as saved
        model = build_adapter_model(base, weights, pretrained, BASE_HEAD, torch.float32 if owned else frozen_dtype)
        identity = backbone_identity(base.kind, base.backbone, weights, pretrained, model)
        backbone_id = _backbone_id(reference, first, explicit)
        bank = cls(model, reference, backbone_id, device, max_loaded, max_bytes, explicit, identity,
                   allow_other_weights, inference_autocast(frozen_dtype))
        bank.skipped = skipped
        errors = []
        for name, folder in folders.items():
            try:
                bank.register(name, folder)
            except (ConfigError, WeightsError) as error:
                if not skip_unservable:
                    raise
                skipped[name] = str(error)
                errors.append(error)
        if not bank.tasks():
            raise errors[0]  # every task refused: the first reason (e.g. replaced backbone weights)
        return bank

    # ----------------------------------------------------------------- tasks

    def tasks(self) -> list[TaskInfo]:
        """Every task, in registration order."""
        with self._tasks_lock:
            return [self._info(name) for name in self._configs]

    def tasks_by_name(self) -> list[str]:
        """The names of every task, in registration order."""
        with self._tasks_lock:
            return list(self._configs)

    def task(self, name: str) -> TaskInfo:
        """One task; UnknownTask for a name the bank does not hold."""
        with self._tasks_lock:
            return self._info(self._known(name))

    def register(self, name: str, folder: str | Path) -> TaskInfo:
        """Add task ``name`` from an adapter folder (loaded when first used).

        Raises:
            ConfigError: the name is unsafe or taken, or the adapter cannot be served
                by the bank (another method or fusion).
            WeightsError: the adapter was trained on another backbone, or on other weights
                than the bank's (another sha256; a warning with ``allow_other_weights``).
        """
        check_task_name(name)
        folder = config_path(folder).parent
        config = read_adapter_config(folder)
        self._check_joins(config, folder)
        check_input_size(self.model, config, folder)
        explicit = self._explicit_backbone
        if _backbone_id(config, folder, explicit) != self._backbone_id:
            raise WeightsError(
                f"{folder}: trained on another backbone than the bank's ({_describe(config)} vs "
                f"{_describe(self._reference)}); a bank serves tasks of one backbone"
            )
        verify_weights(config, folder, self._weights_identity, self._allow_other_weights)
        size = tensor_bytes(folder)
        with self._lock, self._tasks_lock:
            if name in self._configs:
                raise ConfigError(f"task {name!r} is already in the bank ({self._folders[name]})")
            self._folders[name], self._configs[name], self._bytes[name] = folder, config, size
            return self._info(name)

    def _check_joins(self, config: AdapterConfig, folder: Path) -> None:
        """ConfigError unless the adapter can join this bank: a fully fine-tuned model
        only as the one task of a bank of its own (it replaces the backbone's weights)."""
        with self._tasks_lock:
            alone = not self._configs
            owned = any(get_method(c.method).trains_everything for c in self._configs.values())
        if owned:
            raise ConfigError(f"{folder}: this bank serves one fully fine-tuned model, its own backbone; "
                              "it takes no other task")
        _check_servable(config, folder, alone)

    def load(self, name: str) -> None:
        """Put task ``name``'s adapter on the backbone now (evicting others if needed)."""
        with self._lock:
            self._ensure_loaded([self._known(name)])

    def unload(self, name: str) -> None:
        """Take task ``name``'s adapter off the backbone (kept in the CPU tier on a GPU)."""
        with self._lock:
            if self._known(name) in self._loaded:
                self._evict(name)

    # ------------------------------------------------------------- inference

    def preprocess(
        self, name: str, inputs: Mapping[str, Input], max_pixels: int | None = None
    ) -> dict[str, torch.Tensor]:
        """One file (path or raw bytes) per modality -> the task's preprocessed tensors.

        ``max_pixels``: most pixels of an image, checked before decoding (default: what
        the task's adapter records, else `medpeft.data.imageio.MAX_PIXELS`).

        Raises:
            UnknownTask: for an unknown task.
            BadInput: naming the modality whose data cannot be decoded.
            WrongModality: for a modality the task does not read.
        """
        with self._tasks_lock:  # not the model's lock: uploads decode while a batch runs
            name = self._known(name)
            if name not in self._preprocessors:
                self._preprocessors[name] = Preprocessor(name, self._configs[name])
            preprocessor = self._preprocessors[name]
        return preprocessor(inputs, max_pixels)

    def predict(
        self, names: Sequence[str], inputs: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[torch.Tensor]:
        """Per-sample probabilities over each sample's task labels, in one forward.

        Softmax for multiclass tasks, sigmoid for multilabel ones. Tasks absent from
        the cache are loaded first; a batch naming more tasks than the cache holds runs
        as a few forwards, each over tasks that fit.
        """
        if len(names) != len(inputs):
            raise ConfigError(f"{len(names)} task names for {len(inputs)} inputs")
        with self._lock:
            names = [self._known(n) for n in names]
            images = [self._image(i, n, x) for i, (n, x) in enumerate(zip(names, inputs))]
            out: list[torch.Tensor] = [torch.empty(0)] * len(names)
            for tasks in self._chunks(names):
                self._ensure_loaded(tasks)
                rows = [i for i, n in enumerate(names) if n in tasks]
                probs = self._forward(torch.stack([images[i] for i in rows]), [names[i] for i in rows])
                for i, p in zip(rows, probs):
                    out[i] = p
            return out

    def memory(self) -> dict:
        """Bytes of the backbone, the loaded adapters, the CPU tier and the cache limits."""
        with self._lock:
            return {
                "device": str(self.device),
                "backbone_bytes": self._backbone_bytes,
                "loaded_bytes": self._loaded_bytes(),
                "cpu_tier_bytes": sum(self._bytes[n] for n in self._cpu),
                "stack_cache_bytes": sum(layer.stack_bytes() for layer in lora_layers(self.model).values()),
                "loaded": list(self._loaded),
                "tasks": {n: self._bytes[n] for n in self._configs},
                "max_loaded": self.max_loaded,
                "max_bytes": self.max_bytes,
            }

    # --------------------------------------------------------------- helpers

    def _known(self, name: object) -> str:
        if not isinstance(name, str) or name not in self._configs:
            raise unknown_task(name, list(self._configs))
        return name

    def _info(self, name: str) -> TaskInfo:
        config = self._configs[name]
        return TaskInfo(name, config.method, list(config.labels), list(config.modalities),
                        config.task, name in self._loaded, self._bytes[name])

    def _image(self, index: int, name: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The one image tensor of a sample of a single-image task."""
        (modality,) = self._configs[name].modalities
        extra = sorted(set(inputs) - {modality})
        if extra:
            raise WrongModality(f"sample {index}: task {name!r} reads only {modality!r}, not {extra}")
        if modality not in inputs:
            raise BadInput(f"sample {index}: task {name!r} needs an input for modality {modality!r}")
        image = inputs[modality]
        size = self._reference.img_size
        if image.dim() != 3 or (size is not None and tuple(image.shape[1:]) != (size, size)):
            raise BadInput(
                f"sample {index}: modality {modality!r} tensor has shape {tuple(image.shape)}, "
                f"expected (3, {size}, {size}) (use AdapterBank.preprocess)"
            )
        return image

    def _chunks(self, names: Sequence[str]) -> list[list[str]]:
        """The batch's tasks in groups that fit the cache together, in first-seen order."""
        groups: list[list[str]] = [[]]
        for task in dict.fromkeys(names):
            if groups[-1] and not self._fits([*groups[-1], task]):
                groups.append([])
            groups[-1].append(task)
        return groups

    def _fits(self, tasks: Sequence[str]) -> bool:
        count_ok = self.max_loaded is None or len(tasks) <= self.max_loaded
        return count_ok and (self.max_bytes is None or sum(self._bytes[t] for t in tasks) <= self.max_bytes)

    def _ensure_loaded(self, tasks: Sequence[str]) -> None:
        """Load the missing ones of ``tasks`` (evicting least recently used others); mark all used."""
        for task in tasks:
            if task not in self._loaded:
                self._make_room(self._bytes[task], keep=set(tasks))
                self._attach(task)
            self._loaded.move_to_end(task)

    def _make_room(self, incoming: int, keep: set[str]) -> None:
        def full() -> bool:
            over_count = self.max_loaded is not None and len(self._loaded) + 1 > self.max_loaded
            over_bytes = self.max_bytes is not None and self._loaded_bytes() + incoming > self.max_bytes
            return over_count or over_bytes

        while full():
            victim = next((n for n in self._loaded if n not in keep), None)
            if victim is None:
                return  # one task alone over max_bytes: served anyway
            self._evict(victim)

    def _attach(self, name: str) -> None:
        config, folder = self._configs[name], self._folders[name]
        source = folder / WEIGHTS_NAME
        state = self._cpu[name] if name in self._cpu else read_state_dict(source)
        method = get_method(config.method)
        add_adapter_weights(self.model, name, method, config.method_settings(), state, source)
        self.model.requires_grad_(False)
        cache_merged_weights(self.model, False)  # tasks alternate: no merged copy to rebuild at each switch
        if self.cpu_tier:
            self._cpu[name] = state
        self._loaded[name] = None

    def _evict(self, name: str) -> None:
        delete_adapter(self.model, name)
        del self._loaded[name]

    def _loaded_bytes(self) -> int:
        return sum(self._bytes[n] for n in self._loaded)

    def _forward(self, images: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        """Each sample's probabilities by its own task (one forward; tasks loaded)."""
        model = self.model
        with torch.inference_mode(), route(adapters=tuple(names)), autocast(self.device, self.autocast_dtype):
            features = model.features(images.to(self.device))
            logits, widths = model.head.padded_logits(features, names)
        logits = logits.float().cpu()
        out = []
        for row, width, name in zip(logits, widths, names):
            scores = row[:width]
            multilabel = self._configs[name].task == "multilabel"
            out.append(torch.sigmoid(scores) if multilabel else torch.softmax(scores, dim=-1))
        return out


def unknown_task(name: object, names: Sequence[str]) -> UnknownTask:
    """The error for a task name that is none of ``names``, with a did-you-mean."""
    return UnknownTask(f"unknown task {name!r}{did_you_mean(str(name), names)}; the bank holds {list(names)}")


def _split_servable(folders: Mapping[str, str | Path]) -> tuple[dict[str, str | Path], dict[str, str]]:
    """``folders`` the bank can serve, and why each other one cannot; ConfigError if none can."""
    servable, skipped = {}, {}
    for name, folder in folders.items():
        try:
            folder = config_path(folder).parent
            _check_servable(read_adapter_config(folder), folder)
        except (ConfigError, WeightsError) as error:
            skipped[name] = str(error)
        else:
            servable[name] = folder
    if not servable:
        reasons = "; ".join(skipped.values())
        raise ConfigError(f"no servable task among {list(skipped)}: {reasons}")
    return servable, skipped


def _shares_backbone(method: Method) -> bool:
    """Whether adapters of ``method`` can share one backbone in a mixed batch: mixable
    methods, and those that add no layer (a linear probe is a head on the frozen backbone)."""
    adds_layers = bool(method.markers or method.adapter_dicts) or method.trains_everything
    return method.mixable or not adds_layers


def _check_servable(config: AdapterConfig, folder: Path, alone: bool = False) -> None:
    """ConfigError unless the adapter is a single-image adapter (any backbone but ViLT) that shares the backbone
    (``alone``: that is the bank's only task, which may then be a fully fine-tuned model)."""
    method = get_method(config.method)
    if method.trains_everything and not alone:
        raise ConfigError(
            f"{folder}: method {config.method!r} trains the whole backbone, so the adapter is a "
            "model of its own and cannot share the bank's backbone (medpeft serve and BankGroup "
            "serve it on a backbone of its own)"
        )
    if not (_shares_backbone(method) or method.trains_everything):
        servable = [name for name in method_names() if _shares_backbone(get_method(name))]
        raise ConfigError(
            f"{folder}: method {config.method!r} cannot share a backbone in a mixed batch; "
            f"the bank serves {servable} adapters"
        )
    single = config.kind != "vilt" and len(config.modalities) == 1 and config.fusion == "auto"
    if not single or config.missing_token:
        raise ConfigError(
            f"{folder}: the bank serves single-image adapters; this one reads "
            f"{dict(config.modalities)} ({config.kind}, fusion {config.fusion!r})"
        )


def _backbone_id(config: AdapterConfig, folder: Path, explicit_weights: bool) -> tuple:
    """What must agree between tasks on one backbone: architecture and (unless given) its weights."""
    arch = (config.kind, config.backbone, config.img_size, tuple(sorted(config.model_kwargs.items())))
    if explicit_weights:
        return arch
    recorded = config.backbone_weights
    if recorded not in (None, HUB):
        recorded = str((folder / recorded).resolve())
    # a random backbone is drawn from its seed with the task's head (timm draws them in one go)
    drawn = (config.backbone_seed, config.num_classes) if recorded is None else None
    return (*arch, recorded, drawn)


def _describe(config: AdapterConfig) -> str:
    weights = config.backbone_weights or f"random seed {config.backbone_seed} with {config.num_classes} classes"
    return (f"{config.backbone} ({config.kind}) at {config.img_size} px, {config.model_kwargs or 'default dims'}, "
            f"{weights}")


def _module_bytes(module: nn.Module) -> int:
    return sum(stored_bytes(t) for t in [*module.parameters(), *module.buffers()])
