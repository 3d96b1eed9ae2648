"""The extract step's clean-up of resiliparse's output (lone separators between inline elements kept,
blank-looking lines and tab runs tidied) with real resiliparse on HTML, and the step before the rules that
drops the repeated short lines of a page failing a duplicated-line rule: each checked to make the
difference it is for, and to leave alone what it is not for."""

from __future__ import annotations

from collections import Counter

import pytest

from data_prep.config import (
    ExtractConfig,
    FineWebConfig,
    GopherRepetitionConfig,
    RepeatedLinesConfig,
    load_prep_config,
)
from data_prep.extract import Extractor, tidy_text
from data_prep.filters import build_filters, repeated_lines
from megadepth.common.errors import DataError

INTRO = ("<p>The first paragraph is long enough to be the main content of the page, with words and more words "
         "about the town and its history.</p>")
OUTRO = "<p>Another long paragraph follows here so that the main content detection keeps this block of text.</p>"
STORY = (
    "The council met on Tuesday evening to discuss the budget for the coming year, which has grown by a tenth.",
    "Residents asked why the swimming pool would close for the summer while repairs to its roof are made.",
    "A spokesperson said that the work could not wait, because water had been leaking into the hall since May.",
    "Several shop owners on the high street welcomed the plan to widen the pavements before the winter market.",
    "The mayor promised a public meeting in the library next month, where every question will be answered.",
)


def page(*blocks: str) -> str:
    return f"<html><body><article><h1>A town's mayors</h1>{INTRO}{''.join(blocks)}{OUTRO}</article></body></html>"


def extract(html: str, **cfg) -> str:
    text = Extractor(ExtractConfig(**cfg))(html, Counter())
    assert text is not None
    return text


@pytest.mark.parametrize(("html", "expected"), [
    ('He served <a href="/a">1979</a>–<a href="/b">1983</a> as mayor.', "He served 1979–1983 as mayor."),
    ('He served <a href="/a">1979</a> &ndash; <a href="/b">1983</a> as mayor.', "He served 1979 – 1983 as mayor."),
    ("Rivers <b>Elbe</b>—<i>Oder</i> • <b>Rhine</b>…", "Rivers Elbe—Oder • Rhine…"),
    ('Cities <a href="/p">Paris</a>·<a href="/l">London</a> and <a href="/r">Rome</a>.',
     "Cities Paris·London and Rome."),
])  # fmt: skip
def test_lone_separators_between_inline_elements_are_kept(html: str, expected: str) -> None:
    text = extract(page(f"<p>{html}</p>"))
    assert expected in text.split("\n")
    assert "\ufdd0" not in text  # the marker never reaches the output


def test_separator_marker_is_removed_even_when_the_page_holds_it() -> None:
    text = extract(page("<p>A noncharacter \ufdd0 in the page itself and more words here.</p>"))
    assert "\ufdd0" not in text and "A noncharacter  in the page itself and more words here." in text


def test_blank_looking_lines_and_tab_runs_are_tidied() -> None:
    html = page("<p>&nbsp;</p><p>First point of the story.</p><p>&nbsp;</p><p>\u200b</p><p>Second point.</p>",
                "<table><tr><td>Born</td><td>1950</td></tr><tr><td>Died</td><td>2020</td></tr></table>")
    tidy = extract(html)
    lines = tidy.split("\n")
    assert all(line == "" or line.strip() for line in lines)  # no line of spaces only
    assert "\n\n\n" not in tidy and "Born 1950" in lines and "\t" not in tidy
    raw = extract(html, tidy_whitespace=False)
    assert any(line and not line.strip() for line in raw.split("\n"))  # resiliparse's own output has them
    assert "\t" in raw


def judge(text: str, *overrides: str) -> tuple[str | None, str | None]:
    """The rules of ``prep run`` in their order: (the text that comes out or None, the first failing rule)."""
    for name, rule in build_filters(load_prep_config(overrides=list(overrides))):
        new, why = rule(text)
        if new is None:
            return None, f"{name}:{why}"
        text = new
    return text, None


