"""Guest protocol, secrets: the naming and size rules of workspace secrets, and the redactor that
removes their values (and the common encodings of those values) from every output.

Shared by the host (create-time validation, redaction of recorded command text, logs and
errors) and the agent (exec output, the shell ring and service logs are redacted in the guest,
before anything reaches the host), so it stays stdlib-only and Python 3.11 compatible.

What a Redactor replaces, for each secret value V (bytes), with MARKER:

- V itself (always, whatever its length: the contract redacts every non-empty value);
- when V holds a newline, V with CRLF line ends (how a PTY echoes it);
- base64 of V on its own, standard and urlsafe alphabets, with and without padding;
- the stable inner part of V's base64 when V sits at each of the three byte alignments inside a
  longer base64 stream (``base64(prefix + V + suffix)``): only the characters whose six bits all
  come from V, so the pattern holds whatever surrounds V. At most two characters at each end
  mix V's bits with its neighbours' and stay visible, which leaks at most 10 bits of V per end;
- URL-encoding (quote with and without "/" kept, quote_plus), with upper- and lowercase %XX;
- hex, lower- and uppercase.

An encoded pattern shorter than MIN_DERIVED_LEN bytes is not used: "YQ", the unpadded base64 of
"a", would redact much unrelated text, and so would short alignment fragments. A short secret
therefore gets its literal value (and only those encodings long enough) redacted.

Matching is one regular expression built from a trie of every pattern (so the work per input
byte depends on how much of a pattern matches there, not on how many patterns there are), with
the longest pattern winning at each position. Overlapping occurrences (of two secrets, or of
one secret with itself, as in "aaaa" inside "aaaaaa") are redacted as their union: no byte of
any occurrence survives. Streaming holds back only the bytes that may begin an occurrence the
next chunk could complete (the longest suffix that is a prefix of some pattern: at most
``max_pattern_len - 1`` bytes, and usually none), so an occurrence split across chunks is
still caught while output that cannot begin a secret (a shell's prompt) is released at once.
flush() releases the held bytes at the end of the stream.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

MARKER = b"[REDACTED]"
MARKER_TEXT = MARKER.decode()
SECRET_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
MAX_SECRET_BYTES = 64 * 1024
# Not in the 3.11 contract (which has no limit); bounds the redactor's size and the install.
MAX_SECRETS = 64
MIN_DERIVED_LEN = 6
# Suffixes shorter than this are checked exactly against the patterns' prefixes (a set);
# longer ones by the patterns' first _HEAD bytes (a regex).
_HEAD = 32

_NAME = re.compile(SECRET_NAME_PATTERN)
_PERCENT = re.compile(rb"%[0-9A-F]{2}")


class SecretError(ValueError):
    """A secret's name or value breaks the rules; the message never holds the value."""


