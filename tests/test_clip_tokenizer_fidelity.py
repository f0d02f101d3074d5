"""Fidelity of the runtime CLIP tokenizer to ``open_clip.tokenize`` (issue 7, section 1, "CLIP text cleaning").

Every corpus string is one campaign case: the ids of ``ClipTokenizer`` on the exporter's ``tokenizer.json``
must equal open_clip's, position for position (cleaning with ftfy + html.unescape, whitespace, lower-case,
open_clip's word regex, special-token handling, truncation to the context length).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsvlm_edge.errors import BundleError, InputError
from rsvlm_edge.export.clip_tokenizer import write_clip_tokenizer
from rsvlm_edge.models.clip.prompts import TEMPLATES
from rsvlm_edge.models.clip.tokenizer import ClipTokenizer

open_clip = pytest.importorskip("open_clip")

fidelity = pytest.mark.campaign("fidelity")

RS_LABELS = (
    "airport", "bare land", "baseball diamond", "beach", "bridge", "center", "church", "commercial area",
    "dense residential area", "desert", "farmland", "forest", "industrial area", "meadow",
    "medium residential", "mountain", "park", "parking lot", "playground", "pond", "port",
    "railway station", "resort", "river", "school", "sparse residential", "square", "stadium",
    "storage tanks", "viaduct", "AnnualCrop", "HerbaceousVegetation", "Highway", "Pasture",
    "PermanentCrop", "SeaLake", "tennis_court", "ground track field", "golf course",
    "mobile home park", "thermal power station", "circular farmland", "Ship", "snowberg",
)

CORPUS: dict[str, list[str]] = {
    "html": [
        "Tom &amp; Jerry", "&lt;b&gt;", "&amp;amp;", "&amp;amp;amp;", "&amp;lt;b&amp;gt;", "<b>bold</b> &amp;",
        "&quot;quoted&quot;", "&#39;apos&#39;", "&#x27;hex&#x27;", "&nbsp;park", "&copy; 2024",
        "fish &amp chips", "&notanentity;", "AT&T", "&#8220;curly&#8221;", "&eacute;t&eacute;",
        "<i>italic</i> <br/>line<br>", "&lt;end_of_text&gt;", "&lt;|endoftext|&gt;", "&amp;nbsp;x",
    ],
    "quotes": [
        "\u201criver\u201d", "\u2018lake\u2019", "don\u2019t", "it's", "IT'S", "we'll", "they'Re",
        "\u201eG\u00e4nsef\u00fc\u00dfchen\u201c", "\u00abriver\u00bb", "\u2039a\u203a", "\u2033prime\u2033",
        "`backtick`", "rock'n'roll", "\u2019s", "''quoted''",
    ],
    "ligatures": [
        "\ufb01eld", "\ufb02ood", "o\ufb03ce", "\ufb00", "\ufb06ation", "\ufb05", "\u0132ssel",
        "\u00e6sir", "\u0153uvre", "\u01c6", "e\ufb03cient \ufb01sh\ufb02ake",
    ],
    "fullwidth": [
        "\uff21\uff29\uff32\uff30\uff2f\uff32\uff34", "\uff46\uff4f\uff52\uff45\uff53\uff54", "\uff11\uff12\uff13",
        "\uff42\uff45\uff41\uff43\uff48\uff01", "\uff48\uff45\uff4c\uff4c\uff4f\u3000\uff57\uff4f\uff52\uff4c\uff44",
        "\uff76\uff80\uff76\uff85", "\uff1cend_of_text\uff1e", "a satellite photo of \uff46\uff4f\uff52\uff45\uff53\uff54.",
    ],
    "mojibake": [
        "caf\u00c3\u00a9", "na\u00c3\u00afve", "\u00c3\u00bcber", "\u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d",
        "\u00c3\u00a9t\u00c3\u00a9", "S\u00c3\u00a3o Paulo", "Z\u00c3\u00bcrich", "\u00e2\u20ac\u2122s",
        "\u00d0\u00bc\u00d0\u00be\u00d1\x81\u00d0\u00ba\u00d0\u00b2\u00d0\u00b0",
        "The Mona Lisa doesn\u00c3\u0192\u00c2\u00a2\u00c3\u00a2\u00e2\u20ac\u0161\u00c2\u00ac\u00c3\u00a2\u00e2\u20ac\u017e\u00c2\u00a2t have eyebrows.",
        "\u00c3\u00banico", "\u00f0\u0178\u02dc\u20ac", "Ã¢â‚¬Å“doubleÃ¢â‚¬\x9d",
    ],
    "control": [
        "river\x00bank", "a\x07b", "tab\tseparated", "line\nbreak", "crlf\r\nend", "\x1b[31mred\x1b[0m",
        "a\x7fb", "a\x85b", "a\x0cb", "a\x0bb", "a\x1cb\x1dc\x1ed\x1ff", "soft\u00adhyphen", "zero\u200bwidth",
        "bom\ufeffstart", "\u200e\u200fmarks", "x\u2028y\u2029z", "a\ufffdb", "\x00", "a\x9bb",
        # surrogates (e.g. from surrogateescape decoding): ftfy joins pairs and replaces lone ones with U+FFFD
        "bad\ud800", "\udfff", "\ud83c\udf32 pair", "a\udcc3\udca9b",
    ],
    "whitespace": [
        "dense\u00a0residential", "a\u2002b\u2003c\u2009d\u200ae", "a\u3000b", "a\u202fb", "a\u205fb",
        "a\u1680b", "a\u180eb", "  many   spaces  ", " leading", "trailing ", "mixed \t\n\r\u00a0 run",
    ],
    "empty": ["", " ", "   ", "\t", "\n\n", "\u00a0", "\u3000", "\u200b", "&nbsp;", " \r\n\t\u00a0 ", "&#32;"],
    "cjk": [
        "\u673a\u573a", "\u68ee\u6797\u548c\u6cb3\u6d41", "\u6771\u4eac\u30bf\u30ef\u30fc", "\uc11c\uc6b8 \uacf5\ud56d",
        "\u30ab\u30bf\u30ab\u30ca", "\u4e2d\u6587 mixed English", "\u6e2f\u53e3\u3002",
        "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059", "\U00020bb7\u91ce\u5bb6", "\u6f22\u5b57\uff11\uff12\uff13",
        "\u536b\u661f\u56fe\u50cf\uff1a\u519c\u7530", "\u3131\u314f",
    ],
    "emoji": [
        "\U0001f332", "\U0001f3e0\U0001f3e0\U0001f3e0", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
        "\U0001f44d\U0001f3fd", "\U0001f3f3\ufe0f\u200d\U0001f308", "\U0001f1fa\U0001f1f8", "\u2764\ufe0f",
        "forest \U0001f332 river \U0001f30a", "1\ufe0f\u20e3", "\U0001f9d1\U0001f3ff\u200d\U0001f680",
        "\u2708\ufe0f airport", "\U0001f600\U0001f603\U0001f604\U0001f601", "\U0001f44b\U0001f3fb\U0001f44b\U0001f3ff",
    ],
    "accents": [
        "caf\u00e9", "cafe\u0301", "na\u00efve", "\u00c5ngstr\u00f6m", "S\u00e3o Paulo", "Z\u00fcrich", "\u00c6r\u00f8",
        "\u00f1and\u00fa", "\u0141\u00f3d\u017a", "Vi\u1ec7t Nam", "a\u0300\u0301\u0302",
        "Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032d\u0308\u0307l\u036e\u0312\u036bg\u030c\u0317\u035a\u036fo",
        "\u0130stanbul", "STRASSE stra\u00dfe", "\u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3", "\u0301",
        "\u0345a", "a\u0345", "K\u212a", "\u017f", "it'\u017f", "\u2126", "\u1d43", "\u210c",
        "\U0001d400\U0001d401\U0001d402", "\u24b6\u24d1", "\u00aa \u00ba", "\u01c5", "\u03a3\u0391\u03a3 \u03c3\u03b1\u03c2",
    ],
    "rtl": [
        "\u0645\u0637\u0627\u0631", "\u0646\u0647\u0631 \u0648\u063a\u0627\u0628\u0629", "\u05e9\u05d3\u05d4 \u05ea\u05e2\u05d5\u05e4\u05d4",
        "abc \u202edcba\u202c", "\u0645\u0631\u062d\u0628\u0627 world", "\u0641\u0627\u0631\u0633\u06cc \u06f1\u06f2\u06f3",
        "\u200fRTL mark", "\u0627\u0644\u0644\u0651\u064e\u0647",
    ],
    "long": [
        "airport " * 100, "a" * 500, "supercalifragilistic" * 20, "a " * 74, "a " * 75, "a " * 76, "a " * 77,
        "\u68ee\u6797" * 60, "\U0001f332" * 60, "a satellite photo of " + "dense residential area, " * 20 + ".",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
        "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip "
        "ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore.",
        "a " * 74 + "<end_of_text>", "a " * 80 + "<|endoftext|>", "!" * 300, "1" * 200, "&amp;" * 100,
    ],
    "special": [
        "<|endoftext|>", "<|startoftext|>", "<end_of_text>", "<start_of_text>", "airport<|endoftext|>",
        "a <|endoftext|> b", "<|startoftext|>forest<|endoftext|>", "<END_OF_TEXT>", "<Start_Of_Text>",
        "x<end_of_text>y", "x.<end_of_text>", "'<end_of_text>", "<end_of_text><end_of_text>",
        "<<end_of_text>>", "<end_of_text >", "< end_of_text>", "<endoftext>", "<|endoftext|", "endoftext",
        "<s>", "</s>", "<unk>", "<pad>", "[CLS]", "<image>", "</w>", "word</w>", "<\u017ftart_of_text>",
        "<\ufb06art_of_text>", "a satellite photo of <|endoftext|>.", "a satellite photo of <end_of_text>.",
        "forest<start_of_text>river", "1<end_of_text>2", "it's<end_of_text>",
    ],
    "numbers": [
        "123", "3.14159", "1,000,000", "2024-01-01", "10km\u00b2", "\u00bd acre", "\u2460\u2461\u2462", "\u216b",
        "\u0663\u0664\u0665", "\u0967\u0968\u0969", "1e-5", "-42", "+7", "0x1F", "50%", "$100", "\u20ac20",
        "#1 spot", "10:30", "B-52", "A380", "Landsat-8", "Sentinel-2A", "2nd", "x\u00b2+y\u00b2",
    ],
    "punctuation": [
        "!!!", "...", "?!?!", "---", "((()))", "a...b", "***bold***", "@@@", "#hashtag", "~~~", "\\\\", "//",
        "\"quoted\"", "''", ":-)", "\u00af\\_(\u30c4)_/\u00af", "\u2026", "\u2014\u2014", ".,;:!?", "'s", "'S",
        "'ll've", "isn't", "o'clock", "'", "<>", "|", "_", "foo_bar_baz", "C++", "e-mail",
        "https://example.com/a?b=c&d=e", "user@example.com", "file.tif", "a/b\\c", "{}", "a satellite photo of {}.",
    ],
    "case": ["AIRPORT", "AirPort", "DENSE Residential AREA", "sEa LaKe", "\u00c9COLE", "\u0414\u041e\u0420\u041e\u0413\u0410"],
    "templates": (
        [TEMPLATES["satellite"][0].format(c) for c in RS_LABELS]
        + [t.format(c) for t in TEMPLATES["rs-ensemble"] for c in ("airport", "storage tanks", "tennis_court")]
        + [TEMPLATES["satellite"][0].format(c) for c in ("Tom &amp; Jerry", "caf\u00c3\u00a9", "\ufb01eld",
                                                         "\uff46\uff4f\uff52\uff45\uff53\uff54", "\u00a0river ")]
    ),
}

CASES = [(f"{cat}-{i}", s) for cat, strings in CORPUS.items() for i, s in enumerate(strings)]
assert len(CASES) >= 200, len(CASES)


def _open_clip_ids(texts: list[str], context_length: int = 77) -> np.ndarray:
    return open_clip.tokenize(texts, context_length=context_length).numpy()


def _old_style_tokenizer_json(new: Path, dest: Path) -> Path:
    """The file the exporter wrote before this fix: the same file with ``<|startoftext|>`` / ``<|endoftext|>``
    registered as added special tokens (HF ``tokenizers`` then parses them out of user text)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(new))
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tok.save(str(dest))
    return dest


