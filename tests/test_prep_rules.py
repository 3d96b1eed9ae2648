"""The pipeline's building blocks on hand-made and real text: quality rules (against a plain transcription
of datatrove's algorithms), language id on several languages, PII masking, MinHash, union-find, decoding."""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pytest

from data_prep.config import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    PrepConfig,
    load_prep_config,
)
from data_prep.corpus import language_text, prose_pages, prose_paragraphs
from data_prep.extract import decode_html
from data_prep.filters import c4_filter, fineweb_filter, gopher_quality, gopher_repetition, split_words
from data_prep.langid import LanguageIdentifier
from data_prep.minhash import MinHasher, exact_key, normalize_words, union_find_roots
from data_prep.pii import mask_pii
from megadepth.common.errors import DataError

GOOD = "\n\n".join(prose_pages()[3][1])  # five paragraphs of CPython's documentation prose


def test_good_prose_passes_every_rule() -> None:
    cfg = PrepConfig()
    assert gopher_repetition(GOOD, cfg.gopher_repetition) == (GOOD, None)
    assert gopher_quality(GOOD, cfg.gopher_quality) == (GOOD, None)
    text, why = c4_filter(GOOD, cfg.c4)
    assert why is None and text == "\n".join(p.strip() for p in GOOD.split("\n") if p.strip())
    assert fineweb_filter(text, cfg.fineweb) == (text, None)


# ------------------------------------------------------------------------------- Gopher repetition


def _rep(text: str, **kw) -> str | None:
    return gopher_repetition(text, GopherRepetitionConfig(**kw))[1]


def test_gopher_repetition_cases() -> None:
    lines = [s.strip() + "." for s in GOOD.replace("\n", " ").split(". ")[:10]]
    # 4 of 10 lines repeat an earlier line: dup_line_frac 0.4 > 0.3
    dup_lines = "\n".join(lines[:6] + lines[:4])
    assert _rep(dup_lines) == "dup_line_frac"
    assert _rep("\n".join(lines)) is None
    paras = [f"Paragraph {w}: " + " ".join(random.Random(w).sample(GOOD.split(), 30)) for w in "abcdef"]
    assert _rep("\n\n".join(paras + paras[:3])) == "dup_para_frac"
    # one long paragraph repeated: few paragraphs repeat (1 of 3) but most characters do
    long_para, short = " ".join(GOOD.split()[:150]), "A short closing note."
    assert _rep("\n\n".join([long_para, short, long_para]), dup_para_frac=0.5) == "dup_para_char_frac"
    # the same 2-gram over and over
    assert _rep("buy now " * 40 + GOOD[:300]) == "top_2_gram"
    # a repeated 5-word sequence spread through the text
    words = GOOD.split()[:200]
    spam = []
    for i in range(0, 200, 10):
        spam += words[i : i + 10] + "click here to read more".split()
    assert _rep(" ".join(spam), top_n_grams=()) == "duplicated_5_n_grams"
    assert _rep(" ".join(words), top_n_grams=()) is None


def _datatrove_repetition(text: str, cfg: GopherRepetitionConfig) -> str | None:
    """A plain transcription of datatrove's GopherRepetitionFilter, on our word splitter."""

    def find_duplicates(x):
        seen, dup, chars = set(), 0, 0
        for e in x:
            if e in seen:
                dup += 1
                chars += len(e)
            else:
                seen.add(e)
        return dup, chars

    paragraphs = re.split(r"\n{2,}", text.strip())
    d, c = find_duplicates(paragraphs)
    if d / len(paragraphs) > cfg.dup_para_frac:
        return "dup_para_frac"
    if c / len(text) > cfg.dup_para_char_frac:
        return "dup_para_char_frac"
    lines = re.split(r"\n+", text)
    d, c = find_duplicates(lines)
    if d / len(lines) > cfg.dup_line_frac:
        return "dup_line_frac"
    if c / len(text) > cfg.dup_line_char_frac:
        return "dup_line_char_frac"
    words = split_words(text)
    for n, frac in cfg.top_n_grams:
        grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        if not grams:
            continue
        top, count = Counter(grams).most_common(1)[0]
        if len(top) * count / len(text) > frac:
            return f"top_{n}_gram"
    for n, frac in cfg.dup_n_grams:
        seen, rep, i = set(), 0, 0
        while i < len(words) - n + 1:
            g = "\x00".join(words[i : i + n])  # a separator that no word contains
            if g in seen:
                rep += len(g) - (n - 1)
                i += n
            else:
                seen.add(g)
                i += 1
        if rep / len(text) > frac:
            return f"duplicated_{n}_n_grams"
    return None


