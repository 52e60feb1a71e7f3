"""GLUE evaluation of a sequence classifier: dev scores and GLUE-server test prediction files.

Every dev split gets its own loader (MNLI: dev_matched and dev_mismatched separately). Results are
written as JSON: {"task", "model", "max_seq_length", "splits": {split: metrics}, "score"} where
"score" is the mean of the dev splits' headline scores.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.glue import compute_metrics, get_task, label_permutation, prediction_path, task_file, write_predictions
from ..errors import TensorslimError
from ..io import check_not_input, write_json
from ..validate import check_at_least, check_device, check_output_file
from . import run_dir
from .glue_data import collator, encode_split
from .models import check_max_length, check_trained_task, load_classifier, load_config, load_tokenizer

log = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"


def trained_max_length(model_dir: Path) -> int | None:
    """The max_seq_length a tensorslim command trained `model_dir` with, if recorded."""
    info = Path(model_dir) / run_dir.INFO_FILE
    return json.loads(info.read_text()).get("max_seq_length") if info.is_file() else None


@torch.no_grad()
def predict(model, dataset, tokenizer, batch_size: int = 64, device: str | torch.device = "cpu",
            desc: str = "predict") -> np.ndarray:
    """(n, num_labels) logits of `model` on a tokenized dataset, in dataset order."""
    model.eval().to(device)
    columns = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in dataset.column_names]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator(tokenizer))
    outputs = []
    for batch in tqdm(loader, desc=desc, leave=False):
        outputs.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(outputs).numpy()


def check_outputs(task, glue_dir: str | Path, model_dir: Path, out: Path, predict_test: bool) -> None:
    """Refuse, before any work, outputs that would overwrite an input or a file this command did not write."""
    if out.exists() and not out.is_dir():
        raise TensorslimError(f"--out {out} is a file", "pass a directory for --out")
    splits = [*task.dev_splits, *(task.test_splits if predict_test else ())]
    sources = [task_file(Path(glue_dir), task, split) for split in splits]
    check_output_file(out / RESULTS_FILE, "--out", inputs=sources, ours=("task", "splits"))
    for split in task.test_splits if predict_test else ():
        path = prediction_path(task, out, split)
        check_not_input(path, sources, "--out")
        if path.exists() and not path.read_text(encoding="utf-8", errors="replace").startswith("index\tprediction"):
            raise TensorslimError(f"{path} exists and is not a GLUE prediction file", "choose another --out")


def evaluate(model: str | Path, task: str, glue_dir: str | Path, out: str | Path | None = None, *,
             predict_test: bool = False, max_seq_length: int | None = None, batch_size: int = 64,
             max_eval_samples: int | None = None, device: str | None = None) -> dict:
    """Score `model` on every dev split of `task`; with `predict_test` write test prediction files.

    Outputs go to `out` (default: the model directory): eval_results.json and, with
    `predict_test`, <TASK>.tsv files in GLUE-server format. Returns the results dict.
    """
    task = get_task(task)
    model_dir = Path(model)
    out = Path(out) if out is not None else model_dir
    config = load_config(model_dir)
    check_outputs(task, glue_dir, model_dir, out, predict_test)
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--max-eval-samples", max_eval_samples, 1)
    device = check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")
    check_trained_task(model_dir, task)
    length = check_max_length(max_seq_length if max_seq_length is not None else
                              trained_max_length(model_dir) or task.max_seq_length, config)
    tokenizer = load_tokenizer(model_dir)
    classifier = load_classifier(model_dir, task)
    perm = label_permutation(task, classifier.config)
    results = {"task": task.name, "model": str(model_dir), "max_seq_length": length, "splits": {}}
    for split in task.dev_splits:
        data = encode_split(glue_dir, task, split, tokenizer, length, max_eval_samples)
        logits = predict(classifier, data, tokenizer, batch_size, device, desc=f"{task.name} {split}")
        logits = logits[:, perm] if perm is not None else logits
        results["splits"][split] = compute_metrics(task, logits, data["labels"])
        log.info("%s %s: %s", task.name, split, results["splits"][split])
    scores = [m["score"] for m in results["splits"].values()]
    results["score"] = float(np.mean(scores)) if scores else None
    if predict_test:
        results["prediction_files"] = {}
        for split in task.test_splits:
            data = encode_split(glue_dir, task, split, tokenizer, length)
            logits = predict(classifier, data, tokenizer, batch_size, device, desc=f"{task.name} {split}")
            logits = logits[:, perm] if perm is not None else logits
            results["prediction_files"][split] = str(write_predictions(task, logits, out, split))
    write_json(out / RESULTS_FILE, results)
    return results
