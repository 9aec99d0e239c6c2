"""Find personal data and secrets in text, and redact them.

Each kind pairs a cheap candidate pattern with a maintained validator, so a look-alike (a 16-digit
order number that fails the Luhn check, a version string, a random 9-digit number) is not PII:
phone numbers by libphonenumber, card numbers by the Luhn checksum and national ids by
python-stdnum, API keys and secrets by detect-secrets' named-key plugins, IP addresses by the
standard library's parser.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import phonenumbers
from detect_secrets.core.scan import scan_line
from detect_secrets.settings import transient_settings
from phonenumbers import Leniency
from stdnum import luhn

from evolvd.policies.models import PiiKind, PiiPolicy

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# An id-shaped token: letters and digits joined by `.`/`-`, or digit groups joined by single spaces.
_ID_TOKEN = re.compile(r"(?<![\w.-])(?:[A-Za-z0-9]+(?:[.-][A-Za-z0-9]+)*|\d+(?: \d+)+)(?![\w-])")
_ID_CONTEXT = re.compile(
    r"\b(ssn|social security|national (id|insurance)|id (number|no\.?|card)|passport|aadhaar|"
    r"dni|nir|bsn|codice fiscale|tax id)\b[^\n]{0,20}$",
    re.IGNORECASE,
)

# A national number written without spaces or a leading + is at most 12 digits in practice
# (E.164 allows 15 with the country code); longer bare runs are order, card or account numbers.
_MAX_UNGROUPED_PHONE_DIGITS = 12

# detect-secrets sees one line at a time; a PEM private key is a block, redacted whole.
_PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL)

# detect-secrets plugins that recognise a named key format. Its entropy plugins are left out on
# purpose: on prose they flag ordinary words (measured: every word of "nothing here at all").
_SECRET_PLUGINS = [
    {"name": name}
    for name in (
        "ArtifactoryDetector",
        "AWSKeyDetector",
        "AzureStorageKeyDetector",
        "BasicAuthDetector",
        "CloudantDetector",
        "DiscordBotTokenDetector",
        "GitHubTokenDetector",
        "GitLabTokenDetector",
        "JwtTokenDetector",
        "KeywordDetector",
        "MailchimpDetector",
        "NpmDetector",
        "OpenAIDetector",
        "PrivateKeyDetector",
        "PypiTokenDetector",
        "SendGridDetector",
        "SlackDetector",
        "SquareOAuthDetector",
        "StripeDetector",
        "TelegramBotTokenDetector",
        "TwilioKeyDetector",
    )
]


@dataclass(frozen=True)
class PiiFinding:
    kind: PiiKind
    start: int
    end: int
    detector: str
    """Which check recognised it, e.g. `luhn`, `stdnum.us.ssn`, `detect-secrets:AWS Access Key`."""


class PiiDetector:
    """Detects the PII kinds of one PiiPolicy (regions and id validators come from it)."""

    def __init__(self, policy: PiiPolicy) -> None:
        self._regions = list(policy.phone_regions)
        self._id_validators: list[tuple[str, ModuleType]] = [
            (name, importlib.import_module(f"stdnum.{name}")) for name in policy.national_ids
        ]

    def find(self, text: str) -> list[PiiFinding]:
        """Every finding, longest first where two overlap (a card number is not also a phone)."""
        found = [
            *self._emails(text),
            *self._cards(text),
            *self._ips(text),
            *self._secrets(text),
            *self._national_ids(text),
            *self._phones(text),
        ]
        return _without_overlaps(found)

    def _emails(self, text: str) -> Iterator[PiiFinding]:
        for match in _EMAIL.finditer(text):
            yield PiiFinding("email", match.start(), match.end(), "pattern")

    def _cards(self, text: str) -> Iterator[PiiFinding]:
        for match in _CARD.finditer(text):
            digits = re.sub(r"\D", "", match.group())
            if 13 <= len(digits) <= 19 and luhn.is_valid(digits) and len(set(digits)) > 1:
                yield PiiFinding("card", match.start(), match.end(), "luhn")

    def _ips(self, text: str) -> Iterator[PiiFinding]:
        for pattern in (_IPV4, _IPV6):
            for match in pattern.finditer(text):
                candidate = match.group()
                if candidate.count(":") and candidate.count(":") < 2:  # a time like 10:30
                    continue
                try:
                    ipaddress.ip_address(candidate)
                except ValueError:
                    continue
                yield PiiFinding("ip", match.start(), match.end(), "ipaddress")

    def _phones(self, text: str) -> Iterator[PiiFinding]:
        # STRICT_GROUPING: the digits must be grouped as that region writes numbers, which drops
        # dotted quads like 930.24.28.116 that VALID leniency reads as Indian numbers.
        for region in self._regions:
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=Leniency.STRICT_GROUPING):
                raw = match.raw_string
                if raw.isdigit() and len(raw) > _MAX_UNGROUPED_PHONE_DIGITS:
                    continue  # an order or card-length number, not a phone anyone writes unspaced
                yield PiiFinding("phone", match.start, match.end, f"libphonenumber:{region}")

    def _national_ids(self, text: str) -> Iterator[PiiFinding]:
        for match in _ID_TOKEN.finditer(text):
            token = match.group()
            if not 7 <= len(token) <= 24 or not any(c.isdigit() for c in token):
                continue
            in_context = _ID_CONTEXT.search(text[: match.start()]) is not None
            for name, module in self._id_validators:
                if not module.is_valid(token):
                    continue
                # Many ids are short checksummed digit strings that random numbers pass by chance;
                # count one only when written in its own format or named just before.
                if in_context or _canonical(module, token) == token:
                    yield PiiFinding("national_id", match.start(), match.end(), f"stdnum.{name}")
                    break

    def _secrets(self, text: str) -> Iterator[PiiFinding]:
        for match in _PEM_KEY.finditer(text):
            yield PiiFinding("secret", match.start(), match.end(), "pem-private-key")
        offset = 0
        with transient_settings({"plugins_used": _SECRET_PLUGINS}):
            for line in text.splitlines(keepends=True):
                for secret in scan_line(line):
                    value = secret.secret_value or ""
                    at = line.find(value) if value else -1
                    if at < 0:
                        continue
                    start, end = _token_around(line, at, at + len(value))
                    yield PiiFinding("secret", offset + start, offset + end, f"detect-secrets:{secret.type}")
                offset += len(line)


def _canonical(module: ModuleType, token: str) -> str:
    """How the id is written in its own format (some validators have no `format`: compact form)."""
    compact = str(module.compact(token))
    formatter = getattr(module, "format", None)
    return str(formatter(compact)) if formatter is not None else compact


def _token_around(line: str, start: int, end: int) -> tuple[int, int]:
    """Widen a secret's matched part (a plugin may match only a prefix such as `ghp`) to its token."""
    boundary = " \t\r\n\"'`,;()[]{}<>"
    while start > 0 and line[start - 1] not in boundary:
        start -= 1
    while end < len(line) and line[end] not in boundary:
        end += 1
    return start, end


def _without_overlaps(found: Sequence[PiiFinding]) -> list[PiiFinding]:
    kept: list[PiiFinding] = []
    for finding in sorted(found, key=lambda f: (-(f.end - f.start), f.start)):
        if all(finding.end <= k.start or finding.start >= k.end for k in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)


def redact(text: str, findings: Sequence[PiiFinding], template: str) -> str:
    """Replace each finding's span by the template (`{kind}` is replaced by the finding's kind)."""
    out: list[str] = []
    position = 0
    for finding in sorted(findings, key=lambda f: f.start):
        out.append(text[position : finding.start])
        out.append(template.replace("{kind}", finding.kind.upper()))
        position = finding.end
    out.append(text[position:])
    return "".join(out)
