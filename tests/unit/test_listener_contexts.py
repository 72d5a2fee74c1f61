"""The listener's supported presentation contexts copy cheaply for each association (pynetdicom
deep-copies them all on accept) and the copies behave as independent contexts."""

from __future__ import annotations

import copy

from edge.listener.dimse import SharedUIDContext, build_ae


def test_each_association_gets_independent_copies_sharing_the_uids() -> None:
    ae = build_ae(
        ae_title="EDGE",
        max_associations=4,
        max_pdu_size=1 << 20,
        acse_timeout=5,
        dimse_timeout=5,
        network_timeout=5,
    )
    contexts = ae.supported_contexts
    assert all(isinstance(cx, SharedUIDContext) for cx in contexts)
    copies = copy.deepcopy(contexts)
    for original, twin in zip(contexts, copies, strict=True):
        assert twin is not original
        # Shared, not rebuilt and re-validated (what made pynetdicom's copy 0.2-0.8 s).
        assert twin.abstract_syntax is original.abstract_syntax
        assert (twin.abstract_syntax, twin.transfer_syntax) == (
            original.abstract_syntax,
            original.transfer_syntax,
        )
        assert (twin.scu_role, twin.scp_role) == (original.scu_role, original.scp_role)
    copies[0].context_id = 7
    copies[0].transfer_syntax.append("1.2.3")  # a list of its own
    assert contexts[0].context_id is None and "1.2.3" not in contexts[0].transfer_syntax
