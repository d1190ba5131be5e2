"""The seeds' parallel semantics: batching over cards, clusters, images per cluster and MV units
gives exactly the single-image results, and the modelled time reflects the parallelism."""
import gc

import numpy as np
import onnx
import pytest

import microndla
from runtime.cards import POOL
from zoo import small_cnn


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((8, 3, 32, 32), dtype=np.float32)


@pytest.fixture(scope="module")
def single(small_cnn_onnx, images):
    ie = microndla.MDLA()
    ie.Compile(small_cnn_onnx)
    ys = np.concatenate([ie.Run(images[i:i + 1]) for i in range(len(images))])
    cycles = ie.GetInfo("hwcycles")
    ie.Free()
    return ys, cycles


@pytest.mark.parametrize("flags,batch", [
    ({"nfpgas": 2}, 2), ({"nclusters": 2}, 2), ({"nclusters": 4}, 4), ({"imgs_per_cluster": 3}, 3),
    ({"imgs_per_cluster": 4, "mvbatch": 1}, 4), ({"nclusters": 2, "imgs_per_cluster": 4, "mvbatch": 1}, 8),
    ({"nfpgas": 2, "nclusters": 2, "imgs_per_cluster": 2}, 8),
])
def test_batched_results_equal_single_image_runs(small_cnn_onnx, images, single, flags, batch):
    ie = microndla.MDLA()
    ie.SetFlag(flags)
    ie.Compile(small_cnn_onnx)
    assert ie.GetInfo("batch") == batch
    y = ie.Run(images[:batch])
    assert y.shape == (batch, 10)
    assert np.array_equal(y, single[0][:batch])
    ie.Free()


def modelled(small_cnn_onnx, images, **flags):
    ie = microndla.MDLA()
    ie.SetFlag(flags)
    ie.Compile(small_cnn_onnx)
    ie.Run(images[:ie.GetInfo("batch")])
    cycles = ie.GetInfo("hwcycles")
    ie.Free()
    return cycles


def test_modelled_time_reflects_parallelism(small_cnn_onnx, images, single):
    one = single[1]
    # cards are independent: two images on two cards take the time of one
    assert modelled(small_cnn_onnx, images, nfpgas=2) == one
    # clusters share the card's memory port: more than one image's time, far less than two
    two_clusters = modelled(small_cnn_onnx, images, nclusters=2)
    assert one < two_clusters < 1.5 * one
    # a cluster looping over its images takes about their sum
    four_serial = modelled(small_cnn_onnx, images, imgs_per_cluster=4)
    assert 3.9 * one < four_serial < 4.1 * one
    # one image per MV unit: weights loaded once for four images, fewer idle lanes
    assert modelled(small_cnn_onnx, images, imgs_per_cluster=4, mvbatch=1) < 0.9 * four_serial


def test_unlinked_objects_get_their_own_cards(small_cnn_onnx):
    gc.collect()                # objects of earlier tests that nothing reaches release their cards
    assert not any(c.owners for c in POOL.cards), "an earlier test left cards in use"
    objs = []
    for _ in range(POOL.size):
        ie = microndla.MDLA()
        ie.Compile(small_cnn_onnx)
        objs.append(ie)
    assert len({o._cards[0].index for o in objs}) == POOL.size
    extra = microndla.MDLA()
    with pytest.raises(microndla.MDLAError, match="free"):
        extra.Compile(small_cnn_onnx)
    objs[0].Free()
    extra.Compile(small_cnn_onnx)                      # a freed card is available again
    assert extra._cards[0].index == 0
    for o in objs[1:] + [extra]:
        o.Free()


def test_cards_of_unreachable_objects_in_a_cycle_are_reclaimed(small_cnn_onnx):
    """An object that nothing reaches but that sits in a reference cycle holds its cards until the
    cyclic garbage collector runs: a Compile that finds no free card collects first, then takes them."""
    gc.collect()
    gc.disable()                # the collector must not run on its own during the test
    try:
        for _ in range(POOL.size):
            ie = microndla.MDLA()
            ie.Compile(small_cnn_onnx)
            ie.myself = ie      # a cycle: only the cyclic collector frees it
        del ie
        assert all(c.owners for c in POOL.cards)
        fresh = microndla.MDLA()
        fresh.Compile(small_cnn_onnx)
        assert len(fresh._cards) == 1 and sum(bool(c.owners) for c in POOL.cards) == 1
        held = [microndla.MDLA() for _ in range(POOL.size - 1)]
        for o in held:
            o.Compile(small_cnn_onnx)
        with pytest.raises(microndla.MDLAError, match="only 0 of the 4 simulated cards are free"):
            microndla.MDLA().Compile(small_cnn_onnx)       # reachable objects keep theirs
        for o in held + [fresh]:
            o.Free()
    finally:
        gc.enable()


def test_maxfpga_is_settable(small_cnn_onnx):
    ie = microndla.MDLA()
    assert ie.GetInfo("maxfpga") == 4
    ie.SetFlag("maxfpga", 6)
    try:
        assert ie.GetInfo("maxfpga") == 6
        ie.SetFlag("nfpgas", 6)
        ie.Compile(small_cnn_onnx)
        assert len(ie._cards) == 6
        ie.Free()
    finally:
        ie.SetFlag("maxfpga", 4)


