"""Hypothesis strategies that build arbitrary CSI request messages from their descriptors.

Every field is independently present or absent; strings come from a pool that mixes
garbage with plausible ids and paths (so fuzzing reaches past the first validation), ints
include 0, negatives and huge values, enums include values the schema does not define.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor


def _strings(pool: Sequence[str], weight: int = 1) -> st.SearchStrategy[str]:
    plausible = st.sampled_from(list(pool) or [""])
    return st.one_of(*([plausible] * weight), st.text(max_size=20))


def _scalar(field: FieldDescriptor, strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t == F.TYPE_STRING:
        return strings
    if t == F.TYPE_BYTES:
        return st.binary(max_size=8)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 40))
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return st.one_of(st.sampled_from([0, 1, 2, -1]), st.integers(-(2**31), 2**31 - 1))
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        sizes = [0, 1, -1, 1 << 20, (1 << 20) + 1, 300 << 20, 1 << 30, 1 << 40, 2**63 - 1]
        return st.one_of(st.sampled_from(sizes), st.integers(-(2**63), 2**63 - 1))
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return st.floats(allow_nan=False)


def messages(
    descriptor: Descriptor,
    cls: type[Message],
    strings: Sequence[str] = (),
    depth: int = 3,
    *,
    present: int = 50,
    weight: int = 1,
) -> st.SearchStrategy[Message]:
    """Random instances of ``cls`` (whose descriptor is ``descriptor``).

    ``present``: percent chance each field is set; ``weight``: how much more often a string
    comes from ``strings`` than from random text. Raising both drives requests past the
    first validation into the backend."""
    text = _strings(strings, weight)

    @st.composite
    def build(draw: st.DrawFn, desc: Descriptor = descriptor, level: int = depth) -> Message:
        msg = desc._concrete_class()
        for field in desc.fields:
            if draw(st.integers(0, 99)) >= present:
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_f, val_f = (
                    field.message_type.fields_by_name["key"],
                    field.message_type.fields_by_name["value"],
                )
                entries = draw(st.dictionaries(_scalar(key_f, text), _scalar(val_f, text), max_size=3))
                getattr(msg, field.name).update(entries)
            elif field.type == F.TYPE_MESSAGE:
                if level <= 0:
                    continue
                count = draw(st.integers(0, 2)) if field.is_repeated else 1
                for _ in range(count):
                    sub = draw(build(field.message_type, level - 1))
                    if field.is_repeated:
                        getattr(msg, field.name).add().CopyFrom(sub)
                    else:
                        getattr(msg, field.name).CopyFrom(sub)
            elif field.is_repeated:
                getattr(msg, field.name).extend(draw(st.lists(_scalar(field, text), max_size=3)))
            else:
                setattr(msg, field.name, draw(_scalar(field, text)))
        return msg

    return build()
