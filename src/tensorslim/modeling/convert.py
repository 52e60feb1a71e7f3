"""Teacher -> decomposed student (`decompose`, `from_teacher`) and student -> dense BERT (`export_dense`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    PreTrainedModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaModel,
)

from ..decomposition.budget import ranks_for_budget
from ..decomposition.hooi import sweep_dtype
from ..decomposition.methods import get_method
from ..decomposition.stacking import check_encoder, dense_weights, group_weight, ops_slots, stack, unslice
from ..errors import TensorslimError
from ..io import atomic_dir, check_output_dir, write_json
from ..validate import check_finite_weights
from ..report.measure import count_parameters
from .configuration import DecomposedBertConfig
from .modeling import (
    GROUPS,
    DecomposedBertForMaskedLM,
    DecomposedBertForSequenceClassification,
    DecomposedBertModel,
    DecomposedBertPreTrainedModel,
)

log = logging.getLogger(__name__)

HEADS = {  # head: (teacher Auto class, student class)
    "base": (AutoModel, DecomposedBertModel),
    "sequence_classification": (AutoModelForSequenceClassification, DecomposedBertForSequenceClassification),
    "masked_lm": (AutoModelForMaskedLM, DecomposedBertForMaskedLM),
}
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
STUDENT_ONLY_KEYS = ("decomposition", "rank", "layer_rank", "ops", "embedding_type")


def load_config(path: str | Path):
    """The teacher's config, with clear errors for a missing directory or config."""
    path = Path(path)
    if not path.is_dir():
        raise TensorslimError(f"model directory {path} {'is a file' if path.exists() else 'does not exist'}",
                              "pass the directory written by save_pretrained")
    if not (path / "config.json").is_file():
        raise TensorslimError(f"{path} has no config.json, so it is not a transformers model directory",
                              "pass the directory written by save_pretrained (config.json + model.safetensors)")
    try:
        return AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
        raise TensorslimError(f"cannot read {path / 'config.json'}: {exc}", "fix or regenerate config.json") from exc


def infer_head(config, model: PreTrainedModel | None = None) -> str:
    """The head a teacher has: from its class, or the `architectures` it was saved with."""
    arch = type(model).__name__ if model is not None else " ".join(getattr(config, "architectures", None) or [])
    if "SequenceClassification" in arch:
        return "sequence_classification"
    if "MaskedLM" in arch or "PreTraining" in arch:
        return "masked_lm"
    return "base"


def load_model(path: str | Path, head: str = "auto", **kwargs) -> PreTrainedModel:
    """Load a teacher or student directory with the Auto class of `head`, verifying its weights."""
    config = load_config(path)
    check_encoder(config)
    head = infer_head(config) if head == "auto" else head
    if head not in HEADS:
        raise TensorslimError(f"unknown head {head!r}", f"use one of auto, {', '.join(HEADS)}")
    try:
        model, info = HEADS[head][0].from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise TensorslimError(f"cannot load the weights in {path}: {exc}",
                              "the weights file is missing, truncated or does not match config.json; "
                              "re-save the model") from exc
    body = (f"{model.base_model_prefix}.embeddings.", f"{model.base_model_prefix}.encoder.", "embeddings.", "encoder.")
    missing = sorted(k for k in info["missing_keys"] if k.startswith(body))
    if missing:
        raise TensorslimError(f"{path} does not hold the encoder weights its config.json describes "
                              f"(missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})",
                              "the weights file and config.json come from different models; re-save the model")
    return model


def student_config(teacher_config, method: str, rank: int, layer_rank: int | None, ops: str) -> DecomposedBertConfig:
    keys = set(DecomposedBertConfig().to_dict()) | {"id2label", "label2id", "problem_type", "num_labels"}
    values = {k: v for k, v in teacher_config.to_dict().items() if k in keys and k not in ("model_type", "architectures")}
    values.pop("transformers_version", None)
    embedding_type = "roberta" if teacher_config.model_type in ROBERTA_TYPES else "bert"
    if teacher_config.model_type == "decomposed_bert":
        raise TensorslimError("the teacher is already a decomposed student", "export it with export_dense() first")
    return DecomposedBertConfig(**values, decomposition=method, rank=rank, layer_rank=layer_rank, ops=ops,
                                embedding_type=embedding_type)