def test_linked_models_in_sequence_on_all_clusters(small_cnn_onnx, images, single, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(small_cnn(seed=9), str(other))
    alone = microndla.MDLA()
    alone.Compile(str(other))
    ref2 = alone.Run(images[:1])
    alone.Free()
    ie, ie2 = microndla.MDLA(), microndla.MDLA()
    ie.Compile(small_cnn_onnx)
    ie2.Compile(str(other), MDLA=ie)
    assert ie2._cards == ie._cards                               # same card
    assert ie2._compiled.memmap.base >= ie._compiled.memmap.end  # both resident
    for _ in range(2):
        assert np.array_equal(ie.Run(images[:1]), single[0][:1])
        assert np.array_equal(ie2.Run(images[:1]), ref2)
    ie2.Free()
    ie.Free()


def test_linked_models_on_disjoint_clusters_stream_together(small_cnn_onnx, images, single, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(small_cnn(seed=9), str(other))
    ie, ie2 = microndla.MDLA(), microndla.MDLA()
    ie.SetFlag({"nclusters": 2, "clustersbatchmode": 0})
    ie2.SetFlag({"nclusters": 2, "firstcluster": 2})
    ie.Compile(small_cnn_onnx)
    ie2.Compile(str(other), MDLA=ie)
    assert ie2._compiled.parallel.clusters == (2, 3)
    ie.PutInput(images[:2], "a")
    ie2.PutInput(images[2:4], "b")
    (y1, o1), (y2, o2) = ie.GetResult(), ie2.GetResult()
    assert (o1, o2) == ("a", "b")
    assert np.array_equal(y1, single[0][:2])
    ie2.Free()
    ie.Free()


def test_overlapping_linked_clusters_are_refused(small_cnn_onnx, tmp_path):
    ie, ie2 = microndla.MDLA(), microndla.MDLA()
    ie.SetFlag("nclusters", 2)
    ie.Compile(small_cnn_onnx)
    ie2.SetFlag({"nclusters": 2, "firstcluster": 1})
    with pytest.raises(microndla.MDLAError, match="overlap"):
        ie2.Compile(small_cnn_onnx, MDLA=ie)
    ie.Free()


@pytest.mark.parametrize("bitfile,nclusters", [("reference", 2), ("small", 2), ("reference", 4)])
def test_clusters_split_one_image(tmp_path, bitfile, nclusters):
    """clustersbatchmode: the clusters share each layer's work (barriers at layer boundaries); the
    result is bit-identical and the modelled time shorter where there is work to share."""
    import zoo
    path = tmp_path / "r18.onnx"
    onnx.save(zoo.resnet18(seed=2, input_shape=(1, 3, 64, 64)), str(path))
    x = np.random.default_rng(3).random((3, 64, 64), dtype=np.float32)   # batch dimension left out
    one = microndla.MDLA()
    one.SetFlag("bitfile", bitfile)
    one.Compile(str(path))
    y1, c1 = one.Run(x), one.GetInfo("hwcycles")
    one.Free()
    ie = microndla.MDLA()
    ie.SetFlag({"bitfile": bitfile, "nclusters": nclusters, "nobatch": 1})
    ie.Compile(str(path))
    assert ie.GetInfo("batch") == 1
    assert all(op.op != "BARRIER" or op.mask == (1 << nclusters) - 1
               for prog in ie._compiled.programs.values() for op in prog)
    y = ie.Run(x)
    assert np.array_equal(y, y1)
    assert ie.GetInfo("hwcycles") < c1
    ie.Free()


def test_linked_models_on_disjoint_clusters_share_the_card_in_modelled_time(small_cnn_onnx, images, tmp_path):
    """Queued calls of models linked on disjoint clusters run together on the card: their
    results are unchanged, their times include the contention for the memory port, and the
    outcome depends only on the order of the calls."""
    other = tmp_path / "other.onnx"
    onnx.save(small_cnn(seed=11), str(other))
    ie, ie2 = microndla.MDLA(), microndla.MDLA()
    ie.SetFlag({"nclusters": 2, "clustersbatchmode": 1})
    ie2.SetFlag({"nclusters": 2, "clustersbatchmode": 1, "firstcluster": 2})
    ie.Compile(small_cnn_onnx)
    ie2.Compile(str(other), MDLA=ie)
    alone1, c1 = ie.Run(images[0]), ie.GetInfo("hwcycles")
    alone2, c2 = ie2.Run(images[1]), ie2.GetInfo("hwcycles")
    seen = set()
    for _ in range(2):
        ie.PutInput(images[0], 1)
        ie2.PutInput(images[1], 2)
        (y1, o1), (y2, o2) = ie.GetResult(), ie2.GetResult()
        assert (o1, o2) == (1, 2)
        assert np.array_equal(y1, alone1) and np.array_equal(y2, alone2)
        j1, j2 = ie.GetInfo("hwcycles"), ie2.GetInfo("hwcycles")
        assert j1 >= c1 and j2 >= c2 and (j1, j2) != (c1, c2)     # the port is shared
        assert max(j1, j2) < c1 + c2                                # and they overlap
        seen.add((j1, j2))
    assert len(seen) == 1
    ie2.Free()
    ie.Free()
