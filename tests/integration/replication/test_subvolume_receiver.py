"""A replica in a ``subvolume`` pool (btrfs): the receiver's work file lives inside the
volume's subvolume, so its commit (a rename over the backing file) does not fail with
EXDEV; seeds, a resumed seed and incrementals arrive byte for byte."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from statehold.engine import nocow, subvolume
from statehold.engine.node import Node
from statehold.engine.types import GiB, MiB, PoolSpec
from statehold.errors import Unavailable
from statehold.replication import Receiver, Sender
from tests.fixtures.engine import close_node, engine_home_at
from tests.integration.replication.helpers import Pair, Site, make_copies, scribble, sha, sync, until

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """``a``: a file pool (XFS), the primary; ``b``: a subvolume pool on two images."""
    with engine_home_at() as home_a, engine_home_at() as home_b:
        node_a, node_b = Node(home_a), Node(home_b)
        try:
            pool_a = node_a.create_pool(PoolSpec(name="pa", image_size=2 * GiB))
            pool_b = node_b.create_pool(PoolSpec(
                name="pb", images=(str(home_b / "disks" / "b0.img"), str(home_b / "disks" / "b1.img")),
                image_size=2 * GiB, layout="subvolume"))
            yield Pair(Site(home_a, node_a, pool_a), Site(home_b, node_b, pool_b))
        finally:
            close_node(node_a)
            close_node(node_b)


def test_a_replica_in_a_subvolume_pool_receives_seed_resume_and_incrementals(pair: Pair) -> None:
    name = make_copies(pair, 64 * MiB)
    a, b = pair.a.pool, pair.b.pool
    entry = b.volumes_dir / name
    assert subvolume.is_subvolume(entry)
    with open(a.volume_path(name), "r+b") as fh:
        fh.write(random.Random(5).randbytes(64 * MiB))
    sender, receiver = Sender(a, name), Receiver(b, name, checkpoint=4 * MiB)
    with pytest.raises(Unavailable):
        receiver.apply(until(sender.open(epoch=1, base=None, peer="b"), 24 * MiB))
    # the seed in progress is made beside the backing file, in the volume's subvolume
    assert receiver.store.work_path(name) == entry / ".work"
    assert (entry / ".work").stat().st_size == 64 * MiB
    assert receiver.state().seed is not None

    sync(sender, receiver, 1)  # resumes the seed, then commits it by a rename
    assert sha(b.volume_path(name)) == sha(a.volume_path(name))
    assert sorted(p.name for p in entry.iterdir()) == ["volume.img"]
    rng = random.Random(6)
    for _ in range(2):  # incrementals: the work file is a reflink of the held point
        scribble(a.volume_path(name), rng, 40)
        sync(sender, receiver, 1)
        assert sha(b.volume_path(name)) == sha(a.volume_path(name))
        assert sorted(p.name for p in entry.iterdir()) == ["volume.img"]
    # the work files were made in the volume's NOCOW subvolume: the replica writes in place
    assert nocow.is_set(b.volume_path(name))
    held = b.list_snapshots(name)
    assert held and all(subvolume.readonly(b.snapshots_dir / s.name) for s in held)
