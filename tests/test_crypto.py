"""Keys from Dataslayer secrets, and verification of the sender's own tokens."""

from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet

from relay.config import load_config
from relay.crypto import TokenVerifier, describe_age, encrypt, fernet_key
from relay.errors import ConfigError, TokenError
from tests.helpers import BY_NAME, SECRET, VECTORS, VECTORS_PATH, write_config


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_every_shared_vector_decrypts_to_its_plaintext(vector):
    """Each token made by the npm `fernet` library decrypts to the exact plaintext."""
    verifier = TokenVerifier([SECRET], max_age=86400)
    verified = verifier.verify(vector["token"], now=vector["timestamp"] + 5)
    assert verified.plaintext.decode("utf-8") == vector["plaintext"]
    assert verified.timestamp == vector["timestamp"]


def test_key_from_secret_is_the_base64_of_the_secret_like_dataslayer():
    """The 32-character secret gives the same key bytes as Dataslayer's base64 of it."""
    assert fernet_key(SECRET) == VECTORS["fernet_key"].encode()


def test_a_44_character_fernet_key_is_taken_as_is():
    """An already-encoded key works as the secret, in urlsafe or standard alphabet."""
    key = VECTORS["fernet_key"]
    assert fernet_key(key) == key.encode()
    standard = base64.b64encode(b"\xfb\xff" * 16).decode()
    assert fernet_key(standard) == base64.urlsafe_b64encode(b"\xfb\xff" * 16)


@pytest.mark.parametrize(
    ("secret", "fragment"),
    [
        ("short", "is 5 bytes long"),
        ("x" * 33, "is 33 bytes long"),
        ("!" * 44, "not base64"),
        (" " + "a" * 31, "white space"),
    ],
)
def test_unusable_secrets_say_what_is_wrong_without_showing_the_secret(secret, fragment):
    """A wrong length or alphabet is a clear error that never repeats the secret."""
    with pytest.raises(ValueError, match=fragment) as info:
        fernet_key(secret)
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    "secret",
    [
        "'abcdefghijklmnopqrstuvwxyz123456'",
        '"abcdefghijklmnopqrstuvwxyz123456"',
        "'" + VECTORS["fernet_key"] + "'",
    ],
    ids=["single quotes", "double quotes", "quoted Fernet key"],
)
def test_a_secret_pasted_with_its_quotes_says_so_without_showing_the_secret(secret):
    """A secret wrapped in matching quotes is named as quoted, not as the wrong length."""
    with pytest.raises(ValueError) as info:
        fernet_key(secret)
    assert str(info.value) == "is wrapped in quotes; paste the secret alone, without them"


def test_a_quoted_previous_secret_is_a_config_problem_naming_its_place(tmp_path):
    """previous_secrets items get the same quotes message, under their TOML path."""
    body = "previous_secrets = [\"'abcdefghijklmnopqrstuvwxyz123456'\"]\n"
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, body), environ={})
    assert [str(p) for p in info.value.problems] == [
        "dataslayer.previous_secrets[0]: is wrapped in quotes; paste the secret alone, without them"
    ]
    assert "abcdefghijklmnopqrstuvwxyz123456" not in str(info.value)


def test_token_made_with_another_secret_is_refused():
    """A token from another secret fails with a reason that names no secret."""
    other = encrypt("another-secret-0123456789abcdefg", b"{}", now=1000)
    with pytest.raises(TokenError, match="not made with any configured secret"):
        TokenVerifier([SECRET], max_age=0).verify(other, now=1000)


def test_previous_secrets_still_verify_during_rotation():
    """A token made with a previous secret verifies, and says which key matched."""
    new = "new-secret-0123456789abcdefghijk"
    verifier = TokenVerifier([new, SECRET], max_age=0)
    vector = BY_NAME["basic"]
    verified = verifier.verify(vector["token"], now=vector["timestamp"])
    assert verified.key_index == 1


def test_old_tokens_are_refused_with_their_age():
    """A token older than max_token_age is refused, and the reason says how old it is."""
    vector = BY_NAME["old_2024"]
    verifier = TokenVerifier([SECRET], max_age=86400)
    with pytest.raises(TokenError, match="token is 2 days old"):
        verifier.verify(vector["token"], now=vector["timestamp"] + 2 * 86400 + 10)


def test_max_token_age_zero_means_no_limit():
    """With max_token_age = 0 a token from 2024 still verifies."""
    vector = BY_NAME["old_2024"]
    TokenVerifier([SECRET], max_age=0).verify(vector["token"], now=vector["timestamp"] + 1e8)


def test_tokens_from_the_future_are_allowed_only_within_the_skew():
    """A token a little ahead of our clock passes; one far ahead is refused."""
    vector = BY_NAME["basic"]
    verifier = TokenVerifier([SECRET], max_age=86400, max_skew=60)
    verifier.verify(vector["token"], now=vector["timestamp"] - 59)
    with pytest.raises(TokenError, match="from the future"):
        verifier.verify(vector["token"], now=vector["timestamp"] - 3600)


def test_whitespace_around_the_token_is_ignored():
    """Spaces and newlines around a token do not make it invalid."""
    vector = BY_NAME["basic"]
    verifier = TokenVerifier([SECRET], max_age=0)
    assert verifier.verify(f"  {vector['token']}\n", now=vector["timestamp"]).plaintext


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("a", "not valid base64"),
        ("%%%", "not a Fernet token"),
        ("aGVsbG8=", "not a Fernet token"),
        ("", "not a Fernet token"),
    ],
)
def test_garbage_tokens_get_a_reason(token, reason):
    """Tokens that are not Fernet at all are refused with a precise reason."""
    with pytest.raises(TokenError, match=reason):
        TokenVerifier([SECRET], max_age=0).verify(token, now=0)


def test_encrypt_makes_tokens_that_the_sender_library_format_matches():
    """send-test's tokens decrypt with a plain Fernet built from base64(secret)."""
    token = encrypt(SECRET, b'{"type": "x"}')
    key = base64.b64encode(SECRET.encode())
    assert Fernet(key).decrypt(token.encode()) == b'{"type": "x"}'


def test_ages_read_like_a_person_would_say_them():
    """describe_age picks the largest whole unit."""
    assert describe_age(2 * 86400 + 5) == "2 days"
    assert describe_age(3600) == "1 hour"
    assert describe_age(59) == "59 seconds"


def test_the_bundled_vectors_are_the_shared_ones():
    """tests/vectors is a verbatim copy of the project's shared vectors, when those are present."""
    shared = VECTORS_PATH.parents[3] / "shared" / "vectors" / "dataslayer-fernet.json"
    if not shared.exists():
        pytest.skip("shared/ is not beside this checkout")
    assert shared.read_bytes() == VECTORS_PATH.read_bytes()
