"""bot.redact: secrets disappear, everything else an explanation needs comes through whole."""

from __future__ import annotations

import pytest

from bot.redact import REDACTED, is_secret_name, redact, redact_obj, remember_secrets

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)

# (text, the secret in it). The secret must be gone; what the table's id names must stay.
SECRETS = [
    pytest.param("bot token xoxb-1234567890-0987654321-AbCdEfGhIjKl", "xoxb-1234567890", id="xoxb"),
    pytest.param("user token xoxp-1234567890-0987654321-a1b2c3", "xoxp-1234567890", id="xoxp"),
    pytest.param("xoxa-2-1234567890-abcdef", "xoxa-2-1234567890", id="xoxa"),
    pytest.param("app token xapp-1-A0001-123456-abcdef0123", "xapp-1-A0001", id="xapp"),
    pytest.param("refresh xoxe.xoxp-1-Mi0yLTEyMzQ1Ng", "Mi0yLTEyMzQ1Ng", id="xoxe"),
    pytest.param("key sk-abcdefghijklmnopqrstuvwxyz012345", "sk-abcdefghij", id="openai"),
    pytest.param(
        "OPENAI_API_KEY: sk-proj-Ab12Cd34Ef56Gh78Ij90_Kl-MnOp", "sk-proj-Ab12", id="openai-proj"
    ),
    pytest.param("ghp_16C7e42F292c6912E7710c838347Ae178B4a used", "ghp_16C7e42F", id="ghp"),
    pytest.param("gho_16C7e42F292c6912E7710c838347Ae178B4a", "gho_16C7e42F", id="gho"),
    pytest.param("token ghs_16C7e42F292c6912E7710c838347Ae178B4a", "ghs_16C7e42F", id="ghs"),
    pytest.param(
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123",
        "11ABCDEFG0123456789",
        id="github-pat",
    ),
    pytest.param("aws key AKIAIOSFODNN7EXAMPLE in env", "AKIAIOSFODNN7EXAMPLE", id="akia"),
    pytest.param("session ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A", id="asia"),
    pytest.param(
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI",
        id="aws-secret",
    ),
    pytest.param(
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI",
        id="aws-secret-env",
    ),
    pytest.param("Authorization: Bearer abc.DEF-123_456", "abc.DEF-123_456", id="auth-bearer"),
    pytest.param("authorization=Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy", id="auth-basic"),
    pytest.param('{"Authorization": "Token 9f8e7d6c5b4a"}', "9f8e7d6c5b4a", id="auth-json"),
    pytest.param("curl -H 'Bearer 0a1b2c3d4e5f6a7b'", "0a1b2c3d4e5f6a7b", id="bearer"),
    pytest.param(
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
        ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
        id="jwt",
    ),
    pytest.param("REDIS_URL=redis://:hunter2@redis.internal:6379/0", "hunter2", id="url-pass"),
    pytest.param("postgres://app:s3cr3t@db.internal:5432/app", "s3cr3t", id="url-user-pass"),
    pytest.param("amqp://guest:p@ss@rabbit/vhost", "p@ss", id="url-at-in-pass"),
    pytest.param(
        "git clone https://0123456789abcdef0123@git.example.com/o/r.git",
        "0123456789abcdef0123",
        id="url-token-user",
    ),
    pytest.param("https://api.example.com/v1?token=abc123&x=1", "abc123", id="q-token"),
    pytest.param("https://maps.example.com/js?key=AIzaSyD-xyz0123", "AIzaSyD", id="q-key"),
    pytest.param("https://x.example.com/?secret=shh42", "shh42", id="q-secret"),
    pytest.param("https://x.example.com/login?user=a&password=pa55", "pa55", id="q-password"),
    pytest.param(
        "https://b.s3.amazonaws.com/o?X-Amz-Signature=deadbeef0123&X-Amz-Expires=60",
        "deadbeef0123",
        id="q-signature",
    ),
    pytest.param("https://blob.example.net/c/f?sv=2021&sig=AbC%2Bd%3D", "AbC%2Bd", id="q-sig"),
    pytest.param("https://x.example.com/?api_key=k-0987", "k-0987", id="q-api-key"),
    pytest.param("https://x.example.com/cb#a=1&access_token=at-777", "at-777", id="q-fragment"),
    pytest.param("https://x.example.com/?access_token=at-778&y=2", "at-778", id="q-access-token"),
    pytest.param("DB_PASSWORD=hunter2", "hunter2", id="env-password"),
    pytest.param("password: 'correct horse'", "correct horse", id="yaml-password"),
    pytest.param('{"user": "bob", "password": "hun\\"ter2"}', 'hun\\"ter2', id="json-password"),
    pytest.param("secret: s3cr3t-value", "s3cr3t-value", id="secret-colon"),
    pytest.param("slack_signing_secret=8f742231b10e8888abcd99yyyzzz85a5", "8f742231", id="signing"),
    pytest.param("api_key=abcd1234", "abcd1234", id="api-key"),
    pytest.param("--api-key=abcd1234 --verbose", "abcd1234", id="flag-api-key"),
    pytest.param("X-API-KEY: abcd1234", "abcd1234", id="header-api-key"),
    pytest.param("refresh_token=rt.0xdeadbeef", "rt.0xdeadbeef", id="refresh-token"),
    pytest.param(f"deploy key:\n{PEM}\nthen more", "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMx", id="pem"),
    pytest.param(
        '{"key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0B'
        '\\n-----END PRIVATE KEY-----\\n"}',
        "MIIEvQIBADANBgkqhkiG9w0B",
        id="pem-escaped-in-json",
    ),
    pytest.param(
        "log cut here: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU",
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU",
        id="pem-truncated",
    ),
    pytest.param(
        "https://hooks.slack.com/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX",
        "XXXXXXXXXXXXXXXXXXXXXXXX",
        id="slack-webhook",
    ),
    pytest.param(
        "Server=db;Database=app;User Id=sa;Pwd=Tr0ub4dor&3;", "Tr0ub4dor", id="conn-pwd"
    ),
    pytest.param(
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=q9Zx0Y1w2V3u4T5s6R7==;",
        "q9Zx0Y1w2V3u4T5s6R7",
        id="azure-account-key",
    ),
    pytest.param(
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=Ab1Cd2Ef3Gh4Ij5=",
        "Ab1Cd2Ef3Gh4Ij5",
        id="azure-sas-key",
    ),
    pytest.param("charge with sk_live_51H8abcdEFGHijkl0123", "sk_live_51H8abcd", id="stripe-live"),
    pytest.param("rk_test_4eC39HqLyjWDarjtT1zdp7dc", "rk_test_4eC39", id="stripe-restricted"),
    pytest.param("glpat-xY12abCD34efGH56ijKL", "glpat-xY12abCD34", id="gitlab"),
    pytest.param("npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "npm_a1B2c3D4e5F6", id="npm"),
    pytest.param("cookie xoxc-1234567890-abcdefabcdef", "xoxc-1234567890", id="xoxc"),
    pytest.param(
        "the webhook secret is 9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        id="secret-in-words",
    ),
    pytest.param("new token: 'Zq81mN0pLk29xR7w'", "Zq81mN0pLk29xR7w", id="token-in-words"),
    pytest.param("credentials=admin:Sup3rS3cret", "Sup3rS3cret", id="credentials"),
]


@pytest.mark.parametrize(("text", "secret"), SECRETS)
def test_secret_disappears(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert REDACTED in out or "***@" in out
    # Stable: a redacted text is left as it is.
    assert redact(out) == out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("token xoxb-1-2-abcdefg here", "token [redacted] here"),
        ("Authorization: Bearer abc.def-123456", "Authorization: Bearer [redacted]"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic [redacted]"),
        ("-H 'Authorization: Bearer xoxb-1-2-abcdefg'", "-H 'Authorization: Bearer [redacted]'"),
        ("redis://:hunter2@redis.internal:6379/0", "redis://***@redis.internal:6379/0"),
        ("postgres://app:p@ss@db.internal/app", "postgres://***@db.internal/app"),
        ("https://x.io/cb?code=1&token=abc&x=1", "https://x.io/cb?code=1&token=[redacted]&x=1"),
        ('{"password": "hunter2", "user": "bob"}', '{"password": "[redacted]", "user": "bob"}'),
        ("password: 'hunter2' # prod", "password: '[redacted]' # prod"),
        ("DB_PASSWORD=hunter2 PORT=5432", "DB_PASSWORD=[redacted] PORT=5432"),
        (f"before\n{PEM}\nafter", "before\n[redacted]\nafter"),
        (
            "https://hooks.slack.com/services/T0001/B0002/XXXXXXXX",
            "https://hooks.slack.com/services/[redacted]",
        ),
    ],
)
def test_replacement_keeps_the_context(text: str, expected: str) -> None:
    assert redact(text) == expected


ORDINARY = [
    "checkout v2.4.1 rolled back to v2.4.0 after 3m12s at 5% traffic",
    "release 3f9a1c0d7e2b4a6f8c1d3e5f7a9b0c2d4e6f8a0b by U0ABC123 in C0RELEASES",
    "release id 9b1f0c2e, flag checkout-canary, build 2024.06.01-rc.3",
    'sum(rate(http_requests_total{job="checkout",code=~"5.."}[5m]))'
    ' / sum(rate(http_requests_total{job="checkout"}[5m])) > 0.05',
    "histogram_quantile(0.99, sum by (le)"
    ' (rate(http_request_duration_seconds_bucket{track="canary"}[1m])))',
    "https://grafana.example.com/d/abc123/checkout?orgId=1&from=now-1h&var-track=canary",
    "https://github.com/acme/checkout/compare/v2.4.0...v2.4.1",
    "ssh://git@github.com/acme/checkout.git",
    "http://localhost:9090/api/v1/query?query=up",
    "mail alice@example.com or <@U0ABC123> about it",
    "the bearer of bad news; bearer instruments",
    "we use sk-learn and scikit-learn, task-runner, desk-lamp",
    "max_tokens=700, token_count: 12, tokens: 5, password_hint=ask-alice",
    "key: checkout, sort_key=name, monkey=banana",
    "error rate 7.5% vs 0.4% (p=0.003), latency p99 412ms",
    "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\nKeyError: 'x'",
    "AKIA is a prefix; ASIAN markets; SECRETARY general",
    "The keys are rotated. Tokens expire. Secrets live in Vault.",
    "eyJ alone is nothing, a.b.c is a hostname, 1.2.3 a version",
    "commit e83c5163316f89bfbde7d9ab23ca2e25604af290 (HEAD -> main)",
    "an sk-learn-compatible estimator, sk-learn-0.24 pinned",
    "the key is rotating tonight; the secret is out; a password is required",
    "the token is valid for 12 hours; key: value pairs",
    "AccountName=acme;DefaultEndpointsProtocol=https",
    "",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_redact_obj_walks_dicts_lists_and_tuples() -> None:
    record = {
        "service": "checkout",
        "version": "v2.4.1",
        "password": "hunter2",  # no shape of its own: caught by the key name
        "SLACK_BOT_TOKEN": "anything",
        "api_key": {"nested": "value"},
        "token": None,
        "has_secret": True,
        "max_tokens": 700,
        "env": ["REDIS_URL=redis://:pw@r:6379", ("AKIAIOSFODNN7EXAMPLE", 3)],
        "note": {"text": "see xoxb-1-2-abcdefg", "weight": 0.5},
    }

    out = redact_obj(record)

    assert out == {
        "service": "checkout",
        "version": "v2.4.1",
        "password": REDACTED,
        "SLACK_BOT_TOKEN": REDACTED,
        "api_key": REDACTED,
        "token": None,
        "has_secret": True,
        "max_tokens": 700,
        "env": ["REDIS_URL=redis://***@r:6379", (REDACTED, 3)],
        "note": {"text": f"see {REDACTED}", "weight": 0.5},
    }
    assert record["password"] == "hunter2"  # the input is not modified


def test_redact_obj_passes_other_values_through() -> None:
    assert redact_obj(42) == 42
    assert redact_obj(None) is None
    assert redact_obj("sk-abcdefghijklmnopqrst0vwxyz") == REDACTED


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("slack.signing-secret", True),
        ("aws_secret_access_key", True),
        ("apiKey", True),
        ("token", True),
        ("max_tokens", False),
        ("token_count", False),
        ("key", False),
        ("service", False),
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_the_bots_own_secrets_go_whatever_their_shape() -> None:
    signing = "8f742231b10e88888888abcd99zz85a5"  # a signing secret has no prefix to spot
    remember_secrets([signing, "short", None, "  padded-secret-value  "])

    assert redact(f"the signing secret {signing} leaked") == f"the signing secret {REDACTED} leaked"
    assert redact("padded-secret-value") == REDACTED
    assert redact("a short word") == "a short word"  # too short to be looked for as text
