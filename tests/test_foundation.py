import base64

import psycopg

from sesame import crypto, db, ids


def test_smtp_password_matches_ses_vectors():
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert (
        crypto.smtp_password(secret, "us-east-1")
        == "BLBM/9hSUELfq8Gw+rU1YcBjkOxGbhT2XG763xVLGWL9"
    )
    assert (
        crypto.smtp_password(secret, "us-west-2")
        == "BF2PynzbSCAjX08zhZZnP/kW+T9P5zs/1Er0pi5vTEmd"
    )


def test_secret_box_round_trip_and_binding(tmp_path):
    key = crypto.load_or_create_key(None, tmp_path)
    assert key == crypto.load_or_create_key(None, tmp_path)
    assert len(key) == 32
    box = crypto.SecretBox(key)
    sealed = box.seal(b"s3cret", b"AKIA1")
    assert b"s3cret" not in sealed
    assert box.open(sealed, b"AKIA1") == b"s3cret"
    try:
        box.open(sealed, b"AKIA2")
    except Exception:
        pass
    else:
        raise AssertionError("a secret sealed for one key id opened for another")
    assert base64.b64decode((tmp_path / "secret.key").read_bytes())


def test_message_id_has_ses_shape():
    mid = ids.new_message_id(0x018C2F3E4A5B)
    assert mid.startswith("0100018c2f3e4a5b-") and mid.endswith("-000000")
    assert len(mid) == 4 + 12 + 1 + 36 + 7


def test_migrations_are_idempotent(database_url):
    assert db.migrate(database_url) == []
    with psycopg.connect(database_url) as conn:
        versions = [
            r[0]
            for r in conn.execute("select version from schema_migrations order by 1")
        ]
    assert versions[:2] == ["0001_core", "0002_lz4_bodies"]
