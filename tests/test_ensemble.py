"""Ensembles: averaging checked by hand, evaluation, and member-by-member resumable training."""

import dataclasses

import pytest
import torch

from mnist_cnn.ensemble import (
    average_probabilities,
    ensemble_proba,
    evaluate_ensemble,
    load_members,
    train_members,
)
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.evaluation import metrics_from_proba
from mnist_cnn.models import build_model, recipe_for
from mnist_cnn.training import train


def test_average_is_the_mean_of_softmax_outputs_by_hand():
    a = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    b = torch.tensor([[0.5, 0.5], [0.6, 0.4]])
    c = torch.tensor([[0.1, 0.9], [0.1, 0.9]])
    avg = average_probabilities([a, b, c])
    assert torch.allclose(avg, torch.tensor([[1.5 / 3, 1.5 / 3], [0.9 / 3, 2.1 / 3]]))
    # a majority vote would say class 1 for row 1 too; averaging weighs confidence
    m = metrics_from_proba(avg, torch.tensor([0, 1]))
    assert m.confusion == [[1, 0], [0, 1]]


def test_metrics_from_proba_loss_is_mean_negative_log_likelihood():
    probs = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    m = metrics_from_proba(probs, torch.tensor([1, 0]))
    expected = -(torch.log(torch.tensor(0.75)) + torch.log(torch.tensor(0.5))) / 2
    assert m.loss == pytest.approx(float(expected))
    assert m.accuracy == 1.0  # both right: the tie in row 2 goes to class 0


@pytest.fixture(scope="module")
def two_members(tiny_dataset, runtime, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble")
    recipe = recipe_for("simple").replace(epochs=1, batch_size=50)
    paths = train_members(recipe, tiny_dataset, runtime, out, members=2, progress=False,
                          log=lambda s: None)
    return out, paths


def test_members_differ_and_the_ensemble_averages_them(two_members, tiny_dataset):
    _, paths = two_members
    members = load_members(paths)
    assert [meta.recipe.seed for _, meta in members] == [0, 1]
    p0, p1 = (ensemble_proba([m], tiny_dataset.test.images) for m, _ in members)
    assert not torch.allclose(p0, p1)
    both = ensemble_proba([m for m, _ in members], tiny_dataset.test.images, batch_size=33)
    assert torch.allclose(both, (p0 + p1) / 2, atol=1e-6)
    report = evaluate_ensemble(paths, tiny_dataset.test)
    assert [m.accuracy for _, m in report.members] == pytest.approx([
        float((p.argmax(1) == tiny_dataset.test.labels).float().mean()) for p in (p0, p1)])
    assert report.ensemble.accuracy == pytest.approx(
        float((both.argmax(1) == tiny_dataset.test.labels).float().mean()))


def test_finished_members_are_not_trained_again(two_members, tiny_dataset, runtime):
    out, paths = two_members
    before = [p.read_bytes() for p in paths]
    lines = []
    recipe = recipe_for("simple").replace(epochs=1, batch_size=50)
    train_members(recipe, tiny_dataset, runtime, out, members=2, progress=False, log=lines.append)
    assert [p.read_bytes() for p in paths] == before
    assert not any(line.startswith("Epoch:") for line in lines)


def test_an_interrupted_member_resumes_to_the_same_weights(tiny_dataset, runtime, tmp_path):
    recipe = recipe_for("simple").replace(epochs=2, batch_size=50)
    straight = train_members(recipe, tiny_dataset, runtime, tmp_path / "a", 1, False, lambda s: 0)
    # an interruption after epoch 1 leaves exactly what a 1-epoch run writes
    train(build_model(recipe), tiny_dataset, recipe.replace(epochs=1), runtime,
          tmp_path / "b" / "member-0", progress=False, log=lambda s: None)
    resumed = train_members(recipe, tiny_dataset, runtime, tmp_path / "b", 1, False, lambda s: 0)
    (m1, _), (m2, _) = load_members(straight + resumed)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_members_of_different_datasets_are_refused(two_members, tmp_path):
    _, paths = two_members
    from mnist_cnn.checkpoint import save_checkpoint
    model, meta = load_members(paths[:1])[0]
    other = dataclasses.replace(meta, classes=("a", "b", "c", "d", "e", "f", "g", "h", "i", "j"))
    save_checkpoint(tmp_path / "other.safetensors", model, other)
    with pytest.raises(MnistCnnError, match="classes"):
        load_members([paths[0], tmp_path / "other.safetensors"])
    with pytest.raises(MnistCnnError, match="at least one"):
        load_members([])