def test_gopher_repetition_matches_datatrove_algorithm() -> None:
    """Our vectorised n-gram statistics agree with the string version on real and on spammy text,
    including thresholds tightened so that each rule decides some of the cases."""
    rng = random.Random(0)
    paras = prose_paragraphs()
    texts = ["\n\n".join(ps) for _, ps in prose_pages()]
    for _ in range(40):  # repetition of sentences, lines and phrases in varying amounts
        base = rng.sample(paras, 3)
        sentences = " ".join(base).split(". ")
        k = rng.randint(1, 6)
        texts.append(". ".join(sentences + rng.choices(sentences, k=k)))
        texts.append("\n".join(base + rng.choices(base, k=rng.randint(0, 2))))
    configs = [
        GopherRepetitionConfig(),
        GopherRepetitionConfig(
            top_n_grams=((2, 0.02), (3, 0.015), (4, 0.01)),
            dup_n_grams=((5, 0.05), (6, 0.04), (7, 0.03), (8, 0.02), (9, 0.01), (10, 0.005)),
        ),
        GopherRepetitionConfig(top_n_grams=(), dup_n_grams=((7, 0.02), (5, 0.03), (10, 0.01))),
    ]
    seen: Counter = Counter()
    for cfg in configs:
        for t in texts:
            ours = gopher_repetition(t, cfg)[1]
            assert ours == _datatrove_repetition(t, cfg), t[:200]
            seen[ours] += 1
    assert seen[None] > 20 and len(seen) >= 5, seen  # both outcomes, several different rules


# ---------------------------------------------------------------------------------- Gopher quality


def _qual(text: str) -> str | None:
    return gopher_quality(text, GopherQualityConfig())[1]


def test_gopher_quality_cases() -> None:
    assert _qual(GOOD) is None
    assert _qual(" ".join(GOOD.split()[:40])) == "short_doc"
    assert _qual(" ".join(["a", "of", "to", "be"] * 30)) == "below_avg_word_length"
    assert _qual(" ".join(["internationalization", "the", "counterrevolutionaries"] * 30)) == "above_avg_word_length"
    assert _qual(GOOD + " #tag" * 200) == "too_many_hashes"
    assert _qual(GOOD + " and so on..." * 200) == "too_many_ellipsis"
    bullets = "\n".join(f"- {s}" for s in GOOD.replace("\n", " ").split(". ")[:20])
    assert _qual(bullets) == "too_many_bullets"
    assert _qual("\n".join(s + "..." for s in GOOD.replace("\n", " ").split(". ")[:20])) == "too_many_end_ellipsis"
    numbers = GOOD + " " + " ".join(str(i) for i in range(400))
    assert _qual(numbers) == "below_alpha_threshold"
    no_stop = " ".join(w for w in GOOD.split() if w.lower() not in {"the", "be", "to", "of", "and", "that", "have", "with"})
    assert _qual(no_stop) == "not_enough_stop_words"


