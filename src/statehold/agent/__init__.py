"""The node agent: this node's gRPC service for the controller and the other agents.

A thin adapter: it authenticates (mutual TLS with the cluster CA, :mod:`.pki`,
:mod:`.auth`), translates (:mod:`.service`, errors through ``statehold.grpcerrors``) and
transports replication frames (:mod:`.feed`, :mod:`.client`, :mod:`.replicator`); what a
frame means, which copy may be written and how a stream is applied live in
``statehold.replication``, reached only through the :class:`.copies.Copies` port.
"""
