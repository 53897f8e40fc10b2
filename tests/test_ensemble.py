"""Ensembles: averaging checked by hand, evaluation, and member-by-member resumable training."""

import dataclasses
import shutil

import pytest
import torch

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.inference.ensemble import (
    average_probabilities,
    disagreement,
    ensemble_proba,
    evaluate_ensemble,
    greedy_order,
    keep_members,
    load_members,
    select_members,
    shared_errors,
)
from mnist_cnn.inference.evaluation import metrics_from_proba
from mnist_cnn.models.registry import build_model, recipe_for
from mnist_cnn.training.ensemble import member_name, member_recipes, train_members, train_recipes
from mnist_cnn.training.loop import train


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
    from mnist_cnn.models.checkpoint import save_checkpoint
    model, meta = load_members(paths[:1])[0]
    other = dataclasses.replace(meta, classes=("a", "b", "c", "d", "e", "f", "g", "h", "i", "j"))
    save_checkpoint(tmp_path / "other.safetensors", model, other)
    with pytest.raises(MnistCnnError, match="classes"):
        load_members([paths[0], tmp_path / "other.safetensors"])
    with pytest.raises(MnistCnnError, match="at least one"):
        load_members([])


# --------------------------------------------------------------------------------------------
# Diverse ensembles (issue 13)


def test_disagreement_and_shared_errors_by_hand():
    labels = torch.tensor([0, 1, 2, 3])
    a = torch.eye(4)[[0, 1, 0, 0]]  # wrong on images 2 and 3
    b = torch.eye(4)[[0, 2, 0, 3]]  # wrong on images 1 and 2
    assert disagreement(a, b) == pytest.approx(0.5)  # images 1 and 3
    assert shared_errors(a, b, labels) == 1  # image 2
    assert disagreement(a, a) == 0.0


def test_greedy_order_adds_what_corrects_first():
    labels = torch.zeros(4, dtype=torch.long)

    def member(*p_right):  # two classes; the probability given to the right one, per image
        right = torch.tensor(p_right)
        return torch.stack([right, 1 - right], 1)

    strong = member(0.9, 0.9, 0.9, 0.4)  # 1 error (image 3)
    fixer = member(0.4, 0.6, 0.6, 0.9)  # 1 error (image 0), and it fixes image 3 with `strong`
    clone = member(0.6, 0.6, 0.6, 0.3)  # `strong`'s error, and less sure where it is right
    bad = member(0.1, 0.1, 0.1, 0.1)  # 4 errors
    greedy = greedy_order([bad, clone, fixer, strong], labels)
    # strong and fixer have one error each; strong's loss is lower
    assert greedy.order[:2] == [3, 2]
    assert greedy.errors[:2] == [1, 0]
    assert greedy.order[2:] == [1, 0]


def test_only_members_significantly_worse_than_the_best_are_left_out():
    labels = torch.zeros(1000, dtype=torch.long)

    def member(wrong):  # two classes; wrong on the given images
        p = torch.full((1000,), 0.9)
        p[list(wrong)] = 0.2
        return torch.stack([p, 1 - p], 1)

    best = member(range(10))
    close = member(range(5, 18))  # 13 errors: 8 worse than best's, 5 better
    broken = member(range(40))  # 40 errors, 30 of them where the best is right
    verdicts = keep_members([close, best, broken], labels)
    assert [v.errors for v in verdicts] == [13, 10, 40]
    assert (verdicts[0].worse, verdicts[0].better) == (8, 5)
    assert [v.kept for v in verdicts] == [True, True, False]
    assert verdicts[1].p_value == 1.0 and verdicts[2].p_value < 1e-8


def test_member_specs_give_recipes_seeds_and_folder_names():
    recipes = member_recipes(["best:elastic", "simple", "wide:light:7", "best::5"], seed=10,
                             epochs=2)
    assert [(r.model, r.augment, r.seed, r.epochs) for r in recipes] == [
        ("best", "elastic", 10, 2), ("simple", "none", 11, 2), ("wide", "light", 7, 2),
        ("best", "standard", 5, 2)]
    assert recipes[0].lr == recipe_for("best").lr  # the rest is the model's own recipe
    assert [member_name(r) for r in recipes] == [
        "best-elastic-seed10", "simple-none-seed11", "wide-light-seed7", "best-standard-seed5"]


@pytest.mark.parametrize("spec, message", [
    ("nosuch", "unknown model"),
    ("best:blurry", "unknown augmentation 'blurry'"),
    ("best:none:x", "not a whole number"),
    ("best:none:1:2", "MODEL\\[:AUGMENT\\[:SEED\\]\\]"),
    (":none", "MODEL\\[:AUGMENT"),
])
def test_bad_member_specs_are_one_line_errors(spec, message):
    with pytest.raises(MnistCnnError, match=message):
        member_recipes([spec])


