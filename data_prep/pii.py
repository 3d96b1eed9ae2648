"""PII masking: e-mail addresses and public IPv4 addresses (datatrove's PIIFormatter, deterministic).

Replacements are chosen from fixed lists by a hash of the original, so the output is a function of the
input. IPv4 addresses that are not public, and version-like strings with a leading zero, are left alone.
"""

from __future__ import annotations

import ipaddress
import re

import xxhash

__all__ = ["EMAIL_REPLACEMENTS", "IP_REPLACEMENTS", "mask_pii"]

EMAIL_REPLACEMENTS = ("email@example.com", "firstname.lastname@example.org")
#: Documentation ranges (RFC 5737): never anybody's address.
IP_REPLACEMENTS = ("192.0.2.1", "198.51.100.23", "203.0.113.42", "192.0.2.254", "198.51.100.7", "203.0.113.9")

#: Never anybody's address, whatever this Python's ``is_global`` says about them (it changed over versions).
_NOT_PUBLIC = tuple(
    ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "100.64.0.0/10")
)

_EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\b"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
#: Cheap pre-checks that every match of the full patterns passes (most texts have neither, and the full
#: patterns cost several times more to find nothing).
_EMAIL_HINT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]@[A-Za-z0-9]")
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")


def _pick(options: tuple[str, ...], original: str) -> str:
    return options[xxhash.xxh3_64_intdigest(original.encode()) % len(options)]


def _ip(m: re.Match) -> str:
    s = m.group(0)
    try:
        addr = ipaddress.IPv4Address(s)
    except ValueError:
        return s
    if not addr.is_global or any(addr in net for net in _NOT_PUBLIC):
        return s
    return _pick(IP_REPLACEMENTS, s)


def mask_pii(text: str, emails: bool = True, ips: bool = True) -> tuple[str, int, int]:
    """``(masked text, e-mails masked, IPv4 addresses masked)``."""
    n_email = n_ip = 0
    if emails and "@" in text and _EMAIL_HINT.search(text):
        text, n_email = _EMAIL.subn(lambda m: _pick(EMAIL_REPLACEMENTS, m.group(0)), text)
    if ips and "." in text and _IPV4_HINT.search(text):
        changed = [0]

        def repl(m: re.Match) -> str:
            out = _ip(m)
            if out != m.group(0):
                changed[0] += 1
            return out

        text = _IPV4.sub(repl, text)
        n_ip = changed[0]
    return text, n_email, n_ip
