"""The extract step's clean-up of resiliparse's output: lone separators between inline elements kept,
blank-looking lines and tab runs tidied, a page's repeated short lines (captions, credits) dropped once
seen — each with real resiliparse on HTML, and each checked to make the difference it is for."""

from __future__ import annotations

from collections import Counter

import pytest

from data_prep.config import ExtractConfig, GopherRepetitionConfig, load_prep_config
from data_prep.extract import Extractor, tidy_text
from data_prep.filters import gopher_repetition
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


def test_repeated_short_lines_are_dropped_after_their_first_time() -> None:
    titles = ["Mayor opens bridge", "Storm hits coast", "Court rules on tax", "Team wins final", "Museum reopens",
              "Rail strike ends", "New school built", "Harbour expands", "Election results", "Festival returns",
              "Library turns 100", "Farmers protest"]
    carousel = "".join(f"<div><p>Video Ad Feedback</p><p>{t}</p><p>Now playing</p><p>- Source: CNN</p></div>"
                       for t in titles)
    story = "".join(f"<p>{s}</p>" for s in STORY)
    long_repeat = ("<p>This long paragraph is repeated word for word, as spam pages repeat their content, and must "
                   "stay for the repetition rules to see.</p>")
    text = extract(page(story, carousel, long_repeat, long_repeat))
    lines = [line for line in text.split("\n") if line.strip()]
    assert lines.count("Video Ad Feedback") == 1 and lines.count("Now playing") == 1
    assert lines.count("- Source: CNN") == 1 and lines.count("Rail strike ends") == 1
    assert sum("repeated word for word" in line for line in lines) == 2  # over the word limit: kept twice
    every = extract(page(story, carousel), repeated_line_max_words=None)
    assert every.count("Video Ad Feedback") == 12
    # why: the carousel's repeats alone trip Gopher's duplicated-line rule on an otherwise good article
    rep = GopherRepetitionConfig()
    assert gopher_repetition(every, rep)[1] in ("dup_para_frac", "dup_line_frac")
    assert gopher_repetition(extract(page(story, carousel)), rep)[1] is None


def test_word_limit_counts_words() -> None:
    cfg = ExtractConfig(repeated_line_max_words=3)
    text = "one two three\nx\none two three\nfour five six seven\nfour five six seven"
    assert tidy_text(text, cfg) == "one two three\nx\nfour five six seven\nfour five six seven"


def test_config_keys() -> None:
    assert load_prep_config(overrides=["extract.repeated_line_max_words=null"]).extract.repeated_line_max_words is None
    with pytest.raises(DataError, match="repeated_line_max_words"):
        load_prep_config(overrides=["extract.repeated_line_max_words=0"])
