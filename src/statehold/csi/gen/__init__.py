"""Code generated from csi.proto by statehold.protogen; do not edit."""