@torch.no_grad()
def _copy_dense_parts(teacher: PreTrainedModel, student: DecomposedBertPreTrainedModel) -> None:
    """Embeddings, biases, LayerNorms, non-decomposed matrices, pooler and head: copied as they are."""
    t_base, s_base = teacher.base_model, student.base_model
    s_base.embeddings.load_state_dict(t_base.embeddings.state_dict(), strict=False)
    for t_layer, s_layer in zip(t_base.encoder.layer, s_base.encoder.layer):
        att = t_layer.attention
        s_layer.attn_norm.load_state_dict(att.output.LayerNorm.state_dict())
        s_layer.ffn_norm.load_state_dict(t_layer.output.LayerNorm.state_dict())
        weights = dense_weights(t_layer)
        biases = {"qkv": torch.cat([att.self.query.bias, att.self.key.bias, att.self.value.bias]),
                  "o": att.output.dense.bias, "ffn_in": t_layer.intermediate.dense.bias,
                  "ffn_out": t_layer.output.dense.bias}
        for group in GROUPS:
            proj = getattr(s_layer, group)
            proj.bias.copy_(biases[group])
            if hasattr(proj, "weight"):
                proj.weight.copy_(weights[group])
    pooler = getattr(t_base, "pooler", None)
    if s_base.pooler is not None and pooler is not None:
        s_base.pooler.load_state_dict(pooler.state_dict())
    _copy_head(teacher, student)


def _copy_head(teacher, student) -> None:
    if isinstance(student, DecomposedBertForSequenceClassification):
        head = getattr(teacher, "classifier", None)
        if isinstance(head, torch.nn.Linear):  # BERT: pooler + classifier
            student.classifier.load_state_dict(head.state_dict())
        elif head is not None and hasattr(head, "out_proj") and hasattr(head, "dense"):  # RoBERTa: dense + tanh + out
            student.bert.pooler.dense.load_state_dict(head.dense.state_dict())
            student.classifier.load_state_dict(head.out_proj.state_dict())
        else:
            log.warning("the teacher's classification head is not BERT- or RoBERTa-shaped; the student's is new")
    elif isinstance(student, DecomposedBertForMaskedLM):
        if hasattr(teacher, "cls"):  # BERT
            student.cls.load_state_dict(teacher.cls.state_dict(), strict=False)
        elif hasattr(teacher, "lm_head"):  # RoBERTa
            lm, tr = teacher.lm_head, student.cls.predictions.transform
            tr.dense.load_state_dict(lm.dense.state_dict())
            tr.LayerNorm.load_state_dict(lm.layer_norm.state_dict())
            student.cls.predictions.bias.copy_(lm.bias)
        else:
            log.warning("the teacher's masked-LM head is not BERT- or RoBERTa-shaped; the student's is new")


def decompose(teacher: str | Path | PreTrainedModel, method: str = "tucker", rank: int = 384,
              layer_rank: int | None = None, ops: str = "all", head: str = "auto", num_labels: int | None = None,
              tol: float = 1e-4, max_iter: int = 100, precision: str = "auto") -> tuple[DecomposedBertPreTrainedModel, dict]:
    """Build a student from `teacher` (directory or model); return it with a decomposition record.

    `tol`, `max_iter` and `precision` go to HOOI (decomposition.hooi.tucker_hooi). The record holds
    method, ranks, ops, relative reconstruction errors (overall, per slot, per layer and slot), the
    HOSVD spectra of the stack and the seconds taken.
    """
    start = time.perf_counter()
    if isinstance(teacher, PreTrainedModel):
        check_encoder(teacher.config)
        head = infer_head(teacher.config, teacher) if head == "auto" else head
    else:
        config = load_config(teacher)
        check_encoder(config)
        head = infer_head(config) if head == "auto" else head
        teacher = load_model(teacher, head, **({"num_labels": num_labels} if num_labels else {}))
    if head not in HEADS:
        raise TensorslimError(f"unknown head {head!r}", f"use one of auto, {', '.join(HEADS)}")
    tconf = teacher.config
    k = check_encoder(tconf)
    slots = ops_slots(ops, k)
    n, D = tconf.num_hidden_layers * len(slots), tconf.hidden_size
    decomposition = get_method(method, rank, layer_rank)
    decomposition.validate(n, D)

    config = student_config(tconf, method, rank, layer_rank, ops)
    student = HEADS[head][1](config)
    _copy_dense_parts(teacher, student)

    W = stack(teacher.base_model.encoder.layer, ops, D, k)
    fit_start = time.perf_counter()
    factors = decomposition.fit(W, tol=tol, max_iter=max_iter, precision=precision)
    fit_seconds = time.perf_counter() - fit_start
    student.base_model.encoder.factors.load(factors)

    R = decomposition.reconstruct(factors)
    per_slice = (torch.linalg.matrix_norm(W - R) / torch.linalg.matrix_norm(W).clamp_min(1e-12)).view(-1, len(slots))
    sq_err = torch.linalg.matrix_norm(W - R).pow(2).view(-1, len(slots))
    sq_norm = torch.linalg.matrix_norm(W).pow(2).view(-1, len(slots))
    record = {
        "method": method, "rank": rank, "layer_rank": decomposition.layer_rank, "ops": ops, "head": head,
        "num_slices": n, "hidden_size": D, "num_layers": tconf.num_hidden_layers,
        "slots": [s.name for s in slots],
        "decomposed_weights": {"teacher": n * D * D, "student": decomposition.num_params(n, D)},
        "relative_error": ((W - R).norm() / W.norm()).item(),
        "relative_error_per_slot": {s.name: (sq_err[:, j].sum() / sq_norm[:, j].sum()).sqrt().item()
                                    for j, s in enumerate(slots)},
        "relative_error_per_layer_slot": per_slice.tolist(),
        "hooi": None if method == "lowrank" else {"tol": tol, "max_iter": max_iter,
                                                  "sweep_dtype": str(sweep_dtype(precision, W.device, W.numel())).removeprefix("torch.")},
        "spectra": spectra(W),
        "seconds": {"fit": fit_seconds, "total": time.perf_counter() - start},
    }
    record["decomposed_weights"]["ratio"] = record["decomposed_weights"]["teacher"] / record["decomposed_weights"]["student"]
    log.info("%s rank=%s layer_rank=%s ops=%s: relative error %.4f, %.1fx fewer decomposed weights, %.1fs",
             method, rank, decomposition.layer_rank, ops, record["relative_error"],
             record["decomposed_weights"]["ratio"], record["seconds"]["total"])
    return student, record


