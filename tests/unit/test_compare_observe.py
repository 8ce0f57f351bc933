"""cnm-shim compare's normaliser: two containers' rules compare equal once
their own identities are placeholders, whoever named the container."""

from cnm_shim.compare.observe import Normaliser


def test_container_ids_in_the_reference_plugins_rule_comments_become_placeholders():
    rule = '-A POSTROUTING -s 10.1.0.5/32 -m comment --comment "name: \\"net\\" id: \\"{}\\"" -j CNI-{}'
    norm = Normaliser()
    norm.learn("10.1.0.5", "<ip>")
    seen = {norm(rule.format(cid, "0123456789abcdef01234567")) for cid in
            ("rcmp-rcmp-ctr-1-b91bad", "rcmpns1e65d50", "4f9c2d0e8a7b" * 5)}
    assert seen == {'-A POSTROUTING -s <ip>/32 -m comment --comment "name: \\"net\\" id: \\"<id>\\"" -j CNI-<id>'}


def test_the_network_name_in_a_comment_is_kept():
    assert 'name: \\"blue\\"' in Normaliser()('--comment "name: \\"blue\\" id: \\"x1\\""')
