"""The streaming corpus reader: layouts, sentence splitting, laziness, real files and bad input."""

from __future__ import annotations

import gzip
import logging
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorslim.data.corpus import CorpusReader, list_corpus_files, read_documents, split_sentences
from tensorslim.errors import TensorslimError


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_split_sentences_hand_cases():
    text = 'Mr. Smith went to Washington. He said "Hi!" Then H. G. Wells left, e.g. yesterday. 3 men came? Yes.'
    assert split_sentences(text) == [
        "Mr. Smith went to Washington.",
        'He said "Hi!"',
        "Then H. G. Wells left, e.g. yesterday.",
        "3 men came?",
        "Yes.",
    ]
    assert split_sentences("no break here. lower case follows") == ["no break here. lower case follows"]
    assert split_sentences("   ") == []


def test_sentence_layout_blank_lines_separate_documents(tmp_path):
    f = write(tmp_path / "c.txt", "A one. B two.\nSecond line.\n\n\nDoc two only.\n\nDoc three.\nEnd.\n")
    reader = CorpusReader([f], layout="sentences")
    assert list(reader) == [["A one. B two.", "Second line."], ["Doc two only."], ["Doc three.", "End."]]
    assert (reader.stats.documents, reader.stats.sentences, reader.stats.lines) == (3, 5, 8)


def test_paragraph_layout_auto_detected(tmp_path):
    para = "It was late. The moon rose. Nobody came."
    text = f"{para}\n\n{para} Again.\n\n\n\nChapter two starts. It ends.\n"
    f = write(tmp_path / "book.txt", text)
    reader = CorpusReader([f])
    docs = list(reader)
    assert reader.stats.layouts[str(f)] == "paragraphs"
    assert docs == [
        ["It was late.", "The moon rose.", "Nobody came.", "It was late.", "The moon rose.", "Nobody came.", "Again."],
        ["Chapter two starts.", "It ends."],
    ]


def test_wikitext_layout(tmp_path):
    text = (
        " \n = Lobster = \n \n Lobsters are blue . They taste good @-@ really .\n \n = = Biology = = \n"
        " They weigh 0 @.@ 7 kg , or 1 @,@ 000 g .\n \n = Crab = \n \n Crabs walk sideways .\n"
    )
    f = write(tmp_path / "wiki.train.raw", text)
    reader = CorpusReader([f])
    assert list(reader) == [
        ["Lobsters are blue .", "They taste good-really .", "They weigh 0.7 kg , or 1,000 g ."],
        ["Crabs walk sideways ."],
    ]
    assert reader.stats.layouts[str(f)] == "wikitext"


