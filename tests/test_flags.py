"""One spelling per flag across commands: renamed flags keep working as hidden aliases."""

from __future__ import annotations

import argparse
import re

import pytest

from tensorslim.cli import build_parser

REQUIRED = {
    "pregenerate": ["--corpus", "c", "--tokenizer", "t", "--out", "o"],
    "augment": ["--task", "SST-2", "--glue-dir", "g"],
    "report": ["--model", "m"],
    "finetune": ["--model", "m", "--task", "SST-2", "--glue-dir", "g", "--out", "o"],
    "evaluate": ["--model", "m", "--perplexity", "t"],
}
#: (command, flag, retired spelling, value, parsed attribute, parsed value)
RENAMED = [
    ("pregenerate", "--max-seq-length", "--max-seq-len", "64", "max_seq_length", 64),
    ("augment", "--max-train-samples", "--max-examples", "5", "max_train_samples", 5),
    ("report", "--seq-length", "--seq-len", "16", "seq_length", 16),
    ("evaluate", "--seq-length", "--seq-len", "16", "seq_length", 16),
    ("finetune", "--aug", "--train-split", "train_aug", "train_split", "train_aug"),
]


def subcommands(parser: argparse.ArgumentParser, prefix=()) -> dict[tuple, argparse.ArgumentParser]:
    """Every leaf subcommand parser by its words, e.g. ("distill", "task")."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(subcommands(sub, (*prefix, name)) or {(*prefix, name): sub})
    return found


def visible_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help is not argparse.SUPPRESS for s in a.option_strings}


@pytest.mark.parametrize("command, flag, old, value, attribute, expected", RENAMED, ids=[r[2] for r in RENAMED])
def test_a_retired_spelling_still_parses_but_is_not_shown(command, flag, old, value, attribute, expected):
    sub = subcommands(build_parser())[(command,)]
    text = sub.format_help()
    assert flag in text and not re.search(re.escape(old) + r"(?![\w-])", text)
    args, rest = build_parser().parse_known_args([command, *REQUIRED[command], old, value])
    assert not rest and getattr(args, attribute) == expected


def test_no_command_shows_a_retired_spelling_and_shared_flags_are_spelled_alike():
    commands = subcommands(build_parser())
    assert {("pregenerate",), ("distill", "general"), ("distill", "task"), ("finetune",), ("sweep",)} <= set(commands)
    shown = {words: visible_flags(p) for words, p in commands.items()}
    retired = {old for _, _, old, *_ in RENAMED}
    assert not {flag for flags in shown.values() for flag in flags} & retired
    for words, flags in shown.items():  # the sequence length has one spelling wherever it is a flag
        assert not {f for f in flags if re.fullmatch(r"--(max-)?seq-len", f)}, words
    assert all(
        "--max-seq-length" in shown[w]
        for w in [("pregenerate",), ("finetune",), ("distill", "task"), ("evaluate",), ("demo",), ("sweep",)]
    )
