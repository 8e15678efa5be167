"""Secret rules and the streaming redactor, which the host and the guest both apply."""

from __future__ import annotations

import base64
import random
import urllib.parse

import pytest

from pyro_mcp.protocol import redaction as rd
from pyro_mcp.protocol.redaction import MARKER, Redactor

SECRET = b"hunter2!s3cr3t/val+ue"


def stream(redactor: Redactor, chunks: list[bytes]) -> bytes:
    return b"".join(redactor.feed(c) for c in chunks) + redactor.flush()


def leaks(out: bytes, pattern: bytes) -> bool:
    return pattern in out


# --- names and values ----------------------------------------------------------------------


def test_names_follow_the_contract_regex() -> None:
    for good in ("A", "_", "API_TOKEN", "a" * 64, "x9_"):
        assert rd.check_secret_name(good) == good
    for bad in ("", "9A", "A-B", "a" * 65, "A B", "é", None, 7, "A\n"):
        with pytest.raises(rd.SecretError, match="must match"):
            rd.check_secret_name(bad)


def test_values_non_empty_utf8_at_most_64_kib_and_never_in_errors() -> None:
    assert rd.check_secret_value("X", "v") == b"v"
    assert rd.check_secret_value("X", "é" * 10) == "é".encode() * 10
    assert len(rd.check_secret_value("X", "a" * rd.MAX_SECRET_BYTES)) == rd.MAX_SECRET_BYTES
    cases: list[tuple[object, str]] = [
        ("", "must not be empty"),
        ("a" * (rd.MAX_SECRET_BYTES + 1), "larger than 65536"),
        (b"\xff\xfe-sekrit", "UTF-8"),
        ("\ud800sekrit", "UTF-8"),
        (42, "string value"),
    ]
    for value, message in cases:
        with pytest.raises(rd.SecretError, match=message) as info:
            rd.check_secret_value("TOKEN", value)
        assert "sekrit" not in str(info.value) and "TOKEN" in str(info.value)


def test_secret_set_and_secret_env() -> None:
    assert rd.check_secrets({"A": "1", "B": b"2"}) == {"A": b"1", "B": b"2"}
    with pytest.raises(rd.SecretError, match="at most"):
        rd.check_secrets({f"S{i}": "v" for i in range(rd.MAX_SECRETS + 1)})
    assert rd.check_secret_env(None, ["A"]) == {}
    assert rd.check_secret_env({"A": "ENV_A", "B": "B"}, ["A", "B"]) == {"A": "ENV_A", "B": "B"}
    with pytest.raises(rd.SecretError, match="unknown workspace secret 'X'"):
        rd.check_secret_env({"X": "X"}, ["A"])
    with pytest.raises(rd.SecretError, match="must match"):
        rd.check_secret_env({"A": "BAD-ENV"}, ["A"])
    with pytest.raises(rd.SecretError, match="must be an object"):
        rd.check_secret_env(["A"], ["A"])


# --- encodings -----------------------------------------------------------------------------


def encodings(value: bytes) -> dict[str, bytes]:
    b64 = base64.b64encode(value)
    url = base64.urlsafe_b64encode(value)
    return {
        "literal": value,
        "b64": b64,
        "b64-nopad": b64.rstrip(b"="),
        "b64url": url,
        "b64url-nopad": url.rstrip(b"="),
        "quote": urllib.parse.quote(value, safe="").encode(),
        "quote-slash": urllib.parse.quote(value).encode(),
        "quote_plus": urllib.parse.quote_plus(value).encode(),
        "quote-lower": urllib.parse.quote(value, safe="").lower().encode(),
        "hex": value.hex().encode(),
        "HEX": value.hex().upper().encode(),
    }


@pytest.mark.parametrize("name", list(encodings(SECRET)))
def test_every_encoding_is_redacted(name: str) -> None:
    encoded = encodings(SECRET)[name]
    out = Redactor([SECRET]).redact(b"before " + encoded + b" after")
    assert out == b"before " + MARKER + b" after"