def test_word_splitter() -> None:
    """The expected lists are spaCy 3.8's English tokenizer's (datatrove's word split), token for token,
    except "don't": spaCy gives "Do" "n't", the regex "Don" "'t" (the same count of words with letters)."""
    assert split_words("Don't stop: 3.14 U.S. e-mail...") == [
        "Don", "'t", "stop", ":", "3.14", "U.S.", "e", "-", "mail", "...",
    ]  # fmt: skip
    assert split_words(
        "See https://example.com/a?b=1. Mail a.b@ex.org or @jane -- 1,000 at 10:30 on 1979–1983 (a.m. J. Smith)"
    ) == [
        "See", "https://example.com/a?b=1", ".", "Mail", "a.b@ex.org", "or", "@jane", "--", "1,000", "at",
        "10:30", "on", "1979–1983", "(", "a.m.", "J.", "Smith", ")",
    ]  # fmt: skip
    assert split_words("It's the cat's toy; they'll go") == [
        "It", "'s", "the", "cat", "'s", "toy", ";", "they", "'ll", "go",
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------- C4


def test_c4_line_rules() -> None:
    cfg = C4Config()
    lines = GOOD.split(". ")
    text = "\n".join(
        [
            "Menu",  # too few words: line dropped
            lines[0] + "[1][edit].",  # citation markers removed
            "Please enable JavaScript to view the comments.",  # javascript: line dropped
            "This site uses cookies to improve your experience.",  # policy: line dropped
            *[line + "." for line in lines[1:8]],
        ]
    )
    out, why = c4_filter(text, cfg)
    assert why is None
    kept = out.split("\n")
    assert kept[0] == lines[0] + "."
    assert "Menu" not in kept and not any("JavaScript" in k or "cookies" in k for k in kept)
    assert c4_filter(text + "\nLorem ipsum dolor sit amet, consectetur.", cfg) == (None, "lorem_ipsum")
    assert c4_filter(text + "\nfunction f() { return 1; } is code.", cfg) == (None, "curly_bracket")
    assert c4_filter("One sentence only here. And a second.", cfg) == (None, "too_few_sentences")
    # FineWeb switches the terminal-punctuation rule off; C4's original keeps only punctuated lines
    no_punct = "\n".join(line for line in lines[1:9])
    assert c4_filter(no_punct, cfg)[1] is None
    assert c4_filter(no_punct, C4Config(filter_no_terminal_punct=True))[1] == "too_few_sentences"


# ------------------------------------------------------------------------------------- FineWeb


def test_fineweb_rules() -> None:
    cfg = FineWebConfig()
    prose = "\n".join(s.strip() + "." for s in GOOD.split(". ")[:12])
    assert fineweb_filter(prose, cfg) == (prose, None)
    headings = "\n".join(f"Section {i} of the long reference manual" for i in range(20))
    assert fineweb_filter(headings, cfg) == (None, "line_punct_ratio")
    short = "\n".join([f"Item {i}." for i in range(30)] + [prose])
    assert fineweb_filter(short, cfg) == (None, "short_line_ratio")
    repeated = prose + "\n" + "\n".join(prose.split("\n")[:2])
    assert fineweb_filter(repeated, cfg) == (None, "char_dup_ratio")
    listy = "\n".join(f"{w} {i}." for i, w in enumerate(GOOD.split()[:60]))
    assert fineweb_filter(listy, FineWebConfig(short_line_thr=None)) == (None, "list_ratio")


# -------------------------------------------------------------------------------- language id


@pytest.mark.parametrize(
    ("language", "code"),
    [("French", "fr"), ("German", "de"), ("Spanish", "es"), ("Russian", "ru"), ("Polish", "pl"),
     ("Greek", "el"), ("Arabic", "ar"), ("Korean", "ko"), ("Portuguese", "pt"), ("Italian", "it")],
)  # fmt: skip
def test_language_id_on_several_languages(language: str, code: str) -> None:
    lid = LanguageIdentifier(LanguageConfig(languages=None))
    lang, score = lid.identify(language_text(language, 120))
    assert lang == code and score > 0.65
    en = LanguageIdentifier(LanguageConfig())  # FineWeb's setting: English above 0.65
    assert not en.keep(*en.identify(language_text(language, 120)))
    assert en.keep(*en.identify(GOOD))


def test_language_id_model_is_offline_and_pluggable(tmp_path) -> None:
    from data_prep.langid import default_model_path

    assert default_model_path().name == "lid.176.ftz"
    lid = LanguageIdentifier(LanguageConfig(languages=("fr", "de"), model=str(default_model_path())))
    assert lid.keep(*lid.identify(language_text("German", 80)))
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.bin"):
        LanguageIdentifier(LanguageConfig(model=str(tmp_path / "junk.bin")))
    with pytest.raises(DataError, match="does not exist"):
        LanguageIdentifier(LanguageConfig(model=str(tmp_path / "none.ftz")))


def test_language_settings_are_checked_and_hashed_when_planning(tmp_path, monkeypatch) -> None:
    """Codes the model does not know fail before any work (not after the extract stage, as "nothing
    survived"); a model file is planned by absolute path and its content (a cluster task runs from
    another directory; another file at the same path must not share the old outputs)."""
    import shutil

    from data_prep.corpus import warc_response, write_warc
    from data_prep.langid import default_model_path
    from data_prep.pipeline import plan_run

    src = write_warc(tmp_path / "in.warc.gz", warc_response("https://a.example/", b"<p>x</p>"))
    with pytest.raises(DataError, match=r"language.languages: 'eng' is not a language of the model.*en"):
        plan_run([src], tmp_path / "o1", overrides=["language.languages=[eng]"])
    with pytest.raises(DataError, match=r"'EN' is not a language of the model.*did you mean en\?"):
        plan_run([src], tmp_path / "o1", overrides=["language.languages=[EN]"])
    with pytest.raises(DataError, match="language.model .*nope.ftz: no such file"):
        plan_run([src], tmp_path / "o2", overrides=["language.model=nope.ftz"])
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    (tmp_path / "lm").mkdir()
    shutil.copy(default_model_path(), tmp_path / "lm" / "lid.ftz")
    monkeypatch.chdir(tmp_path)
    plan = plan_run([src], tmp_path / "o3", overrides=["language.model=lm/lid.ftz"])
    assert plan.config.language.model == str(tmp_path / "lm" / "lid.ftz")
    moved = tmp_path / "elsewhere.ftz"
    shutil.copy(default_model_path(), moved)
    same = plan_run([src], tmp_path / "o3", overrides=[f"language.model={moved}"])
    assert same.hashes["extract"] == plan.hashes["extract"]  # the same model, moved
    (tmp_path / "lm" / "lid.ftz").write_bytes(default_model_path().read_bytes() + b"\0")
    other = plan_run([src], tmp_path / "o3", overrides=["language.model=lm/lid.ftz"])
    assert other.hashes["extract"] != plan.hashes["extract"]  # another file at the same path


# ------------------------------------------------------------------------------------------- PII


def test_pii_masking() -> None:
    text = (
        "Write to jane.doe+news@mail.example.org or admin@intranet.company.com. Server 8.8.8.8 and "
        "203.0.113.77 answered; 10.0.0.1, 192.168.1.20 and 127.0.0.1 are private. Release 1.2.3.4 "
        "looks like a public address and is masked too; 256.1.1.1 is not an address."
    )
    out, n_email, n_ip = mask_pii(text)
    assert n_email == 2 and n_ip == 2  # 203.0.113.77 is a documentation range, not public
    assert "jane.doe" not in out and "admin@intranet" not in out
    assert "8.8.8.8" not in out and "1.2.3.4" not in out
    for kept in ("10.0.0.1", "192.168.1.20", "127.0.0.1", "256.1.1.1", "203.0.113.77"):
        assert kept in out
    assert mask_pii(text) == (out, n_email, n_ip)  # deterministic
    assert mask_pii(GOOD) == (GOOD, 0, 0)
    assert mask_pii(text, emails=False, ips=False)[0] == text


# ---------------------------------------------------------------------------------------- dedup


def test_minhash_collides_near_duplicates_only() -> None:
    mh = MinHasher()  # FineWeb: 5-grams, 14 bands x 8 rows
    base = normalize_words(GOOD)
    near = normalize_words(GOOD.replace("the", "a", 2) + " Updated in 2024.")
    other = normalize_words("\n\n".join(prose_pages()[7][1]))
    kb, kn, ko = mh.keys(base), mh.keys(near), mh.keys(other)
    assert kb.dtype == np.uint64 and kb.shape == (14,)
    assert (kb == kn).any()  # near duplicates share a band
    assert not (kb == ko).any()
    assert np.array_equal(mh.keys(base), MinHasher().keys(base))  # stable across instances / processes
    assert not np.array_equal(MinHasher(seed=2).keys(base), kb)
    assert exact_key(normalize_words("Hello,   World! 2024")) == exact_key(normalize_words("hello world 1999"))
    assert exact_key(normalize_words("hello world")) != exact_key(normalize_words("hello word"))


def test_union_find_roots_are_component_minima() -> None:
    rng = np.random.default_rng(0)
    n = 300
    u = rng.integers(0, n, 200)
    v = rng.integers(0, n, 200)
    roots = union_find_roots(n, u, v)
    # reference: plain union-find
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(u.tolist(), v.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for x in range(n):
        comps.setdefault(find(x), []).append(x)
    expect = np.empty(n, dtype=np.int64)
    for members in comps.values():
        expect[members] = min(members)
    assert np.array_equal(roots, expect)
    assert np.array_equal(union_find_roots(4, np.array([], int), np.array([], int)), np.arange(4))


# ------------------------------------------------------------------------------------- decoding


def test_decode_odd_encodings() -> None:
    text = "Café, naïve façade — 日本語のテキスト"
    assert decode_html(text.encode("utf-8"), None) == text
    assert decode_html(text.encode("utf-16"), None) == text  # BOM
    sjis = "<html><head><meta charset='shift_jis'></head><body>日本語のテキストです。</body></html>"
    assert decode_html(sjis.encode("shift_jis"), None) == sjis  # meta charset
    cyr = "<html><body>Привет, мир! Это проверка кодировки.</body></html>"
    assert decode_html(cyr.encode("cp1251"), "windows-1251") == cyr  # HTTP charset
    assert decode_html(cyr.encode("cp1251"), "no-such-charset") != ""  # detector, never an error
    stats: Counter = Counter()
    assert "\ufffd" in decode_html(b"<p>bad \xff\xfe bytes</p>", "utf-8", stats) or stats["read:non_utf8"] == 1


def test_config_keys_and_values() -> None:
    cfg = load_prep_config(overrides=["dedup.bands=20", "language.languages=[en,fr]", "c4.enabled=false"])
    assert cfg.dedup.bands == 20 and cfg.language.languages == ("en", "fr") and not cfg.c4.enabled
    with pytest.raises(DataError, match="did you mean 'dedup.bands'"):
        load_prep_config(overrides=["dedup.band=20"])
    with pytest.raises(DataError, match="did you mean 'language.threshold'"):
        load_prep_config(overrides=["threshold=0.5"])
    with pytest.raises(DataError, match="language.threshold"):
        load_prep_config(overrides=["language.threshold=2"])
    assert load_prep_config(overrides=["language.languages=null"]).language.languages is None
