"""teacher -> student (`decompose`, `decompose_to_dir`) and student -> dense model (`export_dense`)."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..decomposition.methods import Method, get_method
from ..decomposition.slices import stack
from ..decomposition.weighted import pooled_whitened, slicewise_whitened
from ..errors import TensorslimError
from ..families import get_family
from ..io import atomic_dir, check_output_dir, write_json
from ..validate import check_finite_weights
from .calibration import (
    DEFAULT_DAMPING,
    DEFAULT_SAMPLES,
    CalibrationData,
    calibrate,
    calibration_data,
    slice_covariances,
)
from .counts import count_parameters, dense_is_faster, flops_per_token, matrix_weights
from .embeddings import factorize_embeddings, rank_of_embeddings, token_counts
from .factored import FactoredProjection
from .inplace import factorize, grouping, is_decomposed, layout, matrix_of, merge, targets
from .loading import check_head, infer_head, load_config, load_model, load_tokenizer, save_tokenizer
from .record import make_record
from .section import section_of

log = logging.getLogger(__name__)


def decompose(
    teacher: str | Path | PreTrainedModel,
    method: str | Method = "tucker",
    *,
    ops: str = "all",
    head: str = "auto",
    num_labels: int | None = None,
    budget: int | None = None,
    compression: float | None = None,
    calibration: str | Path | CalibrationData | tuple | None = None,
    calibration_samples: int = DEFAULT_SAMPLES,
    calibration_seq_length: int | None = None,
    damping: float = DEFAULT_DAMPING,
    seed: int = 0,
    tokenizer=None,
    embedding_rank: int | None = None,
    embedding_compression: float | None = None,
    **options,
) -> tuple[PreTrainedModel, dict]:
    """Decompose `teacher` (a directory, or a model changed in place); return it with a record.

    With `calibration` (a GLUE task directory, a plain-text file or directory, or pregenerated
    shards; None or "none": weight-only) the teacher first streams `calibration_samples` sequences
    of that data and every method minimises the output error of the projections on them
    (`compress.calibration`, `decomposition.weighted`); `damping` is the ridge added to each input
    moment, relative to its mean diagonal. A teacher passed as a model needs its `tokenizer` then.
    `calibration` may also be data already read (`compress.calibration.calibration_data`), or the
    (moments, record) pair `compress.calibration.calibrate` returned, to reuse one pass of the
    teacher for several decompositions.

    `method` is a registered name with its `options` (rank, layer_rank, tol, ...; see
    `decomposition.methods`) or a `Method`. With `budget` the ranks not given are the largest
    whose factors fit in that many weights; `compression` (a fraction in (0, 1), as the LLM
    compression papers state it) sets the budget to the decomposed matrices' weights times
    (1 - compression). The record holds the method and ranks, weights
    before and after, relative errors (overall, per slot, per layer and slot, per group), the
    spectra of the largest group and the seconds taken.

    `embedding_rank`, or `embedding_compression` (the share of the word-embedding weights to
    remove), also factorises the word embeddings (`compress.embeddings`; with calibration data read
    here, from its token frequencies); the record's `embeddings` then holds their rank and errors.
    """
    start = time.perf_counter()
    source = teacher
    if not isinstance(teacher, PreTrainedModel):
        config = load_config(teacher)
        head = check_head(infer_head(config) if head == "auto" else head)
        teacher = load_model(teacher, head, **({"num_labels": num_labels} if num_labels else {}))
    head = infer_head(teacher.config, teacher)
    if is_decomposed(teacher) or section_of(teacher.config) is not None:
        raise TensorslimError("the teacher is already a decomposed student", "export it with export_dense() first")
    method = method if isinstance(method, Method) else get_method(method, **options)
    emb_rank = rank_of_embeddings(teacher, embedding_rank, embedding_compression)
    budget, removed = resolve_budget(teacher, ops, budget, compression)
    method = kind_defaults(method, teacher.config, removed)
    teacher_parameters = count_parameters(teacher)
    moments, calibration_record = None, None
    fisher = method.values.get("weighting") == "fisher"
    if isinstance(calibration, tuple):  # (moments, record) from an earlier calibrate(), reused
        moments, calibration_record = calibration[0], dict(calibration[1])
    elif calibration is not None and str(calibration) != "none":
        if not isinstance(calibration, CalibrationData):
            if tokenizer is None and isinstance(source, PreTrainedModel):
                raise TensorslimError("calibration data needs the teacher's tokenizer", "pass tokenizer=...")
            calibration = calibration_data(
                teacher.config,
                calibration,
                tokenizer if tokenizer is not None else load_tokenizer(source),
                samples=calibration_samples,
                seq_length=calibration_seq_length,
                seed=seed,
            )
        moments, calibration_record = calibrate(teacher, calibration, ops=ops, fisher=fisher)
    if calibration_record is not None:
        calibration_record["damping"] = damping
    fit_start = time.perf_counter()
    if moments is not None:  # each group's slices of the moments, as the method groups them
        if fisher and moments.fisher is None:
            raise TensorslimError(
                "--weighting fisher needs Fisher weights, and these moments were calibrated without them",
                "calibrate with fisher=True (decompose does so when it reads the calibration data itself)",
            )
        moments = slice_covariances(moments, layout(teacher, ops, **grouping(method))[1])
    weights = {n: w.damped(damping) for n, w in moments.items()} if moments else None
    if budget is not None:
        method = method_for_budget(teacher, method, ops, budget, weights)
    result = factorize(teacher, method, ops, weights=weights)
    result["moments"] = moments
    record = make_record(teacher, method, ops, head, result, time.perf_counter() - fit_start)
    record["embeddings"] = None
    if emb_rank is not None:
        vocab = teacher.get_input_embeddings().weight.shape[0]
        counts = token_counts(calibration.batches, vocab) if isinstance(calibration, CalibrationData) else None
        spec, record["embeddings"] = factorize_embeddings(teacher, emb_rank, counts)
        section_of(teacher.config).embeddings = spec
    record["calibration"] = calibration_record
    record["parameters"] = {"teacher": teacher_parameters, "student": count_parameters(teacher)}
    record["seconds"]["total"] = time.perf_counter() - start
    w = record["decomposed_weights"]
    log.info(
        "%s %s ops=%s: relative error %.4f%s, %.1fx fewer decomposed weights, %.1fs",
        method.name,
        {k: v for k, v in method.values.items() if k in ("rank", "layer_rank")},
        ops,
        record["relative_error"],
        f" (calibrated output error {record['calibrated_error']:.4f})" if moments else "",
        w["ratio"],
        record["seconds"]["total"],
    )
    return teacher, record


DECODER_WINDOW = 2  # layers per shared basis of a causal LM (docs/decomposition.md, section 1)
WITHIN_LAYER_FROM = 0.4  # share of the weights removed from which a causal LM's bases stay within a layer


def kind_defaults(method: Method, config, removed: float | None = None) -> Method:
    """`method` with the options left unset filled in for the model kind (docs/decomposition.md): for
    causal LMs ratio allocation, relative weighting and shared bases with the output side whole
    (Basis Sharing) over windows of DECODER_WINDOW layers, or of one layer when `removed` (the
    share of the decomposed weights a budget removes) is WITHIN_LAYER_FROM or more; for encoders the
    paper's rank rule, absolute weighting and one basis for all layers (layer window 0)."""
    causal = get_family(config).causal
    values = {}
    if "allocation" in method.values and method.allocation is None:
        values["allocation"] = "ratio" if causal else "rank"
    if "weighting" in method.values and method.weighting is None:
        values["weighting"] = "relative" if causal else "absolute"
    if "layer_window" in method.values and method.layer_window is None:
        window = 1 if removed is not None and removed >= WITHIN_LAYER_FROM else DECODER_WINDOW
        values["layer_window"] = min(window, config.num_hidden_layers) if causal else 0
        if causal and method.sides is None:
            values["sides"] = "output-full"
    return method.with_values(**values) if values else method