def check_secret_name(name: object) -> str:
    """The name if it is valid (also the rule for the env names secret_env maps to)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise SecretError(f"secret name {shown} must match ^{SECRET_NAME_PATTERN}$")
    return name


def check_secret_value(name: str, value: object) -> bytes:
    """The value as UTF-8 bytes if it is a non-empty string (or UTF-8 bytes) of at most
    MAX_SECRET_BYTES; the error names the secret, never its value."""
    if isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise SecretError(f"secret {name} must be valid UTF-8") from None
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"secret {name} must be valid UTF-8") from None
    else:
        raise SecretError(f"secret {name} must have a string value")
    if not data:
        raise SecretError(f"secret {name} must not be empty")
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"secret {name} is larger than {MAX_SECRET_BYTES} bytes")
    return data


def check_secrets(secrets: Mapping[str, object]) -> dict[str, bytes]:
    """Validate a whole set (names, values, count); returns name -> UTF-8 bytes."""
    if len(secrets) > MAX_SECRETS:
        raise SecretError(f"a workspace takes at most {MAX_SECRETS} secrets")
    return {check_secret_name(n): check_secret_value(n, v) for n, v in secrets.items()}


def check_secret_env(secret_env: object, known: Iterable[str]) -> dict[str, str]:
    """Validate a secret_env mapping {SECRET: ENV}; unknown secrets are refused as the contract
    words it. Returns a new dict."""
    if secret_env is None:
        return {}
    result = check_secret_env_names(secret_env)
    names = set(known)
    for secret in result:
        if secret not in names:
            raise SecretError(f"secret_env references unknown workspace secret {secret!r}")
    return result


# --- the secret set as it travels to the guest (the input of ``secrets.put``) --------------

# A whole set as JSON {name: base64}: every value at its limit, base64, plus the names.
MAX_SET_BODY = MAX_SECRETS * (MAX_SECRET_BYTES * 4 // 3 + 4 + 64 + 8) + 2


def encode_secret_set(values: Mapping[str, bytes]) -> bytes:
    """The body of a ``secrets.put`` request (checked first, so the guest never sees junk)."""
    checked = check_secrets(values)
    encoded = {n: base64.b64encode(v).decode("ascii") for n, v in sorted(checked.items())}
    return json.dumps(encoded, separators=(",", ":")).encode("ascii")


def parse_secret_set(body: bytes) -> dict[str, bytes]:
    """A ``secrets.put`` body back into name -> value, checked like any secret set."""
    if len(body) > MAX_SET_BODY:
        raise SecretError(f"the secret set is larger than {MAX_SET_BODY} bytes")
    try:
        raw = json.loads(body)
    except ValueError:
        raise SecretError("the secret set must be a JSON object of base64 values") from None
    if not isinstance(raw, dict):
        raise SecretError("the secret set must be a JSON object of base64 values")
    decoded: dict[str, bytes] = {}
    for name, value in raw.items():
        check_secret_name(name)
        try:
            decoded[name] = base64.b64decode(str(value), validate=True)
        except binascii.Error:
            raise SecretError(f"secret {name} must be base64 in the set") from None
        if not isinstance(value, str):
            raise SecretError(f"secret {name} must be base64 in the set")
    return check_secrets(decoded)


def check_secret_env_names(secret_env: object) -> dict[str, str]:
    """The shape of a secret_env mapping {SECRET: ENV} (names only; whether each secret exists
    is for the side that holds them)."""
    if not isinstance(secret_env, Mapping):
        raise SecretError("secret_env must be an object mapping secret names to env names")
    return {check_secret_name(k): check_secret_name(v) for k, v in secret_env.items()}


# --- patterns ------------------------------------------------------------------------------


def _b64_alphabets(encoded: bytes) -> list[bytes]:
    return [encoded, encoded.replace(b"+", b"-").replace(b"/", b"_")]


def _b64_patterns(value: bytes) -> list[bytes]:
    alone = base64.b64encode(value)
    found = [alone, alone.rstrip(b"=")]
    bits = 8 * len(value)
    for shift in range(3):
        # Characters i of base64(shift zero bytes + value + anything) with all six bits in value.
        encoded = base64.b64encode(bytes(shift) + value)
        first = -(-8 * shift // 6)  # ceil
        last = (8 * shift + bits) // 6
        found.append(encoded[first:last])
    return [variant for pattern in found for variant in _b64_alphabets(pattern)]


def _url_patterns(value: bytes) -> list[bytes]:
    found = [
        urllib.parse.quote(value, safe="").encode("ascii"),
        urllib.parse.quote(value).encode("ascii"),
        urllib.parse.quote_plus(value).encode("ascii"),
    ]
    lower = [_PERCENT.sub(lambda m: m.group(0).lower(), p) for p in found]
    return found + lower


def secret_patterns(value: bytes) -> set[bytes]:
    """Every byte string that counts as an occurrence of `value`."""
    derived = [*_b64_patterns(value), *_url_patterns(value)]
    derived += [value.hex().encode("ascii"), value.hex().upper().encode("ascii")]
    if b"\n" in value:
        derived.append(value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    patterns = {p for p in derived if len(p) >= MIN_DERIVED_LEN}
    patterns.add(value)
    return patterns


def _trie_regex(patterns: Iterable[bytes]) -> bytes:
    """A regex matching exactly the patterns, longest first at each position. Runs of a
    single path are written as one literal, so the nesting (and this function's recursion)
    grows with the branch points along a pattern, not its length."""
    trie: dict[int, Any] = {}
    end = -1  # key marking "a pattern ends here"
    for pattern in patterns:
        node = trie
        for byte in pattern:
            node = node.setdefault(byte, {})
        node[end] = {}

    def render(node: dict[int, Any]) -> bytes:
        branches = []
        for byte in sorted(k for k in node if k != end):
            run, child = bytearray([byte]), node[byte]
            while len(child) == 1 and end not in child:  # one way on: extend the literal
                (next_byte, child), *_ = child.items()
                run.append(next_byte)
            branches.append(re.escape(bytes(run)) + render(child))
        if not branches:
            return b""
        if len(branches) == 1 and end not in node:
            return branches[0]
        body = b"(?:" + b"|".join(branches) + b")"
        return body + b"?" if end in node else body

    return render(trie)


class Redactor:
    """Replaces every occurrence of the secrets' values and encodings in a byte stream.

    One Redactor serves one stream: feed() its chunks in order, then flush(). redact() does a
    whole buffer at once and leaves the stream state alone. Not thread-safe per stream.
    """

    def __init__(self, values: Iterable[bytes | str], marker: bytes = MARKER) -> None:
        patterns: set[bytes] = set()
        for value in values:
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            if data:
                patterns |= secret_patterns(data)
        self.marker = marker
        self.max_len = max((len(p) for p in patterns), default=0)
        self._regex = re.compile(_trie_regex(patterns)) if patterns else None
        # What may begin an occurrence that only the next bytes can complete: every proper
        # prefix shorter than _HEAD of each pattern, and the first _HEAD bytes of the longer
        # patterns (a suffix that starts with one is held whether or not the rest matches).
        self._short_prefixes = {p[:n] for p in patterns for n in range(1, min(len(p), _HEAD))}
        self._long: dict[bytes, list[bytes]] = {}
        for pattern in patterns:
            if len(pattern) > _HEAD:
                self._long.setdefault(pattern[:_HEAD], []).append(pattern)
        self._heads = re.compile(_trie_regex(self._long)) if self._long else None
        self._tail = b""
        # Leading bytes of _tail known to be inside an occurrence whose marker is already out
        # (0: the last one ended right at the tail, so one starting there continues it); -1: none.
        self._carry = -1

    def clone(self) -> Redactor:
        """A redactor for another stream over the same secrets (the regexes are shared)."""
        twin = copy.copy(self)
        twin._tail, twin._carry = b"", -1
        return twin

    @property
    def active(self) -> bool:
        return self._regex is not None

    def feed(self, data: bytes) -> bytes:
        """The output that is final once `data` follows what came before."""
        if self._regex is None:
            return data
        return self._run(self._tail + data, final=False)

    def flush(self) -> bytes:
        """The rest of the stream: its end is known, so nothing is held back."""
        if self._regex is None or not self._tail:
            self._carry = -1
            return b""
        return self._run(self._tail, final=True)

    def redact(self, data: bytes) -> bytes:
        """A whole buffer at once (not part of this redactor's stream)."""
        if self._regex is None:
            return data
        return Redactor._cut(self._regex, data, len(data), -1, self.marker)[0]

    def redact_text(self, text: str) -> str:
        """A whole string at once, UTF-8 round trip (invalid sequences stay as they were)."""
        if self._regex is None or not text:
            return text
        raw = text.encode("utf-8", "surrogateescape")
        return self.redact(raw).decode("utf-8", "surrogateescape")

    def _run(self, buf: bytes, final: bool) -> bytes:
        assert self._regex is not None
        cut = len(buf) if final else self._undecided(buf)
        out, reach = Redactor._cut(self._regex, buf, cut, self._carry, self.marker)
        self._tail = buf[cut:]
        self._carry = reach - cut if reach >= cut and not final else -1
        return out

    def _undecided(self, buf: bytes) -> int:
        """Where the bytes that may start an occurrence still incomplete begin: the earliest
        suffix of buf that is a prefix of a pattern (len(buf) when there is none). Any match
        starting earlier is final, since whatever starts there diverges within buf."""
        if self._heads is not None:
            match = self._heads.search(buf, max(0, len(buf) - (self.max_len - 1)))
            while match is not None:
                rest = buf[match.start() :]
                longer = self._long[match.group()]
                if any(len(p) > len(rest) and p.startswith(rest) for p in longer):
                    return match.start()
                match = self._heads.search(buf, match.start() + 1)
        for length in range(min(_HEAD - 1, len(buf)), 0, -1):
            if buf[len(buf) - length :] in self._short_prefixes:
                return len(buf) - length
        return len(buf)

    @staticmethod
    def _cut(
        regex: re.Pattern[bytes], buf: bytes, cut: int, carry: int, marker: bytes
    ) -> tuple[bytes, int]:
        """The redacted buf[:cut] and how far the last redacted span reaches (may pass cut).

        Every match starting before cut is final: a longer pattern starting there would still
        end within buf (cut leaves max_len - 1 bytes). Spans that overlap or touch are merged.
        A span carried over from the previous chunk (carry >= 0) continues its marker.
        """
        spans: list[list[int]] = [[0, carry]] if carry >= 0 else []
        match = regex.search(buf, 0, len(buf))
        while match is not None and match.start() < cut:
            start, stop = match.span()
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], stop)
            else:
                spans.append([start, stop])
            match = regex.search(buf, start + 1, len(buf))
        pieces: list[bytes] = []
        done = 0
        for start, stop in spans:
            pieces.append(buf[done:start])
            if not (carry >= 0 and start == 0):
                pieces.append(marker)
            done = min(stop, cut)
        pieces.append(buf[done:cut])
        return b"".join(pieces), spans[-1][1] if spans else -1
