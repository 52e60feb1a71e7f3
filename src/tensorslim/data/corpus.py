"""Streaming reader for plain-text pre-training corpora.

A corpus is a list of files and/or directories. Directories are walked recursively in sorted
path order, skipping hidden entries; `.gz`, `.bz2` and `.xz` files are decompressed on the fly.
Files must be UTF-8 text. The reader yields documents, each a `list[str]` of sentences, one at a
time: memory holds one document (at most `max_doc_sentences` sentences), never the corpus.

Three layouts are understood; `layout="auto"` picks one per file from its first lines:

- ``sentences``: one sentence a line, a blank line between documents (BERT's / TinyBERT's format).
- ``paragraphs``: one paragraph a line, blank lines between paragraphs and two or more blank
  lines between documents (Project Gutenberg books). Lines are cut into sentences by a regex.
- ``wikitext``: WikiText raw files. ``= Title =`` headings start a document, ``= = Section = =``
  headings are dropped, ``@-@ @,@ @.@`` are restored to ``- , .`` and lines are split as above.

Documents never span files. Sentences longer than `max_sentence_chars` are cut at whitespace
(a warning reports how many); physical lines longer than 1 MiB are read in pieces.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import logging
import lzma
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TensorslimError

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "sentences", "paragraphs", "wikitext")
#: Lines are read in pieces of at most this many bytes, so one giant line cannot exhaust memory.
MAX_LINE_BYTES = 1 << 20
#: `layout="auto"` looks at the first this-many characters of a file ...
PEEK_CHARS = 100_000
#: ... and calls it one paragraph a line when lines holding a sentence break carry this share of them.
PARAGRAPH_SHARE = 0.2

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_WIKI_TITLE = re.compile(r"^ ?= [^=].* = ?$")
_WIKI_SECTION = re.compile(r"^ ?(= ){2,}.*( =){2,} ?$")
_WIKI_ESCAPES = re.compile(r" @([-,.])@ ")
# A sentence ends at . ! or ? (plus closing quotes/brackets), then whitespace, then what may open a
# sentence: a capital, a digit, or an opening quote/bracket before one.
_BOUNDARY = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*\s+(?=["'\u201c\u2018(\[]*[A-Z0-9])""")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e cf mt capt col gen lt sgt rev gov fig no nos vol ch "
    "pp inc ltd co jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