def method_for_budget(model, method: Method, ops: str, budget: int, weights: dict | None) -> Method:
    """`method` with the ranks that fit `budget`, chosen on the model's stacks: for a data-aware fit
    whitened by each side's mean input moment, or with allocation error by each slice's own moment
    as the method weighs it (so that the groups' errors are in the units of the fit's objective)."""
    groups, layouts, found = layout(model, ops, **grouping(method))
    with torch.no_grad():
        stacks = stack({key: matrix_of(module) for key, module, _ in found}, groups, layouts)
    if weights and method.values.get("allocation") == "error":
        stacks = {n: slicewise_whitened(W, method.weighted(W, weights[n])) for n, W in stacks.items()}
    elif weights:
        stacks = {n: pooled_whitened(W, weights[n]) for n, W in stacks.items()}
    return method.for_budget(groups, model.config.hidden_size, budget, stacks=stacks)


def check_compression(compression: float) -> float:
    if not 0 < compression < 1:
        raise TensorslimError(
            f"compression {compression:g} is not between 0 and 1 (exclusive)",
            "pass the share of the decomposed matrices' weights to remove, e.g. --compression 20%",
        )
    return compression


def resolve_budget(
    model: PreTrainedModel, ops: str, budget: int | None, compression: float | None
) -> tuple[int | None, float | None]:
    """(budget, removed): the weight budget of `budget` or `compression` (the share of the `ops`
    matrices' weights to remove; at most one of the two), checked, and the share of those weights it
    removes; (None, None) for neither."""
    if budget is None and compression is None:
        return None, None
    dense = sum(g.num_slices * g.rows * g.cols for g in layout(model, ops)[0].values())
    if compression is not None:
        if budget is not None:
            raise TensorslimError("both a budget and a compression were given", "pass one of --budget, --compression")
        budget = int(dense * (1 - check_compression(compression)))
    if budget < 1:
        raise TensorslimError(f"parameter budget {budget} is not positive", "pass a budget of at least 1 weight")
    return budget, 1 - budget / dense