@pytest.mark.parametrize("shift", [0, 1, 2])
@pytest.mark.parametrize("urlsafe", [False, True])
def test_base64_inside_a_longer_stream_at_every_alignment(shift: int, urlsafe: bool) -> None:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    for tail in range(3):
        blob = encode(b"p" * (shift + 3) + SECRET + b"q" * (tail + 7))
        out = Redactor([SECRET]).redact(blob)
        assert MARKER in out
        # What survives around the marker is at most two characters of mixed bits per end.
        kept = out.replace(MARKER, b"")
        assert len(blob) - len(kept) >= len(encode(SECRET).rstrip(b"=")) - 4


def test_value_with_newlines_is_redacted_as_a_pty_echoes_it() -> None:
    value = b"line one\nline two"
    out = Redactor([value]).redact(b"$ cat s\r\nline one\r\nline two\r\n$ ")
    assert out == b"$ cat s\r\n" + MARKER + b"\r\n$ "


def test_short_secrets_redact_the_literal_but_not_tiny_encodings() -> None:
    redactor = Redactor(["ab"])
    assert redactor.redact(b"cab YWI= 6162") == b"c" + MARKER + b" YWI= 6162"
    assert all(len(p) >= rd.MIN_DERIVED_LEN or p == b"ab" for p in rd.secret_patterns(b"ab"))


def test_no_false_positives_on_unrelated_text() -> None:
    rng = random.Random(7)
    redactor = Redactor([SECRET, b"another-Secret-42"])
    text = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 +/=%\n") for _ in range(200_000))
    assert stream(redactor, [text[i : i + 999] for i in range(0, len(text), 999)]) == text
    assert Redactor([]).redact(text) == text and not Redactor([]).active
    assert Redactor([b""]).redact(b"abc") == b"abc"


# --- streaming -----------------------------------------------------------------------------


def test_split_at_every_offset_for_every_encoding() -> None:
    for encoded in encodings(SECRET).values():
        data = b"<<" + encoded + b">>" + encoded + b"!"
        expected = b"<<" + MARKER + b">>" + MARKER + b"!"
        for first in range(len(data) + 1):
            for second in range(first, len(data) + 1, 5):
                chunks = [data[:first], data[first:second], data[second:]]
                assert stream(Redactor([SECRET]), chunks) == expected, (encoded, first, second)


