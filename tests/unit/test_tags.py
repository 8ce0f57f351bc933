"""The firewall tag scheme (cni_backend/net/tags.py): built, read, and the
shapes the previous version wrote, which GC must still classify."""

import hashlib

import pytest

from cni_backend.net import tags


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_tag_names_network_attachment_and_kind():
    tag = tags.of(tags.PORTMAP, "web", "c1", "eth0")
    expected = f"rcni-{digest('web')[:8]}-{digest('web' + chr(0) + 'c1' + chr(0) + 'eth0')[:16]}-portmap"
    assert str(tag) == expected
    assert str(tag).startswith(tags.network_prefix("web"))


@pytest.mark.parametrize("kind", sorted(tags.KINDS))
def test_each_kind_parses_back_to_itself(kind):
    tag = tags.of(kind, "web", "c1", "eth0")
    parsed = tags.parse(str(tag))
    assert parsed == tags.Parsed(tag.network_id, tag.attachment_id, frozenset({kind}), legacy=False)


def test_kinds_of_one_attachment_differ_and_share_the_attachment():
    made = {kind: tags.of(kind, "web", "c1", "eth0") for kind in tags.KINDS}
    assert len({str(t) for t in made.values()}) == len(tags.KINDS)
    assert len({(t.network_id, t.attachment_id) for t in made.values()}) == 1


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError):
        tags.of("vxlan", "web", "c1", "eth0")


def test_legacy_shapes_are_what_the_previous_version_wrote():
    # the previous version: network prefix + 16 hex, portmap + "p"
    old = f"rcni-{digest('web')[:8]}-{digest('web' + chr(0) + 'c1' + chr(0) + 'eth0')[:16]}"
    for kind in (tags.BRIDGE, tags.SPOOF, tags.FLAT):
        assert tags.of(kind, "web", "c1", "eth0").legacy == old
    assert tags.of(tags.PORTMAP, "web", "c1", "eth0").legacy == old + "p"
    assert tags.of(tags.BRIDGE, "web", "c1", "eth0").every == {old, old + "-bridge"}


def test_legacy_tags_are_classified_by_their_shape():
    bare = tags.parse(tags.of(tags.BRIDGE, "web", "c1", "eth0").legacy)
    assert bare.legacy and bare.kinds == {tags.BRIDGE, tags.SPOOF, tags.FLAT}
    with_p = tags.parse(tags.of(tags.PORTMAP, "web", "c1", "eth0").legacy)
    assert with_p.legacy and with_p.kinds == {tags.PORTMAP}


@pytest.mark.parametrize("text", ["", "rcni-isolation", "rcnibr-br0", "rancher-cni", "rcni-leaktest",
                                  "rcni-0123abcd-0123456789abcdef-vxlan", "rcni-0123abcd-0123456789abcdefq",
                                  "rcni-0123abcd-0123456789abcde", "rcni-0123ABCD-0123456789abcdef",
                                  "xrcni-0123abcd-0123456789abcdef"])
def test_other_comments_are_no_attachment_tags(text):
    assert tags.parse(text) is None and not tags.is_attachment_tag(text)


def test_stale_test_keeps_valid_attachments_other_kinds_and_other_networks():
    is_stale = tags.stale_test("web", {tags.BRIDGE, tags.SPOOF}, {("c1", "eth0")})
    assert not is_stale(str(tags.of(tags.BRIDGE, "web", "c1", "eth0")))       # valid
    assert is_stale(str(tags.of(tags.BRIDGE, "web", "c2", "eth0")))           # not valid
    assert is_stale(str(tags.of(tags.SPOOF, "web", "c2", "eth0")))
    assert not is_stale(str(tags.of(tags.PORTMAP, "web", "c2", "eth0")))      # another plug-in's
    assert not is_stale(str(tags.of(tags.BRIDGE, "db", "c2", "eth0")))        # another network's
    assert not is_stale("rcni-isolation")


def test_stale_test_classifies_legacy_tags():
    bridge_gc = tags.stale_test("web", {tags.BRIDGE, tags.SPOOF}, {("c1", "eth0")})
    portmap_gc = tags.stale_test("web", {tags.PORTMAP}, {("c1", "eth0")})
    gone_bare = tags.of(tags.BRIDGE, "web", "c2", "eth0").legacy
    gone_p = tags.of(tags.PORTMAP, "web", "c2", "eth0").legacy
    live_bare = tags.of(tags.BRIDGE, "web", "c1", "eth0").legacy
    assert bridge_gc(gone_bare) and not bridge_gc(gone_p) and not bridge_gc(live_bare)
    assert portmap_gc(gone_p) and not portmap_gc(gone_bare)