def from_teacher(teacher, method: str = "tucker", **kwargs) -> PreTrainedModel:
    """A student initialised from `teacher`'s weights (see `decompose`)."""
    return decompose(teacher, method, **kwargs)[0]


def skeleton(config, head: str = "base") -> PreTrainedModel:
    """The model `config` describes, built on the meta device: its module shapes without any memory."""
    from .loading import HEADS

    with torch.device("meta"):
        return HEADS[check_head(head)].from_config(config)


def check_settings(
    config,
    method: str,
    *,
    ops: str = "all",
    budget: int | None = None,
    compression: float | None = None,
    embedding_rank: int | None = None,
    embedding_compression: float | None = None,
    **options,
) -> Method:
    """The method with the ranks a decomposition of a `config` model would use; refuses settings that
    fit no such model (ranks out of range, an unmeetable budget, an embedding rank out of range)
    without loading any weight."""
    model = skeleton(config)
    rank_of_embeddings(model, embedding_rank, embedding_compression)
    budget, removed = resolve_budget(model, ops, budget, compression)
    found = kind_defaults(get_method(method, **options), config, removed)
    groups, _, _ = layout(model, ops, **grouping(found))
    if budget is not None:
        found = found.for_budget(groups, config.hidden_size, budget)
    found.validate(groups, config.hidden_size)
    return found


def decompose_to_dir(
    teacher: str | Path,
    out: str | Path,
    method: str = "tucker",
    *,
    ops: str = "all",
    budget: int | None = None,
    compression: float | None = None,
    head: str = "auto",
    num_labels: int | None = None,
    overwrite: bool = False,
    calibration: str | Path | tuple | None = None,
    **options,
) -> dict:
    """Decompose the teacher in directory `teacher` and write a loadable student directory `out`
    (config, safetensors, tokenizer, decomposition.json). Returns the decomposition record.
    `calibration` may also be the (moments, record) pair of an earlier `calibrate` of this teacher."""
    config = load_config(teacher)
    check_head(infer_head(config) if head == "auto" else head)
    check_settings(config, method, ops=ops, budget=budget, compression=compression, **options)  # before loading
    read = calibration is not None and not isinstance(calibration, tuple) and str(calibration) != "none"
    inputs = [teacher, calibration] if read else [teacher]
    if read:  # read the calibration data before the teacher loads: bad data is refused first
        calibration = calibration_data(
            config,
            calibration,
            load_tokenizer(teacher),
            samples=options.get("calibration_samples", DEFAULT_SAMPLES),
            seq_length=options.get("calibration_seq_length"),
            seed=options.get("seed", 0),
        )
    check_output_dir(out, "decompose", inputs=inputs, overwrite=overwrite)
    check_finite_weights(teacher)  # NaN or inf would break HOOI's eigendecompositions
    student, record = decompose(
        teacher,
        method,
        ops=ops,
        head=head,
        num_labels=num_labels,
        budget=budget,
        compression=compression,
        calibration=calibration,
        **options,
    )
    record["teacher"] = str(Path(teacher).resolve())
    with atomic_dir(out, "decompose", inputs=inputs, overwrite=overwrite) as tmp:
        student.save_pretrained(tmp)
        save_tokenizer(teacher, tmp)
        write_json(Path(tmp) / "decomposition.json", record)
    return record


def merge_where_faster(student: PreTrainedModel) -> dict:
    """Merge back into dense modules, in place, the projections whose dense matrix takes no more
    multiply-adds per token than their factored forward (`counts.dense_is_faster`; at batch 1 a
    decoder's step time is the weights it reads, which is the same count). The choice is recorded
    in the config's decomposition section (`merged`), so save_pretrained / from_pretrained keep it;
    merging every projection leaves an ordinary dense model. Returns {"merged": keys, "factored":
    projections left factored, "macs_per_token" and "matrix_weights": {"before", "after"}}."""
    if not is_decomposed(student):
        raise TensorslimError("the model is not decomposed", "pass a tensorslim student")
    before = {"macs": flops_per_token(student, 0) // 2, "weights": matrix_weights(student)}
    keys = dense_is_faster(student)
    if keys:
        merge(student, keys)
    left = sum(isinstance(m, FactoredProjection) for _, m, _ in targets(student, "all"))
    log.info("merged %d projections back to dense where that is faster; %d stay factored", len(keys), left)
    return {
        "merged": keys,
        "factored": left,
        "macs_per_token": {"before": before["macs"], "after": flops_per_token(student, 0) // 2},
        "matrix_weights": {"before": before["weights"], "after": matrix_weights(student)},
    }


@torch.no_grad()
def export_dense(student: PreTrainedModel) -> PreTrainedModel:
    """An ordinary instance of the student's own class with the factors merged into dense weights
    (the student itself is left as it is)."""
    return merge(copy.deepcopy(student)).eval()
