"""Code generated from agent.proto by statehold.protogen; do not edit."""
