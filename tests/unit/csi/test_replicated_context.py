"""Which volumes NodeStage fences by the cluster's record: those whose context (the PV's
volumeAttributes, written by CreateVolume) asks for more than one copy."""

from __future__ import annotations

from statehold.csi import backend_local, replicated


def test_the_stage_check_reads_the_key_create_volume_writes() -> None:
    assert replicated.REPLICAS_KEY == backend_local.REPLICAS_KEY
    _topology, context = backend_local.replicated_view("p/v", {backend_local.REPLICAS_KEY: "3"}, "n1")
    assert replicated.replicated(context)


def test_one_copy_or_no_word_is_not_replicated() -> None:
    assert not replicated.replicated({})
    assert not replicated.replicated({replicated.REPLICAS_KEY: "1"})
    assert not replicated.replicated({replicated.REPLICAS_KEY: "two"})
    assert replicated.replicated({replicated.REPLICAS_KEY: "2"})
