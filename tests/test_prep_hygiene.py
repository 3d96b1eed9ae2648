"""Data hygiene (issue 18): credentials in an input URL read a server that wants them but are written
nowhere; files in an input folder that are not read are counted and listed; ``prep text`` caps the size
of a document as ``prep run`` does.

The credential tests serve WARC files from HTTP servers on 127.0.0.1 that require Basic auth (no
network), and scan every file a run writes for the secret.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from data_prep import stages
from data_prep.config import ReadConfig
from data_prep.corpus import article_html, prose_pages, prose_paragraphs, warc_response, warcinfo, write_warc
from data_prep.credentials import ENV, origin, redact, remember, split_credentials
from data_prep.hygiene import DEFAULT_MAX_DOC_BYTES, UNREAD_LISTED, unread_summary, unread_warning
from data_prep.inputs import InputFile, resolve, resolve_inputs
from data_prep.pipeline import plan_run, run_plan
from data_prep.plan import load_plan
from data_prep.records import read_documents
from data_prep.report import format_report
from data_prep.runner import run_task, write_slurm_scripts
from data_prep.text_shards import add_cli, build_text_shards
from megadepth.common.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "commoncrawl"
FAST = ["language.enabled=false", "gopher_repetition.enabled=false", "gopher_quality.enabled=false",
        "c4.enabled=false", "fineweb.enabled=false", "tokenizer.vocab_size=500"]
USER = "u7xq"
PASSWORD = "pw-Zq8/s@kret"  # a '/' and an '@': percent-encoded in a URL, decoded for the server
SECRET_PART = b"Zq8"  # found in the password whether encoded or not
TOKEN = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@dataclass
class _Server:
    url: str  # http://127.0.0.1:PORT/
    seen: list[str | None] = field(default_factory=list)  # the Authorization header of every request

    @property
    def authed(self) -> str:
        return self.url.replace("http://", f"http://{USER}:{quote(PASSWORD, safe='')}@")

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")


def _handler(root: Path, token: str | None, seen: list, redirect_to: list[str]) -> type:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

        def _gate(self) -> bool:
            given = self.headers.get("Authorization")
            seen.append(given)
            if token is not None and given != token:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="crawl"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            if redirect_to and self.path.startswith("/moved/"):  # to another origin
                self.send_response(302)
                self.send_header("Location", redirect_to[0] + self.path[len("/moved/"):])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            return True

        def do_GET(self) -> None:
            if self._gate():
                super().do_GET()

        def do_HEAD(self) -> None:
            if self._gate():
                super().do_HEAD()

    return Handler


def _serve(root: Path, token: str | None, redirect_to: list[str]) -> tuple[_Server, http.server.ThreadingHTTPServer]:
    srv = _Server("")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, token, srv.seen, redirect_to))
    srv.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return srv, httpd


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[_Server, _Server]]:
    """(a server that wants USER:PASSWORD, an open one on another port that /moved/ on the first
    redirects to); both serve crawl/good.warc.gz (6 pages), crawl/whirlwind.warc.wet.gz (1 page) and
    crawl/damaged.warc (3 pages and a broken record: read again by the lenient parser, which opens the
    URL itself)."""
    root = tmp_path_factory.mktemp("www")
    pages = prose_pages()
    records = [warcinfo("good.warc.gz")]
    for i in range(6):
        records += warc_response(f"https://site.example/{i}", article_html(*pages[i]).encode())
    write_warc(root / "crawl" / "good.warc.gz", records)
    bad = [r for i in range(6, 9) for r in warc_response(f"https://other.example/{i}", article_html(*pages[i]).encode())]
    bad.insert(3, b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 99999\r\n\r\ngarbage")
    write_warc(root / "crawl" / "damaged.warc", bad, "none")
    shutil.copy(FIXTURES / "whirlwind.warc.wet.gz", root / "crawl")
    redirect_to: list[str] = []
    locked, locked_httpd = _serve(root, TOKEN, redirect_to)
    open_, open_httpd = _serve(root, None, [])
    redirect_to.append(open_.url)
    try:
        yield locked, open_
    finally:
        for httpd in (locked_httpd, open_httpd):
            httpd.shutdown()
            httpd.server_close()


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch, tmp_path: Path) -> None:
    """No credentials but the test's own: none in the environment, no netrc (the real ~/.netrc is not
    read); monkeypatch restores the variable the code under test sets."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    stages._CACHE.clear()


def _assert_no_secret(root: Path) -> None:
    """No file under ``root`` holds the password (encoded or not) or the Authorization header."""
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        assert SECRET_PART not in data and TOKEN.split()[1].encode() not in data and USER.encode() not in data, p


# ------------------------------------------------------------------------------------- credentials


