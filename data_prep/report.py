"""The table printed at the end of a run, built from ``manifest.json`` (so it can be reprinted later)."""

from __future__ import annotations

__all__ = ["format_report"]


def _row(label: str, value: object, note: str = "") -> str:
    v = f"{value:,}" if isinstance(value, int) else str(value)
    return f"  {label:<44} {v:>14}  {note}".rstrip()


#: Longest example URL shown in full; longer ones keep their start and end.
_URL_WIDTH = 72


def _example(by_rule: dict, rule: str) -> str:
    """``e.g. URL`` for a rule: its first dropped document in input order (none in older manifests)."""
    url = (by_rule.get(rule) or {}).get("example")
    if not url:
        return ""
    if len(url) > _URL_WIDTH:
        url = f"{url[: _URL_WIDTH - 21]}...{url[-18:]}"
    return f"e.g. {url}"


def format_report(manifest: dict, walls: dict[str, float] | None = None) -> str:
    st = manifest["stages"]
    rd, ex, dd, tk = st["read"], st["extract_and_filter"], st["dedup"], st["tokenize"]
    rejected = manifest.get("rejected") or {}
    by_rule = rejected.get("by_rule") or {}
    lines = [f"megadepth prep: {manifest['config_hash']}", ""]
    lines.append(_row("input files", rd["files"]))
    if rd.get("unread_files"):
        by_ext = (manifest.get("unread_inputs") or {}).get("by_extension") or {}
        kinds = ", ".join(f"{n} {e}" for e, n in list(by_ext.items())[:3])
        lines.append(_row("  files in input folders not read", rd["unread_files"], kinds))
    lines.append(_row("WARC records / rows read", rd["records"]))
    for k, v in rd["skipped"].items():
        kind, _, what = k.partition(":")
        lines.append(_row(f"  {'skipped' if kind == 'skip' else 'damaged, skipped'}: {what.replace('_', ' ')}", v))
    if rd["files_read_leniently"]:
        lines.append(_row("  files with damage (read leniently)", rd["files_read_leniently"]))
    lines.append(_row("documents in", ex["documents_in"]))
    for k, v in sorted(ex["dropped"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(_row(f"  dropped by {k}", v, _example(by_rule, k)))
    lines.append(_row("kept after filters", ex["documents_out"]))
    lines.append(_row("  exact duplicates removed", dd["exact_duplicates"], _example(by_rule, "dedup:exact")))
    lines.append(_row("  near duplicates removed (MinHash)", dd["near_duplicates"], _example(by_rule, "dedup:minhash")))
    lines.append(_row("documents written", tk["documents"]))
    pii = tk["pii_masked"]
    lines.append(_row("  e-mails / IPv4 masked", f"{pii['emails']:,} / {pii['ipv4']:,}"))
    lines.append(_row("tokens written (incl. EOS)", tk["tokens"], f"vocab {manifest['vocab_size']:,}, {manifest['dtype']}"))
    lines.append(_row("shards", len(manifest["shards"])))
    if rejected:
        text = ", with text" if rejected.get("text") else ""
        lines.append(_row("dropped documents listed", rejected["documents"], f"{rejected['parquet']}{text}"))
    lines += ["", f"  {'stage':<20} {'core-seconds':>13} {'throughput per core':>24} {'wall s':>9}"]
    w = walls or {}

    def fmt(x, unit):
        return f"{x:,.1f} {unit}" if x is not None else "-"

    rows = [
        ("extract + filter", ex["seconds"], fmt(ex["docs_per_s"], "docs/s"), w.get("extract")),
        ("dedup", dd["seconds"], fmt(dd["docs_per_s"], "docs/s"), (w.get("buckets") or 0) + (w.get("cluster") or 0) if w else None),
        ("tokenizer", st["tokenizer"]["seconds"], "trained" if st["tokenizer"]["trained"] else "given", w.get("tokenizer")),
        ("tokenize + write", tk["seconds"], fmt(tk["tokens_per_s"], "tokens/s"), w.get("tokenize")),
    ]
    for name, secs, thr, wall in rows:
        wall_s = f"{wall:9.1f}" if wall is not None else f"{'-':>9}"
        lines.append(f"  {name:<20} {secs:>13.1f} {thr:>24} {wall_s}")
    steps = ex.get("seconds_by_step") or {}
    if steps:
        total = sum(steps.values()) or 1.0
        parts = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(steps.items(), key=lambda kv: -kv[1]))
        lines.append(f"  extract time by step: {parts}")
    return "\n".join(lines)
