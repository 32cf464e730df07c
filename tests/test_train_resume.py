"""Resumable training: fit(checkpoint=...) interrupted (KeyboardInterrupt from on_step, as a Colab disconnect would
be) and called again in a "fresh kernel" (new objects, other random states) must give exactly the history and
weights of an uninterrupted run."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synthetic_images
from nbhelpers import runtime, train
from nbhelpers.data import images


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest, and share a busy machine best, on one thread."""
    with runtime.threads(1):
        yield


EPOCHS = 3


def interrupt_at(k):
    def on_step(step, model):
        if step == k:
            raise KeyboardInterrupt
    return on_step


def scramble_rngs(seed):
    """A fresh kernel: every global random state is somewhere else."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def make(source="device_batches", init_seed=0, width=16):
    """Tiny model with dropout (global RNG) over augmented images (the batcher's generator), AdamW, per-step
    one-cycle schedule, an evaluation on fixed images: 5 batches of 8 per epoch."""
    data = synthetic_images(n=40, classes=4)
    if source == "device_batches":
        batches = images.DeviceBatches(data.x_train, data.y_train, 8, stats=images.STATS["cifar10"], seed=1,
                                       augment=images.Augment(crop_padding=2, flip=True, erase_size=3))
    else:  # a DataLoader shuffling with torch's global RNG
        x = torch.as_tensor(data.x_train).permute(0, 3, 1, 2).float() / 255
        batches = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, torch.as_tensor(data.y_train)), batch_size=8, shuffle=True)
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(width, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=EPOCHS * 5)
    xv = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    yv = torch.arange(16) % 4

    def evaluate(m):
        return {"val_loss": float(nn.functional.cross_entropy(m(xv), yv))}

    return model, opt, sched, batches, evaluate


def run(path=None, source="device_batches", init_seed=0, on_step=None, **kw):
    model, opt, sched, batches, evaluate = make(source, init_seed)
    hist = train.fit(model, opt, batches, nn.functional.cross_entropy, epochs=EPOCHS, scheduler=sched,
                     evaluate=evaluate, on_step=on_step, progress=False, checkpoint=path, **kw)
    return hist, model


def assert_same_run(a, b):
    hist_a, model_a = a
    hist_b, model_b = b
    assert hist_a.rows == hist_b.rows                      # every loss, lr and evaluation, exactly
    assert (hist_a.status, hist_a.samples) == (hist_b.status, hist_b.samples)
    for (name, p), q in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("source", ["device_batches", "dataloader"])
@pytest.mark.parametrize("every, stop_at", [(3, 8), (None, 7)])  # mid-epoch (last save: step 6) / epoch end (5)
def test_interrupted_run_resumes_exactly(tmp_path, capsys, source, every, stop_at):
    scramble_rngs(0)
    reference = run(source=source)
    path = tmp_path / "ckpt" / "run.pt"
    scramble_rngs(0)
    with pytest.raises(KeyboardInterrupt):
        run(path, source=source, on_step=interrupt_at(stop_at), checkpoint_every=every)
    assert path.exists() and not list(path.parent.glob("*.tmp*"))
    scramble_rngs(123)                                     # "fresh kernel": other random states and initial weights
    capsys.readouterr()
    resumed = run(path, source=source, init_seed=99, checkpoint_every=every)
    said = capsys.readouterr().out
    expected_step = 6 if every else 5
    assert said.count("\n") == 1 and f"resuming from {path} at step {expected_step}" in said
    assert_same_run(reference, resumed)


def test_checkpointing_does_not_change_the_run(tmp_path):
    scramble_rngs(0)
    reference = run()
    scramble_rngs(0)
    assert_same_run(reference, run(tmp_path / "a.pt", checkpoint_every=2))


def test_finished_checkpoint_returns_the_run_without_training(tmp_path, capsys):
    path = tmp_path / "run.pt"
    scramble_rngs(0)
    first = run(path)
    calls = []
    scramble_rngs(7)
    capsys.readouterr()
    again = run(path, init_seed=3, on_step=lambda s, m: calls.append(s))
    assert not calls and "finished run (15 steps)" in capsys.readouterr().out
    assert_same_run(first, again)
    assert again[0].wall_s == first[0].wall_s


def test_snapshots_survive_a_resume(tmp_path):
    probe = lambda m: m[1].weight.detach().clone()  # noqa: E731
    scramble_rngs(0)
    full = train.Snapshots(probe, steps=[2, 4, 9, 13])
    run(on_step=full)
    path = tmp_path / "run.pt"
    scramble_rngs(0)
    part = train.Snapshots(probe, steps=[2, 4, 9, 13])

    def then_stop(step, model):
        part(step, model)
        if step == 10:
            raise KeyboardInterrupt

    then_stop.state_dict, then_stop.load_state_dict = part.state_dict, part.load_state_dict
    with pytest.raises(KeyboardInterrupt):
        run(path, on_step=then_stop, checkpoint_every=5)
    fresh = train.Snapshots(probe, steps=[2, 4, 9, 13])
    run(path, on_step=fresh, checkpoint_every=5)
    assert fresh.at == full.at == [2, 4, 9, 13]
    for a, b in zip(fresh.frames, full.frames):
        assert torch.equal(a, b)


class CountingLoss:
    """A stateful loss function (like ultimus.Tally): its state_dict travels in the checkpoint."""

    def __init__(self):
        self.calls = 0

    def __call__(self, out, y):
        self.calls += 1
        return nn.functional.cross_entropy(out, y)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_stateful_loss_survives_a_resume(tmp_path):
    path = tmp_path / "run.pt"
    model, opt, sched, batches, _ = make()
    with pytest.raises(KeyboardInterrupt):
        train.fit(model, opt, batches, CountingLoss(), epochs=EPOCHS, scheduler=sched, on_step=interrupt_at(8),
                  checkpoint=path, checkpoint_every=3, progress=False)
    model, opt, sched, batches, _ = make()
    loss = CountingLoss()
    train.fit(model, opt, batches, loss, epochs=EPOCHS, scheduler=sched, checkpoint=path, checkpoint_every=3,
              progress=False)
    assert loss.calls == EPOCHS * 5


def test_checkpoint_of_another_run_is_an_error(tmp_path):
    path = tmp_path / "run.pt"
    run(path)
    model, opt, sched, batches, evaluate = make()
    wide = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.raises(ValueError, match="different run.*tensors"):
        train.fit(wide, torch.optim.AdamW(wide.parameters()), batches, nn.functional.cross_entropy,
                  epochs=EPOCHS, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="different run.*epochs"):
        train.fit(model, opt, batches, nn.functional.cross_entropy, epochs=EPOCHS + 1, checkpoint=path,
                  progress=False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train.fit(model, opt, batches, nn.functional.cross_entropy, epochs=1, checkpoint=path, checkpoint_every=0,
                  progress=False)
