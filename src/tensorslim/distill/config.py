"""`DistillationConfig`: *what* the student learns from the teacher (loss terms, weights, layer
map, temperature), kept apart from *how* it trains (transformers' `TrainingArguments`).

A JSON or YAML file fills it (``--distill-config FILE``); keys are the field names below. For task
distillation the file may hold ``stage1`` and ``stage2`` sections, each a `DistillationConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TensorslimError
from .losses import LOSSES, get_loss


@dataclass
class DistillationConfig:
    """One distillation objective: loss = sum_name weight[name] * LOSSES[name](student, teacher)."""

    #: loss term names from `tensorslim.distill.losses.LOSSES`
    losses: list[str] = field(default_factory=lambda: ["attention", "hidden"])
    #: per-term weight; terms not listed weigh 1.0
    weights: dict[str, float] = field(default_factory=dict)
    #: "last" (last student layer <- last teacher layer, the paper's general distillation),
    #: "uniform" (TinyBERT: student layer i <- teacher layer (i+1)*Lt/Ls - 1), or explicit
    #: [[student_layer, teacher_layer], ...] pairs, 0-based
    layer_map: str | list[list[int]] = "last"
    #: softmax temperature of the "logits" term
    temperature: float = 1.0

    def __post_init__(self):
        if isinstance(self.losses, str):
            self.losses = [name.strip() for name in self.losses.split(",") if name.strip()]
        if not self.losses:
            raise TensorslimError("the distillation config lists no losses", f"choose from {', '.join(LOSSES)}")
        for name in [*self.losses, *self.weights]:
            get_loss(name)
        if self.temperature <= 0:
            raise TensorslimError(f"temperature must be positive, got {self.temperature}", "use e.g. 1.0")
        if isinstance(self.layer_map, str) and self.layer_map not in ("last", "uniform"):
            raise TensorslimError(
                f"unknown layer_map {self.layer_map!r}",
                "use 'last', 'uniform' or a list of [student_layer, teacher_layer] pairs",
            )

    @property
    def needs(self) -> frozenset[str]:
        """The features ("hidden_states", "attention_scores", "logits") the loss terms read."""
        return frozenset().union(*(get_loss(name)[1] for name in self.losses))

    def weight(self, name: str) -> float:
        return float(self.weights.get(name, 1.0))

    def resolve_layer_map(self, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
        """(student, teacher) 0-based layer pairs for models of the given depths."""
        if self.layer_map == "last":
            pairs = [(student_layers - 1, teacher_layers - 1)]
        elif self.layer_map == "uniform":
            if teacher_layers % student_layers:
                raise TensorslimError(
                    f"layer_map 'uniform' needs the teacher depth ({teacher_layers}) to be a multiple of the "
                    f"student depth ({student_layers})",
                    "give explicit layer_map pairs in --distill-config",
                )
            step = teacher_layers // student_layers
            pairs = [(i, (i + 1) * step - 1) for i in range(student_layers)]
        else:
            pairs = [tuple(int(x) for x in pair) for pair in self.layer_map]
        for s, t in pairs:
            if not (0 <= s < student_layers and 0 <= t < teacher_layers):
                raise TensorslimError(
                    f"layer pair ({s}, {t}) is out of range for a {student_layers}-layer student and "
                    f"{teacher_layers}-layer teacher",
                    "use 0-based layer indices in layer_map",
                )
        return pairs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_config_file(path: str | Path) -> dict:
    """Parse a JSON (.json) or YAML (.yaml/.yml) distillation config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise TensorslimError(f"distillation config {path} does not exist", "pass an existing JSON or YAML file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise TensorslimError(f"cannot parse {path}: {exc}", "fix the file's JSON/YAML syntax") from None
    if not isinstance(data, dict):
        raise TensorslimError(f"{path} does not hold a mapping", "write the config as key: value pairs")
    return data


def make_config(data: dict, base: DistillationConfig | None = None, source: str = "config") -> DistillationConfig:
    """A `DistillationConfig` from `base` with the keys of `data` replaced (unknown keys refused)."""
    names = {f.name for f in dataclasses.fields(DistillationConfig)}
    unknown = set(data) - names
    if unknown:
        raise TensorslimError(f"unknown key(s) {sorted(unknown)} in {source}", f"valid keys: {sorted(names)}")
    return dataclasses.replace(base or DistillationConfig(), **data)