@pytest.fixture(scope="module")
def tok_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cliptok")
    new = d / "tokenizer.json"
    write_clip_tokenizer(new)
    return {"new": new, "old": _old_style_tokenizer_json(new, d / "old-tokenizer.json")}


@pytest.fixture(scope="module")
def tok(tok_files) -> ClipTokenizer:
    return ClipTokenizer(tok_files["new"], 77)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    ids = _open_clip_ids([s for _, s in CASES])
    return {name: ids[i] for i, (name, _) in enumerate(CASES)}


@fidelity
@pytest.mark.parametrize("name,text", CASES, ids=[n for n, _ in CASES])
def test_ids_equal_open_clip(tok, reference, name, text):
    got = tok([text])
    assert got.dtype == np.int64 and got.shape == (1, 77)
    np.testing.assert_array_equal(got[0], reference[name], err_msg=repr(text))


@fidelity
@pytest.mark.parametrize("cat", list(CORPUS))
def test_old_style_tokenizer_json(tok_files, reference, cat):
    """Bundles exported before the fix (special tokens registered as added tokens) give the same ids."""
    old = ClipTokenizer(tok_files["old"], 77)
    names = [n for n, _ in CASES if n.startswith(f"{cat}-")]
    got = old(CORPUS[cat])
    np.testing.assert_array_equal(got, np.stack([reference[n] for n in names]))