def test_url_credentials_read_the_server_and_are_written_nowhere(servers, tmp_path: Path, capsys) -> None:
    """A paths file against a --prefix with user:password and a URL input with them: the run (two spawned
    workers) reads both, and plan.json, manifest.json, the documents' source column, the work files, the
    Slurm scripts and the warning hold the URL without them. The plan hash does not depend on them."""
    locked, _ = servers
    paths = tmp_path / "warc.paths.gz"
    paths.write_bytes(gzip.compress(b"crawl/good.warc.gz\ncrawl/damaged.warc\n"))
    out = tmp_path / "out"
    inputs = [str(paths), locked.authed + "crawl/whirlwind.warc.wet.gz"]
    plan = plan_run(inputs, out, overrides=FAST, extra={"read": {"paths_prefix": locked.authed}})
    err = capsys.readouterr().err
    assert f"user:password in the URL for {locked.origin} is used by this command only" in err
    assert SECRET_PART.decode() not in err and USER not in err
    clean = [locked.url + f"crawl/{n}" for n in ("damaged.warc", "good.warc.gz", "whirlwind.warc.wet.gz")]
    assert [f.path for f in plan.inputs] == clean
    assert plan.config.read.paths_prefix == locked.url

    manifest, _ = run_plan(plan, workers=2, progress=False)
    read = manifest["stages"]["read"]
    assert read["files_read_leniently"] == 1 and read["documents_out"] >= 6 + 1 + 2
    sources = {s for part in (out / "documents").glob("*.parquet") for s in pq.read_table(part)["source"].to_pylist()}
    assert sources == set(clean)
    write_slurm_scripts(plan, 2)
    _assert_no_secret(out)
    assert capsys.readouterr().err.count(SECRET_PART.decode()) == 0

    # the same inputs with the credentials in the environment instead: the same plan
    env_only = plan_run([str(paths), locked.url + "crawl/whirlwind.warc.wet.gz"], tmp_path / "out2",
                        overrides=FAST, extra={"read": {"paths_prefix": locked.url}})
    assert os.environ[ENV]  # set by the first plan_run (this process and its workers), restored after the test
    assert env_only.config_hash == plan.config_hash


def test_a_later_task_without_credentials_says_where_to_put_them(servers, tmp_path: Path, monkeypatch) -> None:
    """plan.json made with credentials in the URL, then a task in a fresh environment (a Slurm task):
    refused with HTTP 401 and the two places to put credentials, no done marker; it then reads with
    ~/.netrc (via $NETRC), and with $MEGADEPTH_HTTP_CREDENTIALS."""
    locked, _ = servers
    out = tmp_path / "out"
    urls = [locked.authed + "crawl/good.warc.gz", locked.authed + "crawl/whirlwind.warc.wet.gz"]
    plan = plan_run(urls, out, overrides=FAST)
    plan.save()
    monkeypatch.delenv(ENV)  # what a Slurm task started later has
    with pytest.raises(DataError) as refused:
        run_task(out, "extract", 0, 2)
    msg = str(refused.value)
    assert "HTTP 401" in msg and "~/.netrc" in msg and ENV in msg and "machine 127.0.0.1" in msg, msg
    assert SECRET_PART.decode() not in msg
    assert not plan.is_done("extract", "000000")

    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    run_task(out, "extract", 0, 2)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv(ENV, locked.authed.rstrip("/"))
    run_task(out, "extract", 1, 2)
    assert plan.is_done("extract", "000000") and plan.is_done("extract", "000001")
    _assert_no_secret(out)


def test_wrong_or_missing_credentials_fail_before_work_without_the_secret(servers, tmp_path: Path,
                                                                          monkeypatch) -> None:
    locked, _ = servers
    wrong = locked.url.replace("http://", f"http://{USER}:not-{SECRET_PART.decode()}@") + "crawl/good.warc.gz"
    with pytest.raises(DataError) as refused:
        plan_run([wrong], tmp_path / "o", overrides=FAST)
    msg = str(refused.value)
    assert "HTTP 401: the server refused the credentials for user" in msg and SECRET_PART.decode() not in msg
    monkeypatch.delenv(ENV)  # a new command: the process that was given the wrong ones has ended
    with pytest.raises(DataError, match="the server wants credentials and none were found for 127.0.0.1"):
        plan_run([locked.url + "crawl/good.warc.gz"], tmp_path / "o", overrides=FAST)
    assert not (tmp_path / "o").exists()


