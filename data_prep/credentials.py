"""Credentials for remote inputs: used to read, never written down (docs/data_prep.md, "Credentials").

The user:password of an http(s) URL is taken out of it when the inputs are resolved (:func:`remember`),
so ``plan.json``, manifests, the ``source`` column, messages and Slurm scripts hold the clean URL. A
reader asks for credentials again when it opens the URL (:func:`storage_options`): from
``$MEGADEPTH_HTTP_CREDENTIALS`` (matched by origin, so a password for ``https://`` never goes over
``http://`` or to another host; an input URL's credentials are added there for this process and the
workers it spawns), else ``~/.netrc`` (or ``$NETRC``) by host. Other protocols (``s3://``, ``gs://``)
take theirs from their own configuration, and their ``@`` may mean something else.
"""

from __future__ import annotations

import base64
import netrc
import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from megadepth.common.errors import DataError

__all__ = [
    "ENV", "Credential", "describe_failure", "lookup", "origin", "redact", "remember", "split_credentials",
    "storage_options",
]

#: The environment variable holding credentials by origin (see the module doc).
ENV = "MEGADEPTH_HTTP_CREDENTIALS"
_HTTP = ("http://", "https://")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# userinfo of any scheme when it has a password (user:pass@), or of http(s) when it is a lone token@
# and, third, a password with an unencoded '#', '/' or '?' (user:se#cret@host): not a valid URL, but
# what people type, and echoed by the error that refuses it: masked up to the '@' before a host[:port]
_USERINFO = re.compile(
    r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s:]*:[^/?#\s]*@|\b(https?://)[^/?#\s]+@"
    r"|\b(https?://)[^\s/?#@:]*:[^\s@]*@(?=[a-z0-9.\-\[\]]+(?::\d+)?(?:[/?#\s]|$))"
)


@dataclass(frozen=True)
class Credential:
    """A user and password for one origin, and where they came from (for messages: never the secret)."""

    user: str
    password: str
    source: str

    def header(self) -> str:
        """The ``Authorization`` header value (HTTP Basic)."""
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")

    def __repr__(self) -> str:  # a Credential printed by accident shows no password
        return f"Credential(user={self.user!r}, password='***', source={self.source!r})"


def _netloc_span(url: str) -> tuple[int, int]:
    """Start and end of the authority part of ``scheme://authority/rest``."""
    start = url.index("://") + 3
    ends = [i for i in (url.find(c, start) for c in "/?#") if i >= 0]
    return start, min(ends) if ends else len(url)


def split_credentials(url: str) -> tuple[str, Credential | None]:
    """``(url without user:password, the credential)`` for an http(s) URL; other strings unchanged. The
    rest of the URL is kept byte for byte, as the plan's hash and the ``source`` column hold it."""
    if not url.lower().startswith(_HTTP):
        return url, None
    start, end = _netloc_span(url)
    userinfo, at, hostport = url[start:end].rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    clean = url[:start] + hostport + url[end:]
    return clean, Credential(unquote(user), unquote(password), "the URL")


def origin(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL, lower case, the scheme's default port left out."""
    parts = urlsplit(split_credentials(url)[0])
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        raise DataError(f"{redact(url)}: not a valid URL (bad port)") from None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS.get(scheme) else "")


def _env_entries() -> dict[str, Credential]:
    """``$MEGADEPTH_HTTP_CREDENTIALS`` by origin; a malformed entry is an error naming its position only."""
    out: dict[str, Credential] = {}
    for i, entry in enumerate(os.environ.get(ENV, "").split(), 1):
        _, cred = split_credentials(entry)
        if cred is None:
            raise DataError(
                f"${ENV}: entry {i} is not an http(s) URL with credentials (expected "
                "https://USER:PASSWORD@HOST[:PORT], percent-encoded, entries separated by spaces)"
            )
        out[origin(entry)] = Credential(cred.user, cred.password, f"${ENV}")
    return out


