"""Code generated from csi.proto by statehold.csi.codegen; do not edit."""