def test_a_failing_page_keeps_each_short_line_once() -> None:
    titles = ["Mayor opens bridge", "Storm hits coast", "Court rules on tax", "Team wins final", "Museum reopens",
              "Rail strike ends", "New school built", "Harbour expands", "Election results", "Festival returns",
              "Library turns 100", "Farmers protest"]
    carousel = "".join(f"<div><p>Video Ad Feedback</p><p>{t}</p><p>Now playing</p><p>- Source: CNN</p></div>"
                       for t in titles)
    story = "".join(f"<p>{s}</p>" for s in STORY)
    text = extract(page(story, carousel))
    assert text.count("Video Ad Feedback") == 12  # extraction keeps the carousel
    # FineWeb's rules alone drop the article for the carousel's repeats ...
    assert judge(text, "repeated_lines.enabled=false")[1] in ("gopher_rep:dup_para_frac", "gopher_rep:dup_line_frac")
    # ... with the step, the repeats go and the article is judged on what remains
    out, why = judge(text)
    assert why is None and out is not None and all(s in out for s in STORY)
    rescued, _ = repeated_lines(text, RepeatedLinesConfig(), GopherRepetitionConfig(), FineWebConfig())
    lines = [line for line in rescued.split("\n") if line.strip()]
    assert lines.count("Video Ad Feedback") == 1 and lines.count("Now playing") == 1 and "Rail strike ends" in lines
    assert [line for line in text.split("\n") if line.strip() and line not in lines] == []  # only repeats went


def test_a_passing_page_keeps_every_line_and_long_repeats_still_fail() -> None:
    code = "\n".join([*STORY, "def f():", "    x = 1", "    return x", "def g():", "    x = 1", "    return x", "}",
                      "}", ">>> f()", ">>> f()", "else:", "else:"])
    assert judge(code) == judge(code, "repeated_lines.enabled=false")  # code lines are never touched
    assert repeated_lines(code, RepeatedLinesConfig(), GopherRepetitionConfig(), FineWebConfig()) == (code, None)
    short = "\n".join([*STORY, "OK", "OK"])  # passes the rules as it is: nothing to rescue
    assert judge(short, "c4.enabled=false") == (short, None)
    spam = "\n\n".join([*STORY, *[STORY[0]] * 6])  # a long paragraph repeated: over max_chars, kept, dropped
    assert judge(spam)[1] == judge(spam, "repeated_lines.enabled=false")[1] is not None


def test_short_line_is_counted_in_characters() -> None:
    cfg = RepeatedLinesConfig(max_chars=3)
    text = "abc\nx\nabc\nabcd\nabcd\n" + "\n".join(["abcd"] * 20)
    kept, why = repeated_lines(text, cfg, GopherRepetitionConfig(), None)
    assert why is None and kept.split("\n").count("abc") == 1 and kept.split("\n").count("abcd") == 22


def test_tidy_and_marking_run_inside_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page whose clean-up would not end is stopped by the per-page limit like a slow extraction."""
    import time

    import data_prep.extract as ex

    monkeypatch.setattr(ex, "tidy_text", lambda text, cfg: time.sleep(5) or text)
    stats: Counter = Counter()
    assert Extractor(ExtractConfig(time_limit_s=0.2))(page("<p>Some text here for the page.</p>"), stats) is None
    assert stats["drop:extract_timeout"] == 1


def test_inner_tabs_become_one_space_other_spacing_stays() -> None:
    assert tidy_text("Born\t\t1950\na  b\n\tindented", ExtractConfig()) == "Born 1950\na  b\n\tindented"
    assert tidy_text("x" + "\t" * 50 + "\ny", ExtractConfig()) == "x" + "\t" * 50 + "\ny"  # trailing: kept


def test_config_keys() -> None:
    assert load_prep_config(overrides=["repeated_lines.max_chars=20"]).repeated_lines.max_chars == 20
    with pytest.raises(DataError, match="max_chars"):
        load_prep_config(overrides=["repeated_lines.max_chars=0"])
