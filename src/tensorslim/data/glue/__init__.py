"""GLUE tasks: the task registry, TSV readers and writers, metrics and GLUE-server prediction files.

Files follow the layout of the official GLUE download script (``<glue_dir>/<TASK>/<split>.tsv``,
tab-separated, no quoting, UTF-8): CoLA train/dev have no header, every other file has one, and
columns are found by header name. The diagnostic set AX lives in ``<glue_dir>/diagnostic/diagnostic.tsv``
and is predicted with an MNLI model. Labels map to integers in the order of transformers' GLUE
processors (MNLI: contradiction, entailment, neutral; QNLI, RTE: entailment, not_entailment; others
"0", "1"); STS-B labels are float scores in [0, 5]. See docs/glue.md.
"""

from .files import Example, load_examples, read_tsv, task_file, write_tsv
from .scoring import check_label_mapping, compute_metrics, label_permutation, prediction_path, write_predictions
from .tasks import TASKS, TRAIN_SPLITS, GlueTask, get_task

__all__ = [
    "TASKS",
    "TRAIN_SPLITS",
    "Example",
    "GlueTask",
    "check_label_mapping",
    "compute_metrics",
    "get_task",
    "label_permutation",
    "load_examples",
    "prediction_path",
    "read_tsv",
    "task_file",
    "write_predictions",
    "write_tsv",
]