class SealedSplit:
    """A test split that fails whoever touches it: model selection must not look at it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self):
        raise AssertionError("the test split was read (len)")


@pytest.fixture(scope="module")
def diverse(tiny_dataset, runtime, tmp_path_factory):
    """Two architectures and two augmentations, trained on data whose test split is sealed."""
    out = tmp_path_factory.mktemp("diverse")
    sealed = dataclasses.replace(tiny_dataset, test=SealedSplit())
    recipes = member_recipes(["simple:none", "fast:light"], epochs=3, batch_size=50)
    paths = train_recipes(recipes, sealed, runtime, out, progress=False, log=lambda s: None)
    return out, recipes, paths, sealed


def test_a_diverse_ensemble_trains_selects_on_validation_and_evaluates(diverse, tiny_dataset):
    out, recipes, paths, sealed = diverse
    assert [p.parent.name for p in paths] == ["simple-none-seed0", "fast-light-seed1"]
    members = load_members(paths)
    assert [(m.recipe.model, m.recipe.augment) for _, m in members] == [
        ("simple", "none"), ("fast", "light")]
    with pytest.raises(AssertionError, match="test split was read"):
        evaluate_ensemble(paths, sealed.test)  # the seal works: reading it would fail the fixture
    verdicts = select_members(paths, sealed.val)  # validation only
    probs = [ensemble_proba([m], tiny_dataset.val.images) for m, _ in members]
    errors = [int((p.argmax(1) != tiny_dataset.val.labels).sum()) for p in probs]
    assert [v.errors for v in verdicts] == errors
    assert any(v.kept for v in verdicts)
    chosen = [p for p, v in zip(paths, verdicts) if v.kept]
    report = evaluate_ensemble(chosen, tiny_dataset.test)  # reported on the test split
    averaged = ensemble_proba([m for m, _ in load_members(chosen)], tiny_dataset.test.images)
    assert report.ensemble.accuracy == pytest.approx(
        float((averaged.argmax(1) == tiny_dataset.test.labels).float().mean()))
    assert report.ensemble.accuracy > 0.5  # learnt (chance: 0.1)


def test_a_diverse_ensemble_resumes_member_by_member(diverse, runtime):
    out, recipes, paths, sealed = diverse
    kept = paths[0].read_bytes()
    shutil.rmtree(paths[1].parent)  # the second member was never finished
    lines = []
    again = train_recipes(recipes, sealed, runtime, out, progress=False, log=lines.append)
    assert again == paths
    assert paths[0].read_bytes() == kept
    assert sum(line.startswith("Epoch:") for line in lines) == recipes[1].epochs  # it alone
    assert load_members(paths)[1][1].recipe == recipes[1]


def test_members_listed_twice_are_refused(tiny_dataset, runtime, tmp_path):
    recipes = member_recipes(["simple:none:3", "simple:none:3"])
    with pytest.raises(MnistCnnError, match="listed twice"):
        train_recipes(recipes, tiny_dataset, runtime, tmp_path, progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--member", "best", "--model", "best"], "without --model"),
    (["--model", "best"], "give --model and --members N, or --member"),
    (["--member", "best", "--member", "simple"], "differ in precision"),
])
def test_ensemble_train_command_errors(capsys, argv, message):
    from mnist_cnn.cli import main
    assert main(["ensemble", "train", *argv]) == 1
    assert message in capsys.readouterr().err


def test_ensemble_train_command_with_member_specs(mnist_data_dir, tmp_path, capsys):
    from mnist_cnn.cli import main
    out = tmp_path / "ens"
    argv = ["ensemble", "train", "--member", "simple:none", "--member", "fast:light:9",
            "--epochs", "0.02", "--precision", "fp32", "--out", str(out), "--no-progress",
            "--data-dir", str(mnist_data_dir), "--device", "cpu", "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["fast-light-seed9", "simple-none-seed0"]
    assert "members on the validation split" in printed
    kept = [line.split()[0].rstrip(":") for line in printed.splitlines()
            if line.startswith("  ") and line.endswith("(kept)")]
    assert 1 <= len(kept) <= 2
    members = [line for line in printed.splitlines()
               if line.startswith("member ") and ": accuracy " in line]
    assert len(members) == len(kept)  # the test split reports the chosen members alone
    assert all(any(name in line for name in kept) for line in members)
    assert "(10000 test images)" in printed
    assert main(argv) == 0  # again: nothing left to train
    assert "Epoch:" not in capsys.readouterr().out


def test_an_ensemble_trained_on_all_images_keeps_every_member(mnist_data_dir, tmp_path, capsys):
    from mnist_cnn.cli import main
    argv = ["ensemble", "train", "--member", "simple:none", "--member", "fast:light:9",
            "--epochs", "0.02", "--precision", "fp32", "--validation", "0", "--out",
            str(tmp_path / "ens"), "--no-progress", "--data-dir", str(mnist_data_dir),
            "--device", "cpu", "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "no validation" in printed and "validation split" not in printed
    assert sum(line.startswith("member ") and ": accuracy " in line
               for line in printed.splitlines()) == 2
    assert "Ensemble accuracy (2 members" in printed
