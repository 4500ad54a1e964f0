"""ARPA files read strictly: every malformation is one error naming the file and the line,
from the reader (`read_arpa`, `arpa_words`) and from the beam decoder that hands the file
to KenLM."""

from __future__ import annotations

import pytest

from speechswarm.chaos.hostile_inputs import GOOD_ARPA
from speechswarm.decode import DecoderOptions, make_decoder
from speechswarm.decode.arpa import ArpaError, arpa_words, check_arpa, iter_arpa
from speechswarm.decode.beam import _kenlm_reason
from speechswarm.decode.lm import read_arpa

GOOD = GOOD_ARPA  # a valid bigram file over the words a and b (KenLM reads it)
TOKENS = ["<blank>", " ", "a", "b"]


def _arpa(tmp_path, content: str | bytes):
    path = tmp_path / "lm.arpa"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_a_good_file_reads_whole_and_its_words_alone(tmp_path):
    path = _arpa(tmp_path, "# made by hand\n\n" + GOOD.replace("\n", "\r\n"))
    assert list(iter_arpa(path))[3:5] == [(1, ("a",), -0.7, -0.2), (1, ("b",), -0.7, -0.2)]
    assert arpa_words(path) == ["a", "b"]
    assert read_arpa(path).order == 2
    check_arpa(path)


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        ("", 1, "the file ends before \\data\\ (empty?)"),
        (bytes(range(256)), 1, "expected \\data\\, found"),
        (GOOD.replace("\\data\\\n", ""), 1, "expected \\data\\, found 'ngram 1=5'"),
        (GOOD.replace("ngram 1=5", "ngram 1=five"), 2, "expected 'ngram N=COUNT'"),
        (GOOD.replace("ngram 2=2", "ngram 3=2"), 3, "'ngram 3=' where 'ngram 2=' belongs"),
        (GOOD.replace("ngram 1=5", "ngram 1=9"), 11, "the \\1-grams: section ends after 5"),
        (GOOD.replace("ngram 1=5", "ngram 1=2"), 8, "holds more entries than the header's 2"),
        (GOOD.replace("-0.7\ta\t", "abc\ta\t"), 9, "probability 'abc' is not a log10 value"),
        (GOOD.replace("-0.7\ta\t", "nan\ta\t"), 9, "probability 'nan' is not a log10 value"),
        (GOOD.replace("-0.7\ta\t", "0.7\ta\t"), 9, "probability '0.7' is not a log10 value"),
        (GOOD.replace("\ta\t-0.2", "\ta\txyz"), 9, "backoff 'xyz' is not a finite number"),
        (GOOD.replace("\\2-grams:", "\\two-grams:"), 12, "expected \\2-grams:, found"),
        (GOOD.split("\\2-grams:")[0] + "\\end\\\n", 12, "expected \\2-grams:, found '\\\\end"),
        (GOOD.replace("\\end\\\n", ""), 15, "the file ends without \\end\\ (truncated?)"),
        (GOOD[: GOOD.index("\tb\t")], 10, "expected 'log10prob' + 1 word(s) [backoff]"),
        (GOOD.replace("-0.3\ta b", "-0.3\ta b -1"), 14, "expected 'log10prob' + 2 word(s) in"),
        (GOOD.replace("-0.3\ta b", "-0.3\ta zz"), 14, "the word 'zz' of a 2-gram is not among"),
        (GOOD.replace("\ta\t", "\ta\x00\t"), 9, "the word 'a\\x00' holds a NUL byte"),
        (GOOD.replace("\ta\t", "\tcaf\u00e9\t").encode("latin-1"), 9, "not UTF-8 (byte 0xe9"),
    ],
)
def test_each_malformation_is_named_by_file_and_line(tmp_path, content, line, what):
    path = _arpa(tmp_path, content)
    with pytest.raises(ArpaError) as caught:
        check_arpa(path)
    assert str(caught.value).startswith(f"language model {path}, line {line}: ")
    assert what in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.lineno == line


def test_the_decoder_names_the_line_where_kenlm_fails(tmp_path):
    """The unigrams are read here first; what KenLM finds later is named by a strict read."""
    for content, line in [(GOOD.replace("-0.3\ta b", "-0.3\ta zz"), 14),
                          (GOOD.replace("\\end\\\n", ""), 15)]:  # fmt: skip
        path = _arpa(tmp_path, content)
        assert arpa_words(path) == ["a", "b"]  # the unigrams alone are fine
        with pytest.raises(ArpaError, match=f"lm.arpa, line {line}: "):
            make_decoder(DecoderOptions("beam", lm=path), TOKENS)


def test_kenlm_messages_lose_their_cpp_location():
    e = RuntimeError(
        "/tmp/pip-req-build-x/lm/read_arpa.cc:85 in void lm::ReadNGramHeader(util::FilePiece&,"
        " unsigned int) threw FormatLoadException.\nWas expecting n-gram header \\2-grams: but "
        "got \\end\\ instead Byte: 104"
    )
    assert _kenlm_reason(e) == (
        "Was expecting n-gram header \\2-grams: but got \\end\\ instead Byte: 104"
    )