def test_credentials_are_not_sent_to_another_origin_on_redirect(servers, monkeypatch) -> None:
    """The Authorization header goes with each request, and aiohttp drops it when a redirect leaves the
    origin: the open server on another port never sees it."""
    locked, open_ = servers
    monkeypatch.setenv(ENV, locked.authed.rstrip("/"))
    open_.seen.clear()
    docs = list(read_documents(InputFile(locked.url + "moved/crawl/good.warc.gz", "warc"), ReadConfig(), Counter()))
    assert len(docs) == 6
    assert open_.seen and all(h is None for h in open_.seen)


def test_credential_helpers(monkeypatch, tmp_path: Path) -> None:
    url = f"HTTPS://{USER}:{quote(PASSWORD, safe='')}@Data.Example.org:443/crawl/x.warc.gz?a=b@c"
    clean, cred = split_credentials(url)
    assert clean == "HTTPS://Data.Example.org:443/crawl/x.warc.gz?a=b@c" and cred is not None
    assert (cred.user, cred.password) == (USER, PASSWORD) and PASSWORD not in repr(cred)
    assert origin(url) == "https://data.example.org"
    for untouched in ("abfs://container@account.dfs.core.windows.net/x.warc.gz", "https://h/x@y.warc.gz"):
        assert split_credentials(untouched) == (untouched, None) and redact(untouched) == untouched
    text = f"FileNotFoundError: {url} and https://tok3n@h/x and ftp://a:b@h/x"
    assert redact(text) == ("FileNotFoundError: HTTPS://***@Data.Example.org:443/crawl/x.warc.gz?a=b@c and "
                            "https://***@h/x and ftp://***@h/x")

    # a password with an unencoded '#', '/' or '?' makes an invalid URL; the message refusing it masks it
    for raw in ("http://alice:se#cretHASH@127.0.0.1:8765/crawl/a.warc.gz", "https://bob:pa/ss?w@h.example/x"):
        masked = redact(f"error: {raw}: unsupported protocol ({raw}: not a valid URL (bad port))")
        assert "cret" not in masked and "pa/ss" not in masked and masked.count("://***@") == 2, masked
    with pytest.raises(DataError, match="must be percent-encoded") as refused:
        plan_run(["http://alice:se#cretHASH@127.0.0.1:8765/crawl/a.warc.gz"], tmp_path / "out")
    assert "cret" not in str(refused.value)

    with pytest.raises(DataError, match="remote inputs must be WARC/WET/ARC") as echoed:
        resolve_inputs([url])  # upper-case HTTPS is a remote input too; its query makes it no WARC name
    assert "Zq8" not in str(echoed.value) and "https://Data.Example.org:443/crawl/x.warc.gz" in str(echoed.value)

    url = f"https://{USER}:{quote(PASSWORD, safe='')}@data.example.org/crawl/x.warc.gz"
    assert remember(url) == ("https://data.example.org/crawl/x.warc.gz", True)  # kept in the environment
    assert split_credentials(os.environ[ENV] + "/")[1].password == PASSWORD
    with pytest.raises(DataError, match="two different user:password pairs") as two:
        resolve_inputs([url, url.replace("Zq8", "Zq9").replace("x.warc", "y.warc")])
    assert "Zq" not in str(two.value)
    monkeypatch.setenv(ENV, f"https://ok:fine@a.example  https://{PASSWORD}.example/x.warc.gz")
    with pytest.raises(DataError, match=rf"\${ENV}: entry 2 is not an http\(s\) URL with credentials") as bad:
        resolve_inputs([url])
    assert "Zq8" not in str(bad.value)


# ------------------------------------------------------------------------------------ unread files


def _crawl_folder(root: Path) -> list[Path]:
    """A folder with one WARC and the files a crawl folder also holds; returns those that are not read."""
    pages = prose_pages()
    responses = [r for i, page in enumerate(pages[:8]) for r in warc_response(f"https://a.example/{i}", article_html(*page).encode())]
    write_warc(root / "a.warc.gz", [warcinfo(), *responses])  # enough text for the run's 500-piece tokenizer
    unread = [root / "README.md", root / "paper.PDF", root / "page.html", root / "notes.txt",
              root / "sub" / "CC-x.warc.wat.gz", root / "sub" / "warc.paths.gz"]
    for p in unread:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not read\n")
    (root / ".DS_Store").write_bytes(b"hidden")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("hidden folder")
    old = root / "old-out"  # an earlier prep output: its files are outputs, not unread inputs
    old.mkdir()
    (old / "plan.json").write_text(json.dumps({"format": "megadepth-prep-plan"}))
    (old / "junk.bin").write_bytes(b"x")
    return sorted(p.resolve() for p in unread)


