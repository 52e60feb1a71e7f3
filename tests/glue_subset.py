"""A small GLUE directory cut from the real files in ../shared/data (first rows of each split)."""

from __future__ import annotations

from pathlib import Path


def head(src: Path, dst: Path, rows: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open(encoding="utf-8") as handle:
        lines = [line for _, line in zip(range(rows + 1), handle)]
    dst.write_text("".join(lines), encoding="utf-8")


def make_glue_subset(shared: Path, out: Path, rows: int = 48) -> Path:
    """SST-2 and STS-B train/dev/test, and MNLI train/dev_matched/dev_mismatched (format sample)."""
    glue = shared / "glue"
    for task in ("SST-2", "STS-B"):
        for split in ("train", "dev", "test"):
            head(glue / task / f"{split}.tsv", out / task / f"{split}.tsv", rows)
    mnli = shared / "glue_format_samples" / "MNLI" / "16-13"
    head(mnli / "train.tsv", out / "MNLI" / "train.tsv", rows)
    head(mnli / "dev_matched.tsv", out / "MNLI" / "dev_matched.tsv", rows)
    # the sample has no mismatched file: its matched rows (reversed) stand in, in the same format
    lines = (mnli / "dev_matched.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "MNLI" / "dev_mismatched.tsv").write_text(lines[0] + "".join(reversed(lines[1 : rows // 2 + 1])))
    return out
