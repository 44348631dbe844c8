"""The device-resident batch loader: order, sharding, and exact mid-epoch resume."""

from types import SimpleNamespace

import pytest
import torch

from handprop.data import DataError, DeviceBatches, DigitsDataModule
from handprop.train import train

from conftest import FAST, compose_config


def _loader(n=103, batch_size=10, **kw):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, 2, 2).contiguous()
    return DeviceBatches(images, torch.arange(n), batch_size, **kw)


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return torch.cat([labels for _, labels in loader])


def test_every_sample_exactly_once_per_epoch_in_batches():
    loader = _loader(shuffle=True, seed=3)
    assert len(loader) == 11
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [10] * 10 + [3]
    for images, labels in batches:  # images and labels travel together
        assert torch.equal(images[:, 0, 0].long(), labels)
    for epoch in range(3):
        assert sorted(_epoch(loader, epoch).tolist()) == list(range(103))


def test_order_depends_on_seed_and_epoch_only():
    a, b = _loader(shuffle=True, seed=5), _loader(shuffle=True, seed=5)
    assert torch.equal(_epoch(a, 2), _epoch(b, 2))
    assert not torch.equal(_epoch(a, 0), _epoch(a, 1))
    assert not torch.equal(_epoch(a, 0), _epoch(_loader(shuffle=True, seed=6), 0))
    assert torch.equal(_epoch(_loader(shuffle=False)), torch.arange(103))


def test_two_ranks_shard_disjointly_and_evenly():
    ranks = [_loader(shuffle=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for epoch in range(3):
        shards = [_epoch(loader, epoch) for loader in ranks]
        assert len(shards[0]) == len(shards[1]) == 51 and len(ranks[0]) == len(ranks[1])
        assert not set(shards[0].tolist()) & set(shards[1].tolist())
    # evaluation shards are not cut: together they cover every sample exactly once
    evals = [_loader(rank=r, world_size=2, even_shards=False) for r in (0, 1)]
    assert sorted(torch.cat([_epoch(loader) for loader in evals]).tolist()) == list(range(103))


def test_resume_mid_epoch_continues_with_the_same_batches():
    full = _loader(shuffle=True, seed=9)
    full.set_epoch(4)
    reference = [labels for _, labels in full]
    first = _loader(shuffle=True, seed=9)
    first.set_epoch(4)
    for _, _ in zip(range(4), first):  # the model consumed four batches, then the run stopped
        first.mark_consumed()
    resumed = _loader(shuffle=True, seed=9)
    resumed.load_state_dict(first.state_dict())
    resumed.set_epoch(4)  # Lightning does this at the start of the resumed epoch
    rest = [labels for _, labels in resumed]
    assert len(rest) == len(reference) - 4
    assert all(torch.equal(a, b) for a, b in zip(rest, reference[4:]))
    resumed.set_epoch(5)  # the next epoch starts from its first batch again
    assert len(list(resumed)) == len(reference)


def test_state_from_other_data_is_refused():
    state = _loader(shuffle=True, seed=9).state_dict()
    with pytest.raises(DataError, match="resume with the same data and seed"):
        _loader(n=50, shuffle=True, seed=9).load_state_dict(state)


def test_global_batch_must_divide_among_processes():
    dm = DigitsDataModule("sample", batch_size=127)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(global_rank=0, world_size=2, training=False)  # process 0 of a two-process run
    with pytest.raises(
        DataError, match=r"^data.batch_size=127: is the global batch and must divide evenly among the 2 "
    ):
        dm.train_dataloader()


def test_both_loaders_train_from_the_config(tmp_path):

    for loader in ("tensor", "dataloader"):
        metrics = train(compose_config("train", [*FAST, f"data.loader={loader}"], tmp_path / loader))
        assert metrics["test/acc"] > 0.3 and metrics["trainer/global_step"] == 8


@pytest.mark.slow
def test_a_run_resumed_mid_epoch_ends_where_the_uninterrupted_run_ends(tmp_path):
    """Train 2 epochs in one go; train again but stop after 6 of the 32 batches of the
    second epoch, then resume from that step's checkpoint: the same final parameters,
    bitwise. The default one-cycle schedule asks for the run's length while the
    optimiser is built, which is what made Lightning build the loader before restoring
    its state; the data module's own state hooks cover that. The interrupted run trains one
    mini-batch per Lightning step (its checkpoint every step needs that); the resumed run,
    whose model.chunk=null would choose chunks, goes on one step at a time, as the
    checkpoint's epoch was trained."""

    common = [o for o in FAST if "limit_train_batches" not in o] + [
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "callbacks.gradient_audit=null",
        "trainer.limit_val_batches=1",
    ]
    train(compose_config("train", common, tmp_path / "straight"))
    interrupted = common + [
        "+callbacks.every_step._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.every_step.dirpath={tmp_path / 'steps'}",
        "+callbacks.every_step.every_n_train_steps=1",
        "+callbacks.every_step.save_top_k=-1",
        "+callbacks.every_step.filename='{step}'",
        "+callbacks.stop._target_=conftest.StopAtStep",
        "+callbacks.stop.step=38",
    ]
    train(compose_config("train", interrupted, tmp_path / "interrupted"))
    ckpt = tmp_path / "steps" / "step=38.ckpt"
    assert torch.load(ckpt, weights_only=True)["DigitsDataModule"]["train_loader"] == {
        "epoch": 1,
        "consumed": 6,
        "seed": 42,
        "size": 4000,
        "chunk": 1,  # (a checkpoint every training step: one mini-batch per Lightning step)
        "chunks_done": 6,
    }
    train(compose_config("train", common + [f"ckpt_path='{ckpt}'"], tmp_path / "resumed"))
    # and from the end of the first epoch (step 32): "k epochs, then resume to N"
    train(compose_config("train", common + [f"ckpt_path='{tmp_path / 'steps' / 'step=32.ckpt'}'"], tmp_path / "epoch"))
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for run in ("resumed", "epoch"):
        other = torch.load(tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        for name in straight["state_dict"]:
            assert torch.equal(straight["state_dict"][name], other["state_dict"][name]), (run, name)
        # the optimiser's state too: Adam's moments and step counts, bitwise
        for (pid, a), (_, b) in zip(
            straight["optimizer_states"][0]["state"].items(), other["optimizer_states"][0]["state"].items()
        ):
            for key in a:
                assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), (run, pid, key)
        assert straight["global_step"] == other["global_step"] == 64