def spectra(W: torch.Tensor) -> dict[str, list[float]]:
    """Singular values of the three unfoldings of W (slices, rows, columns), descending."""
    n, D1, D2 = W.shape
    grams = {"slices": W.reshape(n, -1) @ W.reshape(n, -1).T,
             "rows": (lambda f: f @ f.T)(W.transpose(0, 1).reshape(D1, -1)),
             "columns": (lambda f: f.T @ f)(W.reshape(-1, D2))}
    return {mode: torch.linalg.eigvalsh(g.double()).flip(0).clamp_min(0).sqrt().tolist() for mode, g in grams.items()}


def from_teacher(teacher, method: str = "tucker", rank: int = 384, layer_rank: int | None = None, ops: str = "all",
                 head: str = "auto", num_labels: int | None = None, **fit_kwargs) -> DecomposedBertPreTrainedModel:
    """A student initialised from `teacher`'s weights (see `decompose`)."""
    return decompose(teacher, method, rank, layer_rank, ops, head, num_labels, **fit_kwargs)[0]


DENSE_CLASSES = {  # student class -> (BERT class, RoBERTa class)
    DecomposedBertModel: (BertModel, RobertaModel),
    DecomposedBertForSequenceClassification: (BertForSequenceClassification, RobertaForSequenceClassification),
    DecomposedBertForMaskedLM: (BertForMaskedLM, RobertaForMaskedLM),
}


