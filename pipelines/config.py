"""Experiment configuration: YAML presets validated into typed dataclasses, with `--set a.b=c`
overrides. An unknown key or a bad value is refused in one line naming the valid choices."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deeplab_core.models import MODELS
from deeplab_core.schedules import LR_POLICIES
from deeplab_core.train_step import COMPILE_MODES, OPTIMIZERS, PRECISIONS


PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the valid choices, on one line
    (user text in it has its line breaks escaped)."""

    def __init__(self, message: str):
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


# Keys of earlier versions: refused with what to write instead.
REPLACED = {"train.amp": "train.precision: auto|fp32|fp16|bf16 (amp: true was auto, amp: false is fp32)"}


def choices(*values):
    return {"choices": tuple(values)}


@dataclass
class DataConfig:
    uri: str = ""                       # preprocessed dataset (manifest.json), local or s3://
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = 321
    scale_range: tuple[float, float] = (0.5, 1.5)   # random rescale; (1, 1) turns it off
    flip: bool = True
    val_max_images: int | None = None   # evaluate on the first N val images only


@dataclass
class ModelConfig:
    name: str = field(default="deeplabv2_vgg16_largefov", metadata=choices(*sorted(MODELS)))
    options: dict = field(default_factory=dict)     # build_model keyword options (bn, output_stride, ...)
    msc: bool = False
    msc_scales: tuple[float, ...] = (1.0, 0.75, 0.5)
    init_weights: str | None = None     # backbone weights: state dict path or URI, or torchvision:<Weights>
    init_from: str | None = None        # warm start from a saved model (MODEL_URI): every tensor that matches


@dataclass
class TrainConfig:
    iterations: int = 20000
    batch_size: int = 10                # per worker and micro-batch
    iter_size: int = 1                  # micro-batches accumulated per step (the Caffe release: 2 × 5 = 10)
    optimizer: str = field(default="sgd", metadata=choices(*OPTIMIZERS))
    base_lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_policy: str = field(default="poly", metadata=choices(*LR_POLICIES))
    poly_power: float = 0.9
    step_size: int | None = None        # step policy: iterations per x0.1 (default: a third of the run)
    classifier_lr_mult: float = 10.0
    eval_interval: int = 1000
    checkpoint_interval: int = 1000
    log_interval: int = 20
    # auto: bf16 autocast on GPUs that support it, else fp16 (with loss scaling); fp32 on CPU
    precision: str = field(default="auto", metadata=choices(*PRECISIONS))
    # torch.compile of the training step (opt-in: on an H200 it did not reproduce the eager step, README);
    # reduce-overhead replays it as CUDA graphs; auto: that on GPUs, none on CPU
    compile: str = field(default="none", metadata=choices(*COMPILE_MODES))
    seed: int = 0


@dataclass
class RayConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    torch_threads: int | None = None    # per worker; default: cpus_per_worker
    data_cpus: float | None = None      # cap on Ray Data's CPU share, so ingest cannot starve training
    placement_strategy: str = field(default="PACK", metadata=choices("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    max_failures: int = 1
    storage_path: str = "runs"          # checkpoints, local or s3://
    # local paths (data.uri, storage_path) are one file system that every machine mounts at the same
    # place (NFS); otherwise a cluster on several machines needs s3:// for them
    shared_filesystem: bool = False
    keep_checkpoints: int = 2


@dataclass
class TrackingConfig:
    uri: str | None = None              # MLflow tracking URI; default MLFLOW_TRACKING_URI, else ./mlruns (sqlite)
    experiment: str = "deeplab"
    run_name: str | None = None         # also the Ray Train run name: the same name resumes the run
    register_model: str | None = None   # registered model name for the final model
    overlays: int = 4                   # colourised val predictions logged as artifacts


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, str]:
        """Dotted keys -> values, as MLflow params."""
        out = {}

        def walk(prefix, value):
            if isinstance(value, dict) and (not prefix.endswith("options") or value):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = str(value)
        walk("", self.to_dict())
        return out


def _number(value) -> int | float | None:
    """A finite number, also from the text YAML 1.1 leaves as a string (`1e-3`, `1E4`, `2.5e-4`:
    YAML 1.1 floats need a dot and a signed exponent); None when `value` is not one."""
    if isinstance(value, str):
        text = value.strip()
        for parse in (int, float):  # int first: large integers stay exact
            try:
                value = parse(text)
                break
            except ValueError:
                continue
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _coerce(value, hint, key: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} values, got {list(value)}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        number = _number(value)
        if number is None or number != int(number):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(number)
    if hint is float:
        number = _number(value)
        if number is None:
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(number)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")


def _build(cls, data, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        if f"{where}{unknown[0]}" in REPLACED:
            raise ConfigError(f"{where}{unknown[0]} was replaced by {REPLACED[where + unknown[0]]}")
        raise ConfigError(f"unknown key {where}{unknown[0]}; valid: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key)
            continue
        values[name] = _coerce(value, hint, key)
        allowed = fields[name].metadata.get("choices")
        if allowed and values[name] not in allowed:
            raise ConfigError(f"{key}: {values[name]!r} is not valid; valid: {', '.join(map(str, allowed))}")
    return cls(**values)


def _validate(cfg: ExperimentConfig) -> None:
    checks = [
        (cfg.data.crop_size >= 16, "data.crop_size must be >= 16"),
        (0 < cfg.data.scale_range[0] <= cfg.data.scale_range[1], "data.scale_range must be 0 < low <= high"),
        (cfg.train.iterations >= 1, "train.iterations must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.iter_size >= 1, "train.iter_size must be >= 1"),
        (cfg.train.base_lr > 0, "train.base_lr must be > 0"),
        (cfg.train.eval_interval >= 1 and cfg.train.checkpoint_interval >= 1 and cfg.train.log_interval >= 1,
         "train.eval_interval, checkpoint_interval and log_interval must be >= 1"),
        (cfg.ray.num_workers >= 1, "ray.num_workers must be >= 1"),
        (cfg.ray.max_failures >= -1, "ray.max_failures must be >= -1 (-1: retry forever)"),
        (cfg.ray.keep_checkpoints >= 1, "ray.keep_checkpoints must be >= 1"),
        (bool(cfg.data.uri), "data.uri is required (a preprocessed dataset: local dir or s3://)"),
        (all(s > 0 for s in cfg.model.msc_scales), "model.msc_scales must be positive"),
        (cfg.model.options.get("bn") != "frozen" or bool(cfg.model.init_weights or cfg.model.init_from),
         "model.options.bn=frozen needs pretrained weights: model.init_weights (a state dict path or URI, or "
         "torchvision:<Weights> such as torchvision:ResNet101_Weights.IMAGENET1K_V1) or model.init_from (a "
         "saved model); frozen batch norm with random statistics gives a NaN loss from the first step"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML preset (or start from defaults), apply `a.b=c` overrides (values parsed as YAML),
    then validate everything into an ExperimentConfig."""
    data: dict = {}
    if path:
        if not Path(path).is_absolute() and not Path(path).exists() and (PROJECT_ROOT / path).exists():
            path = str(PROJECT_ROOT / path)  # `ray submit` runs scripts from the home directory
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {k} is not a section")
        node[keys[-1]] = value
    cfg = _build(ExperimentConfig, data)
    _validate(cfg)
    return cfg


def config_from_dict(data: dict) -> ExperimentConfig:
    """Rebuild a validated config from `ExperimentConfig.to_dict()` (e.g. inside Ray workers)."""
    cfg = _build(ExperimentConfig, data)
    _validate(cfg)
    return cfg
