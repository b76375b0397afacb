"""Model zoo: named builders of OpGraphs, so tools and tests can ask for a model by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from simgpu.errors import GraphError
from simgpu.graph import OpGraph
from simgpu.limits import check
from simgpu.models.builder import GraphBuilder

__all__ = [
    "MODELS",
    "GraphBuilder",
    "ModelInfo",
    "build_model",
    "inception_v3",
    "model_names",
    "register_model",
]


@dataclass(frozen=True)
class ModelInfo:
    """A registered model. ``builder(batch=, image_size=, dtype=)`` returns its graph;
    models without an image input have ``default_image_size`` None and take no image_size."""

    name: str
    builder: Callable[..., OpGraph]
    default_image_size: int | None
    description: str


MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    builder: Callable[..., OpGraph],
    default_image_size: int | None,
    description: str,
) -> ModelInfo:
    """Add a model to :data:`MODELS`; registering a name twice is a bug, so it raises."""
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    info = ModelInfo(name, builder, default_image_size, description)
    MODELS[name] = info
    return info


def model_names() -> list[str]:
    return sorted(MODELS)


def build_model(
    name: str, batch: int = 1, image_size: int | None = None, dtype: str = "fp32"
) -> OpGraph:
    """Build a registered model; an unknown name is a one-line GraphError listing known ones."""
    info = MODELS.get(name)
    if info is None:
        raise GraphError(f"unknown model {name!r} (known: {', '.join(model_names())})")
    for what, v in (("batch", batch), ("image size", image_size)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise GraphError(f"{name}: {what} must be a positive integer, got {v!r}")
    if batch is None:
        raise GraphError(f"{name}: batch must be a positive integer, got None")
    check("batch", batch, f"{name}: batch")
    size = image_size if image_size is not None else info.default_image_size
    if size is not None:
        check("image_size", size, f"{name}: image size")
    if size is None:
        return info.builder(batch=batch, dtype=dtype)
    return info.builder(batch=batch, image_size=size, dtype=dtype)


# Every module of this package except these is a zoo module that registers its models
# on import: adding a model is adding a file (importers are not models).
_NOT_ZOO = {"builder", "onnx", "ios"}


def _discover() -> None:
    import importlib
    import pkgutil

    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name not in _NOT_ZOO and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_discover()

from simgpu.models.inception import inception_v3  # noqa: E402  (re-exported)