@torch.no_grad()
def export_dense(student: DecomposedBertPreTrainedModel) -> PreTrainedModel:
    """An ordinary transformers BERT (or RoBERTa-embedding BERT) with the reconstructed weights.

    RoBERTa-type students export as BERT classes with RoBERTa embeddings only for the base and
    masked-LM heads; their classification head is exported in BERT form (pooler + linear).
    """
    config = student.config
    values = {k: v for k, v in config.to_dict().items() if k not in STUDENT_ONLY_KEYS + ("model_type", "architectures")}
    roberta = config.embedding_type == "roberta" and not isinstance(student, DecomposedBertForSequenceClassification)
    dense_config = (RobertaConfig if roberta else BertConfig)(**values)
    model = DENSE_CLASSES[type(student)][int(roberta)](dense_config)
    s_base, d_base = student.base_model, model.base_model
    d_base.embeddings.load_state_dict(s_base.embeddings.state_dict(), strict=False)
    slots = ops_slots(config.ops, config.ffn_mult)
    R = config.method.reconstruct(s_base.encoder.factors.as_dict()).view(config.num_hidden_layers, len(slots), *([config.hidden_size] * 2))
    for i, (s_layer, d_layer) in enumerate(zip(s_base.encoder.layer, d_base.encoder.layer)):
        weights = {g: getattr(s_layer, g).weight for g in GROUPS if hasattr(getattr(s_layer, g), "weight")}
        for group in GROUPS:
            if group not in weights:
                blocks = [unslice(R[i, j], s) for j, s in enumerate(slots) if s.group == group]
                weights[group] = group_weight(blocks, group)
        biases = {g: getattr(s_layer, g).bias for g in GROUPS}
        D = config.hidden_size
        att = d_layer.attention
        for j, lin in enumerate((att.self.query, att.self.key, att.self.value)):
            lin.weight.copy_(weights["qkv"][j * D:(j + 1) * D])
            lin.bias.copy_(biases["qkv"][j * D:(j + 1) * D])
        for lin, group in ((att.output.dense, "o"), (d_layer.intermediate.dense, "ffn_in"), (d_layer.output.dense, "ffn_out")):
            lin.weight.copy_(weights[group])
            lin.bias.copy_(biases[group])
        att.output.LayerNorm.load_state_dict(s_layer.attn_norm.state_dict())
        d_layer.output.LayerNorm.load_state_dict(s_layer.ffn_norm.state_dict())
    if s_base.pooler is not None and getattr(d_base, "pooler", None) is not None:
        d_base.pooler.load_state_dict(s_base.pooler.state_dict())
    if isinstance(student, DecomposedBertForSequenceClassification):
        model.classifier.load_state_dict(student.classifier.state_dict())
    elif isinstance(student, DecomposedBertForMaskedLM):
        if roberta:
            model.lm_head.dense.load_state_dict(student.cls.predictions.transform.dense.state_dict())
            model.lm_head.layer_norm.load_state_dict(student.cls.predictions.transform.LayerNorm.state_dict())
            model.lm_head.bias.copy_(student.cls.predictions.bias)
        else:
            model.cls.load_state_dict(student.cls.state_dict(), strict=False)
    model.tie_weights()
    return model.eval()


def default_ranks(method: str, n: int, D: int, rank: int | None, layer_rank: int | None,
                  budget: int | None) -> tuple[int, int | None]:
    """Ranks to use: the given ones, else those a `budget` allows, else the paper's 72-384 shape
    scaled to the teacher (d = D / 2, l = n / 2)."""
    if budget is not None:
        return ranks_for_budget(method, n, D, budget, rank, layer_rank)
    rank = rank if rank is not None else max(1, D // 2)
    if method == "tucker":
        layer_rank = layer_rank if layer_rank is not None else max(1, n // 2)
    return rank, layer_rank if method == "tucker" else None


def decompose_to_dir(teacher: str | Path, out: str | Path, method: str = "tucker", rank: int | None = None,
                     layer_rank: int | None = None, ops: str = "all", budget: int | None = None, head: str = "auto",
                     num_labels: int | None = None, overwrite: bool = False, **fit_kwargs) -> dict:
    """Decompose the teacher in directory `teacher` and write a loadable student directory `out`
    (config, safetensors, tokenizer, decomposition.json). Returns the decomposition record."""
    config = load_config(teacher)
    k = check_encoder(config)
    n = config.num_hidden_layers * len(ops_slots(ops, k))
    rank, layer_rank = default_ranks(method, n, config.hidden_size, rank, layer_rank, budget)
    get_method(method, rank, layer_rank).validate(n, config.hidden_size)  # bad ranks fail before any loading
    check_output_dir(out, "decompose", inputs=[teacher], overwrite=overwrite)
    check_finite_weights(teacher)  # NaN or inf would break HOOI's eigendecompositions
    teacher_model = load_model(teacher, head, **({"num_labels": num_labels} if num_labels else {}))
    student, record = decompose(teacher_model, method, rank, layer_rank, ops, head, **fit_kwargs)
    record["teacher"] = str(Path(teacher).resolve())
    record["parameters"] = {"teacher": count_parameters(teacher_model), "student": count_parameters(student)}
    with atomic_dir(out, "decompose", inputs=[teacher], overwrite=overwrite) as tmp:
        student.save_pretrained(tmp)
        save_tokenizer(teacher, tmp)
        write_json(Path(tmp) / "decomposition.json", record)
    return record


def save_tokenizer(source: str | Path, out: str | Path) -> bool:
    """Copy the tokenizer of model directory `source` into `out`, if it has one."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("no tokenizer copied from %s (%s); pass --tokenizer to later commands", source, exc)
        return False
    tokenizer.save_pretrained(out)
    return True