@fidelity
def test_batch_equals_single_and_str_input(tok, reference):
    texts = [s for _, s in CASES]
    np.testing.assert_array_equal(tok(texts), np.stack([reference[n] for n, _ in CASES]))
    np.testing.assert_array_equal(tok("Tom &amp; Jerry"), _open_clip_ids(["Tom &amp; Jerry"]))
    assert tok([]).shape == (0, 77)


@fidelity
@pytest.mark.parametrize("context_length", [1, 2, 3, 5, 16, 76, 78, 100])
def test_context_lengths(tok_files, context_length):
    texts = ["", "a", "a b c", "a satellite photo of dense residential area.", "airport " * 100, "<end_of_text>",
             "a <|endoftext|> b", "\U0001f468\u200d\U0001f469\u200d\U0001f467"]
    got = ClipTokenizer(tok_files["new"], context_length)(texts)
    np.testing.assert_array_equal(got, _open_clip_ids(texts, context_length))


@fidelity
def test_random_unicode_strings(tok):
    """2000 seeded random strings: vocabulary words, any code point (surrogates too), a confusable alphabet."""
    rng = random.Random(7)
    words = ["forest", "river", "&amp;", "<end_of_text>", "<|endoftext|>", "it's", "caf\u00c3\u00a9", "\ufb01",
             "\U0001f332", "\u00a0", "\u6797", "12", "...", "'ll", "\u0345", "\u017f"]
    alphabet = "aAs\u017f'tT<>_|&;#x01 \u00e9\u00a0\u0345\ufb06\ufb01.,!?-\u200d\U0001f3fd"
    texts = []
    while len(texts) < 2000:
        k = rng.random()
        if k < 0.35:
            s = " ".join(rng.choice(words) for _ in range(rng.randint(0, 8)))
        elif k < 0.7:
            s = "".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(rng.randint(0, 20)))
        else:
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        texts.append(s)
    got, ref = tok(texts), _open_clip_ids(texts)
    bad = [texts[i] for i in np.nonzero((got != ref).any(axis=1))[0]]
    assert not bad, bad[:10]