def test_byte_by_byte_and_random_chunking() -> None:
    rng = random.Random(11)
    secrets = [SECRET, b"tok_ABCDEFGH", b"x"]
    redactor_for_whole = Redactor(secrets)
    for _ in range(200):
        parts = [rng.choice([b"..", b" ", b"tok_ABCDEF", SECRET, b"tok_ABCDEFGH", b"x", b"yy"])]
        parts += [rng.choice([b"a", SECRET[: rng.randrange(len(SECRET))], b"tok_ABCDEFGH", b"zz"])]
        data = b"".join(parts * rng.randrange(1, 5))
        whole = redactor_for_whole.redact(data)
        cuts = sorted(rng.sample(range(len(data) + 1), min(4, len(data) + 1)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert stream(Redactor(secrets), chunks) == whole
        assert stream(Redactor(secrets), [bytes([b]) for b in data]) == whole
        for secret in secrets[:2]:
            assert secret not in whole


def test_overlapping_secrets_are_redacted_as_their_union() -> None:
    redactor = Redactor([b"abcdef", b"defghi"])
    assert redactor.redact(b"1abcdefghi2") == b"1" + MARKER + b"2"
    assert redactor.redact(b"abcdef-defghi") == MARKER + b"-" + MARKER
    self_overlap = Redactor([b"aaaa"])
    assert self_overlap.redact(b"baaaaaaab") == b"b" + MARKER + b"b"
    # An endless run of overlapping occurrences is redacted with bounded memory.
    run = Redactor([b"aaaa"])
    out = b"".join(run.feed(b"a" * 1000) for _ in range(100)) + run.feed(b"b") + run.flush()
    assert out == MARKER + b"b"
    assert len(run._tail) < run.max_len


def test_a_prefix_of_a_secret_at_the_end_is_released_by_flush() -> None:
    redactor = Redactor([SECRET])
    held = redactor.feed(b"ok " + SECRET[:-1])
    assert held + redactor.flush() == b"ok " + SECRET[:-1]
    assert redactor.flush() == b""


def test_redact_text_round_trips_unicode() -> None:
    redactor = Redactor(["pässwörd"])
    assert redactor.redact_text("x pässwörd y é") == "x [REDACTED] y é"
    assert redactor.redact_text("") == ""
    assert redactor.redact_text("bad \udcff byte") == "bad \udcff byte"


def test_only_a_possible_start_of_an_occurrence_is_held_back() -> None:
    redactor = Redactor([SECRET])
    assert redactor.feed(b"output\r\npyro$ ") == b"output\r\npyro$ "  # nothing held
    assert redactor.feed(b"echo " + SECRET[:5]) == b"echo "  # may be the secret: held
    assert redactor.feed(SECRET[5:9]) == b""
    assert redactor.feed(b"~") == SECRET[:9] + b"~"  # diverged: released
    assert redactor.feed(SECRET[:3]) == b""
    assert redactor.feed(SECRET[3:] + b"\r\n") == MARKER + b"\r\n"
    assert redactor.flush() == b""


# --- the set on the wire, and secret_env in requests ----------------------------------------


def test_secret_set_round_trip_and_refusals() -> None:
    values = {"B": b"x\x00y", "A": "é".encode()}
    body = rd.encode_secret_set(values)
    assert rd.parse_secret_set(body) == values
    assert rd.parse_secret_set(rd.encode_secret_set({})) == {}
    for bad in (b"[]", b"nope", b'{"A": 5}', b'{"A": "%%"}', b'{"a-b": "eA=="}', b'{"A": ""}'):
        with pytest.raises(rd.SecretError):
            rd.parse_secret_set(bad)
    with pytest.raises(rd.SecretError, match="larger than"):
        rd.parse_secret_set(b" " * (rd.MAX_SET_BODY + 1))


def test_clone_shares_patterns_but_not_stream_state() -> None:
    first = Redactor([SECRET])
    assert first.feed(SECRET[:4]) == b""
    twin = first.clone()
    assert twin.feed(SECRET[4:]) == SECRET[4:]  # twin never saw the start
    assert first.feed(SECRET[4:]) == MARKER


def test_secret_env_in_exec_and_shell_open_params() -> None:
    from pyro_mcp.protocol import ops, shell_ops
    from pyro_mcp.protocol.ops import ParamError

    spec = ops.parse_exec({"argv": ["true"], "timeout": 1, "secret_env": {"TOKEN": "GH"}})
    assert spec.secret_env == {"TOKEN": "GH"} and "GH" not in spec.env
    assert ops.parse_exec({"argv": ["true"], "timeout": 1}).secret_env == {}
    assert shell_ops.parse_open({"secret_env": {"A": "B"}}).secret_env == {"A": "B"}
    for bad in ({"a-b": "X"}, {"A": "1X"}, ["A"], "A"):
        with pytest.raises(ParamError):
            ops.parse_exec({"argv": ["true"], "timeout": 1, "secret_env": bad})
        with pytest.raises(ParamError):
            shell_ops.parse_open({"secret_env": bad})


def test_long_secrets_stream_and_release_what_cannot_continue_them() -> None:
    rng = random.Random(3)
    value = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(70_000))
    value = value[: rd.MAX_SECRET_BYTES]
    redactor = Redactor([value])
    data = b"head " + value + b" mid " + base64.b64encode(value) + b" " + value.hex().encode()
    chunks = [data[i : i + 4099] for i in range(0, len(data), 4099)]
    out = b"".join(redactor.feed(c) for c in chunks)
    assert out == b"head " + MARKER + b" mid " + MARKER + b" " + MARKER  # nothing held back
    assert redactor.flush() == b""
    held = Redactor([value])
    assert held.feed(b"x" + value[:5000]) == b"x" and held.feed(b"!") == value[:5000] + b"!"