def remember(url: str, seen: dict[str, Credential] | None = None) -> tuple[str, bool]:
    """``(url without credentials, whether it had any)``. Credentials found go into
    ``$MEGADEPTH_HTTP_CREDENTIALS`` (for this process and the workers it starts), never on disk.

    ``seen`` collects one command's credentials by origin: two different ones for one origin are
    refused, since which one a file is read with would depend on the order of the inputs.
    """
    clean, cred = split_credentials(url)
    if cred is None:
        return url, False
    key = origin(clean)
    if seen is not None:
        known = seen.setdefault(key, cred)
        if (known.user, known.password) != (cred.user, cred.password):
            raise DataError(f"{key}: two different user:password pairs in the inputs; give one per host")
    entries = {**_env_entries(), key: cred}
    userinfo = {k: f"{quote(c.user, safe='')}:{quote(c.password, safe='')}@" for k, c in entries.items()}
    os.environ[ENV] = " ".join(k.replace("://", "://" + userinfo[k], 1) for k in sorted(entries))
    return clean, True


def _netrc_credential(host: str) -> Credential | None:
    """The ``~/.netrc`` (or ``$NETRC``) entry for ``host``; None when there is none or it is unusable
    (then :func:`netrc_problem` says why, in the message of a refused read)."""
    try:
        found = _netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    if found is None:
        return None
    login, account, password = found
    return Credential(login or account or "", password or "", _netrc_name())


def _netrc_name() -> str:
    return os.environ.get("NETRC") or "~/.netrc"


def _netrc() -> netrc.netrc:
    # netrc.netrc() with no file refuses a ~/.netrc that others can read (Python's own check)
    path = os.environ.get("NETRC")
    return netrc.netrc(path) if path else netrc.netrc()


def netrc_problem() -> str | None:
    """Why the netrc file cannot be used (None: usable or absent). Never quotes its content."""
    try:
        _netrc()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{_netrc_name()} cannot be read ({e.strerror})"
    except netrc.NetrcParseError as e:
        where = _netrc_name()
        if "permissive" in (e.msg or ""):
            return f"{where} is ignored: others can read it (chmod 600 {where})"
        return f"{where} is ignored: not a netrc file (line {e.lineno})"
    return None


def lookup(url: str) -> Credential | None:
    """The credential to read ``url`` with: its own, else ``$MEGADEPTH_HTTP_CREDENTIALS``, else netrc."""
    clean, own = split_credentials(url)
    if own is not None:
        return own
    if not clean.lower().startswith(_HTTP):
        return None
    entry = _env_entries().get(origin(clean))
    if entry is not None:
        return entry
    host = urlsplit(clean).hostname
    return _netrc_credential(host) if host else None


def storage_options(url: str) -> dict:
    """fsspec options to open ``url`` with: an ``Authorization`` header when a credential is found.

    A header per request rather than a session-wide ``auth``: aiohttp drops it when a redirect leaves
    the origin, and it is never combined with credentials still inside the URL (an old plan.json).
    """
    if not url.lower().startswith(_HTTP) or split_credentials(url)[1] is not None:
        return {}
    cred = lookup(url)
    return {"headers": {"Authorization": cred.header()}} if cred is not None else {}


def redact(text: str) -> str:
    """``text`` with the user:password of every URL in it replaced by ``***``: for messages that may
    quote a URL (a library's exception, an argument echoed back)."""
    return _USERINFO.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + "***@", text)


def _status(e: BaseException) -> int | None:
    """The HTTP status in ``e`` or its causes (fsspec reports a 401 as FileNotFoundError from it)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        status = getattr(cur, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
        cur = cur.__cause__ or cur.__context__
    return None


def describe_failure(e: BaseException, url: str) -> str:
    """What went wrong reading ``url``, for a one-line message: the exception (credentials redacted),
    or, when the server refused access, which credential was sent and where to put one."""
    status = _status(e)
    if status in (401, 403):
        cred = lookup(url) if url.lower().startswith(_HTTP) else None
        host = urlsplit(split_credentials(url)[0]).hostname or "HOST"
        if cred is not None:
            # an input URL's credentials reach the workers through the variable: name both
            source = f"{cred.source} (or an input URL)" if cred.source == f"${ENV}" else cred.source
            return f"HTTP {status}: the server refused the credentials for user {cred.user!r} from {source}"
        problem = netrc_problem()
        return (
            f"HTTP {status}: the server wants credentials and none were found for {host}. The user:password "
            "of an input URL is used only by the command it was given to (it is not stored in plan.json); "
            f"for 'prep task' and reruns put it in ~/.netrc (machine {host} login USER password PASSWORD, "
            f"chmod 600) or export {ENV}=https://USER:PASSWORD@{host}"
            + (f" ({problem})" if problem else "")
        )
    return redact(f"{type(e).__name__}: {e}")