@fidelity
def test_literal_special_tokens_follow_open_clip(tok):
    """``<|endoftext|>`` in a label is text (as in open_clip), never an end token mid-text; open_clip's own
    names ``<start_of_text>`` / ``<end_of_text>`` are special ids when a word starts there, as in open_clip."""
    ids = tok(["a <|endoftext|> b"])[0]
    assert list(ids[:3]) == [tok.sot_id, 320, 27] and tok.eot_id not in ids[1:8]
    ids = tok(["a <end_of_text> b"])[0]
    assert list(ids[:5]) == [tok.sot_id, 320, tok.eot_id, 321, tok.eot_id]


@fidelity
def test_exported_file_does_not_parse_special_tokens(tok_files):
    """Loaded with HF ``tokenizers`` directly, the new file does not turn ``<|endoftext|>`` into EOT mid-text."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tok_files["new"])).encode("a <|endoftext|> b").ids
    assert ids[0] == 49406 and ids[-1] == 49407 and 49407 not in ids[1:-1]
    old_ids = Tokenizer.from_file(str(tok_files["old"])).encode("a <|endoftext|> b").ids
    assert 49407 in old_ids[1:-1]  # the old file really is the buggy one


@fidelity
def test_bad_inputs_are_named(tok, tok_files, tmp_path):
    with pytest.raises(InputError, match="text 1"):
        tok(["ok", 3])
    with pytest.raises(InputError, match="context_length"):
        ClipTokenizer(tok_files["new"], 0)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(BundleError, match="tokenizer"):
        ClipTokenizer(bad)
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(bad))
    with pytest.raises(BundleError, match="not a CLIP BPE tokenizer"):
        ClipTokenizer(bad)


@fidelity
def test_runtime_tokenizer_does_not_import_torch(tok_files):
    code = ("import sys\n"
            "from rsvlm_edge.models.clip.tokenizer import ClipTokenizer\n"
            f"ids = ClipTokenizer({str(tok_files['new'])!r})(['Tom &amp; Jerry', 'caf\\u00c3\\u00a9'])\n"
            "assert ids.shape == (2, 77), ids.shape\n"
            "heavy = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
