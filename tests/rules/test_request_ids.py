import uuid

from addons.rules.request_ids import RequestIds


def test_ids_are_version_4_uuids_written_as_uuid_writes_them_and_never_repeat():
    ids = RequestIds()
    seen = [ids.new() for _ in range(5000)]  # past several batches
    assert len(set(seen)) == len(seen)
    for text in seen[:600]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_two_generators_do_not_share_a_pool():
    assert RequestIds().new() != RequestIds().new()