def test_directories_are_walked_sorted_skipping_hidden_and_gz_is_read(tmp_path):
    write(tmp_path / "b" / "z.txt", "From z.\n")
    write(tmp_path / "b" / "a.raw", "From a.\n")
    write(tmp_path / "a.txt", "Top.\n")
    write(tmp_path / ".hidden.txt", "Hidden.\n")
    write(tmp_path / ".git" / "x.txt", "Git.\n")
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(b"Zipped line.\n"))
    files = list_corpus_files([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a.txt", "b/a.raw", "b/z.txt", "c.txt.gz"]
    assert list(read_documents([tmp_path])) == [["Top."], ["From a."], ["From z."], ["Zipped line."]]


def test_reader_is_lazy(tmp_path):
    """The first document comes out although the end of the file is bad: nothing reads ahead."""
    good = "".join(f"Sentence {i}.\n\n" for i in range(20_000))
    f = write(tmp_path / "big.txt", good.encode() + b"\xff\xfe broken\n")
    docs = read_documents([f])
    assert next(docs) == ["Sentence 0."]
    with pytest.raises(TensorslimError, match=r"big\.txt is not UTF-8: byte 0xff on line 40001"):
        list(docs)


def test_over_long_lines_are_cut_with_a_warning(tmp_path, caplog):
    words = " ".join(f"w{i}" for i in range(3000))  # one 'sentence' of ~16k characters, no punctuation
    f = write(tmp_path / "long.txt", f"Short one.\n{words}\n")
    with caplog.at_level(logging.WARNING, logger="tensorslim.data.corpus"):
        docs = list(CorpusReader([f], layout="sentences", max_sentence_chars=500))
    pieces = docs[0][1:]
    assert docs[0][0] == "Short one."
    assert all(len(p) <= 500 for p in pieces) and len(pieces) >= 16999 // 500
    assert " ".join(pieces) == words  # cut at spaces, nothing lost
    assert "1 sentence(s) longer than 500 characters" in caplog.text


def test_long_documents_are_split(tmp_path):
    f = write(tmp_path / "c.txt", "".join(f"S{i}.\n" for i in range(25)))
    docs = list(CorpusReader([f], layout="sentences", max_doc_sentences=10))
    assert [len(d) for d in docs] == [10, 10, 5]


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", r"holds no sentences"),
        (b"\n  \n\t\n", r"holds no sentences"),
        (b"Some text.\nMore\x00binary\x01\n", r"bin\.txt looks binary: NUL byte on line 2"),
        ("Caf\u00e9 au lait.\nNa\u00efve.\n".encode("latin-1"), r"bin\.txt is not UTF-8: byte 0xe9 on line 1"),
        (b"ok line\n\xe2\x82", r"ends inside a multi-byte character"),
    ],
)
def test_bad_input_raises_our_error(tmp_path, content, pattern):
    f = write(tmp_path / "bin.txt", content)
    with pytest.raises(TensorslimError, match=pattern) as info:
        list(read_documents([f]))
    assert info.value.fix


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(TensorslimError, match="does not exist"):
        CorpusReader([tmp_path / "nope.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TensorslimError, match="holds no files"):
        CorpusReader([tmp_path / "empty"])
    with pytest.raises(TensorslimError, match="unknown corpus layout"):
        CorpusReader([tmp_path], layout="xml")


def test_utf8_bom_and_crlf_are_handled(tmp_path):
    f = write(tmp_path / "win.txt", b"\xef\xbb\xbfFirst.\r\nSecond.\r\n\r\nThird.\r\n")
    assert list(read_documents([f], layout="sentences")) == [["First.", "Second."], ["Third."]]


def test_real_wikitext_documents_match_headings(shared_data):
    path = shared_data / "corpus" / "wikitext_raw" / "wiki.valid.raw"
    titles = [line for line in path.read_text(encoding="utf-8").splitlines() if re.match(r"^ = [^=].* = $", line)]
    reader = CorpusReader([path])
    docs = list(reader)
    assert reader.stats.layouts[str(path)] == "wikitext"
    assert len(docs) == len(titles) == 60
    assert docs[0][0].startswith("Homarus gammarus , known as the European lobster")
    assert not any("@-@" in s or s.startswith("=") for d in docs for s in d)


def test_real_gutenberg_books(shared_data):
    books = shared_data / "corpus" / "gutenberg"
    reader = CorpusReader([books / "alice_in_wonderland.txt", books / "war_and_piece.txt"])
    docs = list(reader)
    assert set(reader.stats.layouts.values()) == {"paragraphs"}
    assert reader.stats.files == 2 and len(docs) > 100
    sentences = [s for d in docs for s in d]
    assert (
        "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing "
        "to do: once or twice she had peeped into the book her sister was reading, but it had no pictures or "
        "conversations in it, 'and what is the use of a book,' thought Alice 'without pictures or "
        "conversations?'" in sentences
    )
    assert all(0 < len(s) <= 2000 for s in sentences)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_random_bytes_give_documents_or_our_error(tmp_path, data):
    f = write(tmp_path / "fuzz.txt", data)
    try:
        docs = list(read_documents([f], max_sentence_chars=50))
    except TensorslimError:
        return
    assert docs and all(d and all(isinstance(s, str) and 0 < len(s) <= 50 for s in d) for d in docs)