def split_sentences(text: str) -> list[str]:
    """Cut a paragraph into sentences: after . ! ? before a capital, digit or opening quote.

    Abbreviations (``Mr.``, ``e.g.``, ...) and initials (``H. G. Wells``) do not end a sentence.
    """
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        end = match.start()
        if text[end] == "." and _is_abbreviation(text, end):
            continue
        piece = text[start : match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _is_abbreviation(text: str, dot: int) -> bool:
    word = text[max(0, dot - 12) : dot].rsplit(None, 1)[-1:] or [""]
    word = word[0].lstrip("\"'([\u201c\u2018").lower()
    return (len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS


def list_corpus_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (recursively, sorted, hidden entries skipped) into files."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise TensorslimError("no corpus paths given", "pass --corpus FILE_OR_DIR [...]")
    files: list[Path] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / n for n in names if not n.startswith(".")]
            if not found:
                raise TensorslimError(f"corpus directory {path} holds no files", "pass a directory with text files")
            files += sorted(found)
        else:
            raise TensorslimError(f"corpus path {path} does not exist", "check the --corpus path")
    return files


@dataclass
class CorpusStats:
    """Counts gathered while reading; complete once iteration has finished."""

    files: int = 0
    lines: int = 0
    documents: int = 0
    sentences: int = 0
    long_sentences: int = 0
    long_documents: int = 0
    long_lines: int = 0
    layouts: dict[str, str] = field(default_factory=dict)


class CorpusReader:
    """Iterate documents (lists of sentences) of a corpus lazily; see the module docstring.

    `files` is known (and checked to exist) on construction; `stats` fills in while iterating.
    Raises TensorslimError for binary or non-UTF-8 files (naming file and line) and, at the end,
    when the whole corpus held no sentence.
    """

    def __init__(self, paths, layout: str = "auto", max_sentence_chars: int = 2000, max_doc_sentences: int = 10_000):
        if layout not in LAYOUTS:
            raise TensorslimError(f"unknown corpus layout {layout!r}", f"use one of {', '.join(LAYOUTS)}")
        if max_sentence_chars < 1 or max_doc_sentences < 1:
            raise TensorslimError("max_sentence_chars and max_doc_sentences must be positive", "pass values >= 1")
        self.files = list_corpus_files(paths)
        self.layout = layout
        self.max_sentence_chars = max_sentence_chars
        self.max_doc_sentences = max_doc_sentences
        self.stats = CorpusStats()

    def __iter__(self) -> Iterator[list[str]]:
        self.stats = stats = CorpusStats()
        for path in self.files:
            stats.files += 1
            yield from self._documents(path)
        if stats.sentences == 0:
            raise TensorslimError(
                f"the corpus ({len(self.files)} file(s), first {self.files[0]}) holds no sentences",
                "pass UTF-8 text files with one sentence or one paragraph a line",
            )
        if stats.long_sentences or stats.long_lines:
            log.warning(
                "%d sentence(s) longer than %d characters and %d line(s) longer than %d bytes were cut into pieces",
                stats.long_sentences,
                self.max_sentence_chars,
                stats.long_lines,
                MAX_LINE_BYTES,
            )
        if stats.long_documents:
            log.info("%d document(s) longer than %d sentences were split", stats.long_documents, self.max_doc_sentences)
        log.info("read %d documents, %d sentences from %d file(s)", stats.documents, stats.sentences, stats.files)

    def _documents(self, path: Path) -> Iterator[list[str]]:
        lines = _read_lines(path, self.stats)
        layout = self.layout
        if layout == "auto":
            head, chars = [], 0
            for item in lines:
                head.append(item)
                chars += len(item)
                if chars >= PEEK_CHARS:
                    break
            layout = _detect_layout(head)
            lines = _chain(head, lines)
        self.stats.layouts[str(path)] = layout
        log.debug("%s: layout %s", path, layout)

        doc: list[str] = []
        blanks = 0
        for line in lines:
            text = line.strip()
            if not text:
                blanks += 1
                if layout == "sentences" and doc:
                    yield self._finish(doc)
                    doc = []
                continue
            if layout == "paragraphs" and blanks >= 2 and doc:
                yield self._finish(doc)
                doc = []
            blanks = 0
            if layout == "wikitext":
                if _WIKI_SECTION.match(line):
                    continue
                if _WIKI_TITLE.match(line):
                    if doc:
                        yield self._finish(doc)
                        doc = []
                    continue
                text = _WIKI_ESCAPES.sub(r"\1", text)
            pieces = [text] if layout == "sentences" else split_sentences(text)
            for sentence in pieces:
                for part in self._cap(sentence):
                    doc.append(part)
                    if len(doc) >= self.max_doc_sentences:
                        self.stats.long_documents += 1
                        yield self._finish(doc)
                        doc = []
        if doc:
            yield self._finish(doc)

    def _finish(self, doc: list[str]) -> list[str]:
        self.stats.documents += 1
        self.stats.sentences += len(doc)
        return doc

    def _cap(self, sentence: str) -> list[str]:
        """Cut an over-long sentence at whitespace into pieces of at most max_sentence_chars."""
        limit = self.max_sentence_chars
        if len(sentence) <= limit:
            return [sentence]
        self.stats.long_sentences += 1
        parts, start = [], 0
        while start < len(sentence):
            end = start + limit
            if end < len(sentence):
                cut = sentence.rfind(" ", start + 1, end + 1)
                end = cut if cut > start else end
            part = sentence[start:end].strip()
            if part:
                parts.append(part)
            start = end
        return parts


def read_documents(
    paths, layout: str = "auto", max_sentence_chars: int = 2000, max_doc_sentences: int = 10_000
) -> Iterator[list[str]]:
    """Lazily yield the documents of `paths`; shorthand for `iter(CorpusReader(...))`."""
    return iter(CorpusReader(paths, layout, max_sentence_chars, max_doc_sentences))


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


def _detect_layout(lines: list[str]) -> str:
    """wikitext if a ` = Title = ` heading shows; paragraphs if multi-sentence lines carry enough text."""
    if any(_WIKI_TITLE.match(line) for line in lines):
        return "wikitext"
    total = sum(len(line.strip()) for line in lines)
    multi = sum(len(line.strip()) for line in lines if len(split_sentences(line.strip())) > 1)
    return "paragraphs" if total and multi >= PARAGRAPH_SHARE * total else "sentences"


def _read_lines(path: Path, stats: CorpusStats) -> Iterator[str]:
    """Decoded lines of `path` (without line ends), checked for NUL bytes and strict UTF-8."""
    opener = _OPENERS.get(path.suffix.lower(), open)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    lineno, continued = 0, False
    try:
        with opener(path, "rb") as handle:
            while True:
                chunk = handle.readline(MAX_LINE_BYTES)
                if not chunk:
                    break
                if not continued:
                    lineno += 1
                    stats.lines += 1
                if b"\x00" in chunk:
                    raise TensorslimError(
                        f"{path} looks binary: NUL byte on line {lineno}",
                        "pass only UTF-8 text files (remove binary files from the corpus directory)",
                    )
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    bad = exc.object[exc.start : exc.start + 1].hex()
                    raise TensorslimError(
                        f"{path} is not UTF-8: byte 0x{bad} on line {lineno}",
                        f"convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`)",
                    ) from None
                ended = chunk.endswith(b"\n")
                if not ended and len(chunk) == MAX_LINE_BYTES:
                    stats.long_lines += not continued
                continued = not ended
                if lineno == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield text.rstrip("\r\n")
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise TensorslimError(
                    f"{path} is not UTF-8: it ends inside a multi-byte character",
                    "convert it to UTF-8 or repair its last line",
                ) from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise TensorslimError(
            f"cannot read corpus file {path}: {exc}",
            "check that the file is readable and, if compressed, not truncated",
        ) from None