def test_unread_files_are_counted_listed_and_warned_about(tmp_path: Path, capsys) -> None:
    crawl = tmp_path / "crawl"
    unread = _crawl_folder(crawl)
    resolved = resolve([crawl])
    assert [Path(f.path).name for f in resolved.files] == ["a.warc.gz"]
    assert resolved.unread == [str(p) for p in unread]
    top = sorted(str(p) for p in unread if p.parent == crawl.resolve())
    assert resolve([str(crawl / "*")]).unread == top  # a glob's matches too

    out = tmp_path / "out"
    plan = plan_run([str(crawl)], out, overrides=FAST)
    err = capsys.readouterr().err
    assert "warning: 6 file(s) in the input folders are not read (not WARC/WET/ARC, Parquet, JSONL or Arrow)" in err
    assert str(out.resolve() / "plan.json") in err
    plan.save()
    saved = json.loads((out / "plan.json").read_text())["unread_inputs"]
    assert saved["count"] == 6 and saved["paths"] == [str(p) for p in unread]
    assert saved["by_extension"] == {".html": 1, ".md": 1, ".paths.gz": 1, ".pdf": 1, ".txt": 1, ".wat.gz": 1}
    assert load_plan(out).unread == saved
    manifest, _ = run_plan(plan, workers=1, progress=False)
    assert manifest["unread_inputs"] == saved
    assert manifest["stages"]["read"]["unread_files"] == 6
    assert "files in input folders not read" in format_report(manifest)
    capsys.readouterr()
    # the files not read change nothing that is written: the same plan hash as the WARC alone
    assert plan_run([str(crawl / "a.warc.gz")], tmp_path / "o2", overrides=FAST).config_hash == plan.config_hash
    assert capsys.readouterr().err == ""


def test_unread_list_is_capped_and_counted() -> None:
    summary = unread_summary([f"/c/{i:04d}.pdf" for i in range(UNREAD_LISTED + 5)] + ["/c/a.html"] * 2)
    assert summary["count"] == UNREAD_LISTED + 6 and len(summary["paths"]) == UNREAD_LISTED
    assert summary["by_extension"] == {".pdf": UNREAD_LISTED + 5, ".html": 1}
    line = unread_warning(summary, "X", "P")
    assert line is not None and f"the first {UNREAD_LISTED} listed in P" in line
    assert unread_warning(unread_summary([]), "X", "P") is None


# ------------------------------------------------------------------------------- prep text size cap


def test_prep_text_skips_documents_over_the_cap_and_lists_unread_files(tmp_path: Path, capsys) -> None:
    """The cap counts UTF-8 bytes (700 three-byte characters are over 2,000 bytes though under 2,000
    characters), applies to .txt and JSONL alike and to the tokenizer's training text too."""
    inp = tmp_path / "in"
    inp.mkdir()
    paragraphs = [p for p in prose_paragraphs() if len(p.encode()) < 1500][:150]
    rare = "\ua66e" * 700  # 2,100 bytes; the character appears nowhere else
    lines = [*paragraphs[:100], rare, "x" * 2000]
    (inp / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    (inp / "b.txt").write_text("\n\n".join(paragraphs[100:]))
    (inp / "c.txt").write_text("y" * 2001)
    for name in ("README.md", "scan.pdf", ".hidden"):
        (inp / name).write_text("not read")
    out = tmp_path / "out"
    manifest = build_text_shards([inp], out, vocab_size=400, split_paragraphs=True, max_doc_bytes=2000,
                                 progress=False)
    assert manifest["skipped"] == {"too_large": 2}
    assert manifest["documents"] == 100 + 1 + len(paragraphs[100:])  # the 2,000-byte one is kept
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.piece_to_id("\ua66e") == sp.unk_id()  # not trained on the skipped document either
    assert manifest["unread_inputs"]["count"] == 2
    assert manifest["unread_inputs"]["paths"] == [str((inp / n).resolve()) for n in ("README.md", "scan.pdf")]
    assert "warning: 2 file(s) in the input folders are not read" in capsys.readouterr().err
    assert manifest["config"]["max_doc_bytes"] == 2000
    default = build_text_shards([inp], tmp_path / "out2", vocab_size=400, split_paragraphs=True, progress=False)
    assert default["skipped"] == {} and default["config_hash"] != manifest["config_hash"]
    trained = spm.SentencePieceProcessor(model_file=str(tmp_path / "out2" / "tokenizer.model"))
    assert trained.piece_to_id("\ua66e") != trained.unk_id()  # what the check above would see without the cap
    assert ReadConfig().max_payload_bytes == DEFAULT_MAX_DOC_BYTES  # the same default cap as prep run


def test_prep_text_cli_max_doc_bytes(tmp_path: Path, capsys) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command", required=True))
    (tmp_path / "a.txt").write_text("words " * 50)
    args = parser.parse_args(["text", "--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"),
                              "--max-doc-bytes", "0"])
    assert args.func(args) == 2
    assert "max_doc_bytes must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
