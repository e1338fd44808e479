"""courselib.grading.wire: modules cross by value, as library classes only; in-place changes come back."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from courselib.grading import wire
from courselib.models import MLP


def crossed(obj, namespace=None):
    """``obj`` sent from the student's side and read as the clean room reads it (plain data, strict classes)."""
    return wire.rebuild(
        wire.plain_loads(wire.dumps(obj)), wire.main_class_resolver(namespace or {}), lambda n: f"<{n}>"
    )


def test_a_library_module_crosses_with_its_weights_and_mode():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    m[1].running_mean.add_(0.5)
    m[4].weight.requires_grad_(False)
    m.eval()
    x = torch.randn(2, 1, 2, 2)
    got = crossed(m)
    assert type(got) is nn.Sequential and [type(c) for c in got] == [type(c) for c in m]
    assert not got.training and not got[1].training
    assert got[4].weight.requires_grad is False and got[0].weight.requires_grad is True
    assert isinstance(got[0].weight, nn.Parameter)
    assert torch.equal(got(x), m(x))
    assert got.state_dict().keys() == m.state_dict().keys()


def test_a_courselib_module_crosses():
    torch.manual_seed(1)
    m = MLP(64, [16], 10)
    x = torch.randn(3, 64)
    assert torch.equal(crossed(m)(x), m(x))


def test_hooks_stay_behind():
    m = nn.Linear(2, 2)
    m.register_forward_hook(lambda mod, inp, out: out * 0)
    got = crossed(m)
    x = torch.ones(1, 2)
    assert not got._forward_hooks and torch.equal(got(x), nn.functional.linear(x, m.weight, m.bias))


class StudentNet(nn.Module):  # stands for a class the student's notebook defines
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x) * 0 + 1


def test_a_class_of_the_students_cannot_cross():
    StudentNet.__module__ = "__main__"
    with pytest.raises(wire.WireError, match="cannot be rebuilt"):
        crossed(StudentNet())
    # unless trusted code (an instructor cell) defined that class in the clean room's namespace
    assert isinstance(crossed(StudentNet(), {"StudentNet": StudentNet}), StudentNet)


def test_grading_classes_and_other_libraries_are_refused():
    parts = list(wire.module_parts(nn.Identity()))
    for module, qualname in [("courselib.grading.grader", "Grader"), ("collections", "OrderedDict"), ("os", "system")]:
        parts[1:3] = [module, qualname]
        with pytest.raises((wire.WireError, pickle.UnpicklingError)):
            wire.rebuild(tuple(parts), wire.main_class_resolver({}), lambda n: n)


def test_an_attribute_cannot_hide_the_forward_pass():
    parts = list(wire.module_parts(nn.Linear(2, 2)))
    parts[3] = {**parts[3], "forward": 3}
    with pytest.raises(wire.WireError, match="forward"):
        crossed(tuple(parts))


def test_notebook_functions_travel_by_name():
    def f():
        return 1

    f.__module__ = "__main__"
    f.__qualname__ = "binarize_det"
    assert crossed([f]) == ["<binarize_det>"]


def test_changes_in_place_are_detected_and_applied():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    seen = []
    m.register_forward_hook(lambda mod, inp, out: seen.append(1))
    before = wire.snapshot(m)
    assert not wire.changed(m, before)
    other = crossed(m)
    with torch.no_grad():
        other[0].weight.mul_(2)
    other.eval()
    assert wire.changed(other, before)
    wire.update_in_place(m, other)
    assert torch.equal(m[0].weight, other[0].weight) and not m.training and not m[1].training
    m(torch.ones(2, 3))
    assert seen == [1]  # the clean room's hooks on its own object survive
    t = torch.tensor([2.0, -3.0])
    t_before = wire.snapshot(t)
    new = t.clamp(-1, 1)
    assert wire.changed(new, t_before)
    wire.update_in_place(t, new)
    assert torch.equal(t, torch.tensor([1.0, -1.0]))
    with pytest.raises(wire.WireError):
        wire.update_in_place(t, m)


def test_pruned_modules_keep_their_masks_and_retrain_through_them():
    from torch.nn.utils import prune

    from courselib.pruning import magnitude_prune

    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    magnitude_prune(m, 0.5)
    got = crossed(m)
    x = torch.randn(4, 6)
    assert torch.equal(got(x), m(x))
    assert torch.equal(got[0].weight_mask, m[0].weight_mask)
    assert [type(h) for h in got[0]._forward_pre_hooks.values()] == [type(h) for h in m[0]._forward_pre_hooks.values()]
    with torch.no_grad():  # a step on the latent weights shows in the next forward pass, still masked
        got[0].weight_orig.add_(1.0)
    got(x)
    assert torch.equal(got[0].weight == 0, got[0].weight_mask == 0)
    prune.remove(got[0], "weight")  # and prune.remove works on the rebuilt module
    # an unpruned model that comes back pruned takes the masks and the hooks
    fresh = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    wire.update_in_place(fresh, crossed(m))
    assert torch.equal(fresh(x), m(x)) and hasattr(fresh[2], "weight_mask")


def test_results_that_are_tuples_of_arrays_come_back_as_they_are():
    import numpy as np

    def knn(a, b):
        return np.array([[1, 2], [3, 4]]), (a,)

    t = torch.zeros(2)
    reply = crossed(wire.call_with_copyback(knn, (t, 3), {}))
    got = wire.apply_copyback((t, 3), {}, reply)
    assert np.array_equal(got[0], [[1, 2], [3, 4]]) and torch.equal(got[1][0], t)
    same = wire.apply_copyback((t,), {}, crossed(wire.call_with_copyback(lambda x: x.clamp_(1, 2), (t,), {})))
    assert same is t and torch.equal(t, torch.ones(2))  # changed in place, and returned as the caller's own
