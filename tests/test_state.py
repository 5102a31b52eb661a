"""state.py: classifying declared objects, freezing consistent copies, restoring in place,
the random generators and frame locals. In-process unit tests (no recorder is started)."""

from __future__ import annotations

import pickle
import random
import sys
import threading

import numpy as np
import pytest

from hindlog.state import (
    Freezer,
    Pickled,
    TensorRef,
    capturable_locals,
    declare,
    dumps_skeleton,
    load_into,
    replace_in_place,
    rng_state,
    set_frame_locals,
    set_rng_state,
    state_of,
    tensor_specs,
    thaw,
)


class Counter:
    """A user class following the state_dict protocol (and holding something unpicklable)."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, d: dict) -> None:
        self.n = d["n"]


class Plain:
    def __init__(self, a: int) -> None:
        self.a = a
        self.items = [a]


class HoldsLock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fn = lambda x: x


def roundtrip(value: object) -> object:
    """freeze -> pickle the skeleton (as the persister does) -> unpickle -> thaw."""
    tensors: list = []
    skeleton = Freezer().freeze(value, tensors)
    restored_skeleton = pickle.loads(dumps_skeleton(skeleton))
    return thaw(restored_skeleton, [t.data for t in tensors])


# ----------------------------------------------------------------- declaring


def test_declare_classifies_objects() -> None:
    assert declare("w", np.zeros(3)).kind == "array"
    assert declare("c", Counter()).kind == "stateful"
    assert declare("d", {"a": 1}).kind == "pickle"
    assert declare("l", [1, 2]).kind == "pickle"
    assert declare("p", Plain(1)).kind == "pickle"
    assert declare("f", lambda x: x + 1).kind == "pickle"  # cloudpickle takes lambdas


@pytest.mark.parametrize(
    "obj, type_name",
    [
        (HoldsLock(), "HoldsLock"),
        (threading.Lock(), "lock"),
        ((i for i in range(3)), "generator"),
    ],
)
def test_declare_rejects_unpicklable_objects_naming_them(obj: object, type_name: str) -> None:
    with pytest.raises(TypeError) as info:
        declare("thing", obj)
    message = str(info.value)
    assert "thing=" in message and type_name in message, message
    assert "state_dict" in message and "pickled" in message, message


# ----------------------------------------------------------------- freezing


def test_freeze_copies_arrays_and_rebuilds_containers() -> None:
    arr = np.arange(6.0).reshape(2, 3)
    value = {"arr": arr, "nested": [1, (2.5, "x"), {"k": np.float32(1.5)}], "none": None, "obj": Plain(3)}
    tensors: list = []
    skeleton = Freezer().freeze(value, tensors)
    arr += 100  # changes after the freeze do not reach the copy
    value["nested"].append("late")
    value["obj"].a = 99
    assert isinstance(skeleton["arr"], TensorRef) and len(tensors) == 1
    assert tensors[0].framework == "numpy" and tensors[0].shape == (2, 3) and tensors[0].nbytes == 48
    assert isinstance(skeleton["obj"], Pickled)
    back = thaw(pickle.loads(dumps_skeleton(skeleton)), [t.data for t in tensors])
    assert back["arr"].tolist() == np.arange(6.0).reshape(2, 3).tolist()
    assert back["nested"] == [1, (2.5, "x"), {"k": 1.5}]
    assert back["none"] is None
    assert back["obj"].a == 3 and back["obj"].items == [3]


def test_large_array_unchanged_since_the_last_freeze_is_not_copied_again() -> None:
    freezer = Freezer()
    big = np.random.default_rng(0).normal(size=(300, 100))  # 240 KB: above the pooling size
    first: list = []
    freezer.freeze({"x": big}, first)
    second: list = []
    freezer.freeze({"x": big}, second)
    assert second[0] is first[0]  # recognised by content: the earlier copy (and its object) is reused
    before = float(big[7, 3])
    big[7, 3] = 42.0  # an in-place change, which NumPy does not count anywhere
    third: list = []
    freezer.freeze({"x": big}, third)
    assert third[0] is not first[0]
    assert third[0].data[7, 3] == 42.0 and first[0].data[7, 3] == before
    same_content = big.copy()  # another array with the same content is a different object
    fourth: list = []
    freezer.freeze({"y": same_content}, fourth)
    assert fourth[0] is not third[0]


def test_a_tensor_unchanged_within_an_iteration_is_named_by_hash_not_copied_again() -> None:
    torch = pytest.importorskip("torch")
    from hindlog.objects import digest

    def live_name(t: object) -> str:
        return digest(memoryview(t.reshape(-1).view(torch.uint8).numpy()))

    freezer = Freezer()
    w = torch.randn(512, 1024)  # 2 MiB
    freezer.iteration = 3
    first: list = []
    freezer.freeze({"w": w}, first)  # a nested loop's exit: copied
    assert not first[0].by_name and torch.equal(first[0].data, w)
    second: list = []
    freezer.freeze({"w": w}, second)  # the iteration's end, the copy not yet written: named ...
    freezer.end()  # ... by the hash of its bytes, once the checkpoint's freezing ends
    assert second[0].by_name and second[0].data is None and second[0].content == live_name(w)
    w.data.mul_(2.0)  # a write the version counter does not see: the name follows the bytes
    third: list = []
    freezer.freeze({"w": w}, third)
    freezer.end()
    assert third[0].by_name and third[0].content == live_name(w) != second[0].content
    freezer.iteration = 4  # across iterations such writes are common: copied
    fourth: list = []
    freezer.freeze({"w": w}, fourth)
    assert not fourth[0].by_name and torch.equal(fourth[0].data, w)
    small = torch.randn(16, 16)  # small tensors are copied (they are stored inline, not as objects)
    a: list = []
    b: list = []
    freezer.freeze({"s": small}, a)
    freezer.freeze({"s": small}, b)
    assert not b[0].by_name
    # Many megabytes named at once are hashed on several threads: each name is its own tensor's.
    state = {f"w{k}": torch.randn(1024, 1024) for k in range(4)}  # 4 x 4 MiB
    freezer.begin(7)
    freezer.freeze(state, [])
    freezer.begin(7)
    named: list = []
    frozen = freezer.freeze(state, named)
    freezer.end()
    assert all(ft.by_name for ft in named) and [ft.content for ft in named] == [live_name(t) for t in state.values()]
    assert len({ft.content for ft in named}) == 4 and frozen.keys() == state.keys()


def test_buffers_reserved_ahead_receive_the_first_freeze_of_a_model_and_optimizer() -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.Linear(128, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 256)).sum().backward()
    opt.step()  # Adam's moments exist from the first step on
    opt_decl, model_decl = declare("opt", opt), declare("model", model)
    specs = tensor_specs(state_of(model_decl), torch) + tensor_specs(state_of(opt_decl), torch)
    # Weights and biases, and two moments (plus the step counter) for each of them.
    assert sorted(specs) == sorted([((128, 256), torch.float32)] * 3 + [((128,), torch.float32)] * 3
                                   + [((2, 128), torch.float32)] * 3 + [((2,), torch.float32)] * 3
                                   + [((), torch.float32)] * 4)
    freezer = Freezer()
    freezer.pool.reserve(torch, specs)
    reserved = {b.data_ptr() for bufs in freezer.pool._free.values() for b in bufs}
    assert len(reserved) == 3  # only the large ones are pooled: the three 128 KB (128, 256) tensors
    tensors: list = []
    skeleton = {"model": freezer.freeze(state_of(model_decl), tensors), "opt": freezer.freeze(state_of(opt_decl), tensors)}
    large = [ft for ft in tensors if ft.nbytes >= 64 * 1024]
    assert len(large) == 3 and {ft.data.data_ptr() for ft in large} == reserved
    # The copies are the state's values, not the zeroed buffers.
    restored = thaw(skeleton, [ft.data for ft in tensors])
    assert torch.equal(restored["model"]["0.weight"], model[0].weight)
    assert torch.equal(restored["opt"]["state"][0]["exp_avg"], opt.state[model[0].weight]["exp_avg"])


def test_loading_an_optimizer_copies_into_its_state_tensors_and_training_goes_on_the_same() -> None:
    torch = pytest.importorskip("torch")
    import copy

    def make() -> tuple:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        return model, torch.optim.Adam(model.parameters(), lr=0.1)

    def step(model, opt, x) -> None:
        model(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()

    xs = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(1))
    model, opt = make()
    step(model, opt, xs[0])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())  # a checkpoint
    step(model, opt, xs[1])
    step(model, opt, xs[2])
    live = dict(opt.state[model.weight])
    model.load_state_dict(saved_model)
    load_into(declare("opt", opt), saved_opt)
    for key, value in opt.state[model.weight].items():
        assert value is live[key]  # the same tensors, now holding the checkpoint's values
        assert torch.equal(value, saved_opt["state"][0][key])
    # Not aliased to what was loaded (a checkpoint's read-only file maps, in a real restore).
    assert opt.state[model.weight]["exp_avg"].data_ptr() != saved_opt["state"][0]["exp_avg"].data_ptr()
    # Training on gives what a fresh optimizer loaded the usual way gives.
    other, other_opt = make()
    other.load_state_dict(saved_model)
    other_opt.load_state_dict(saved_opt)
    for x in xs[1:]:
        step(model, opt, x)
        step(other, other_opt, x)
    assert torch.equal(model.weight, other.weight) and torch.equal(model.bias, other.bias)


@pytest.mark.parametrize("obj", [{"a": [1, 2], "b": {"c": 3}}, [1, "two", 3.0], Plain(7)], ids=["dict", "list", "object"])
def test_pickled_declared_state_round_trips_and_restores_in_place(obj: object) -> None:
    """A declared picklable object (kind 'pickle') comes back as itself, not as a wrapper,
    and is restored into the live object without changing its identity."""
    d = declare("x", obj)
    assert d.kind == "pickle"
    saved = roundtrip(state_of(d))
    assert type(saved) is type(obj)
    live = type(obj).__new__(type(obj)) if isinstance(obj, Plain) else type(obj)()
    if isinstance(live, Plain):
        live.__dict__.update({"a": -1, "items": []})
    restored = load_into(declare("x", live), saved)
    assert restored is live
    if isinstance(obj, Plain):
        assert (live.a, live.items) == (7, [7])
    else:
        assert live == obj


def test_load_into_arrays_and_stateful_objects_in_place() -> None:
    arr = np.zeros(4)
    saved = roundtrip(state_of(declare("a", np.arange(4.0))))
    assert load_into(declare("a", arr), saved) is arr and arr.tolist() == [0.0, 1.0, 2.0, 3.0]
    c = Counter()
    c.n = 5
    saved = roundtrip(state_of(declare("c", c)))
    fresh = Counter()
    assert load_into(declare("c", fresh), saved) is fresh and fresh.n == 5


def test_replace_in_place() -> None:
    d = {"a": 1}
    assert replace_in_place(d, {"b": 2}) is d and d == {"b": 2}
    items = [1]
    assert replace_in_place(items, [2, 3]) is items and items == [2, 3]
    s = {1}
    assert replace_in_place(s, {4}) is s and s == {4}
    arr = np.zeros(2)
    assert replace_in_place(arr, np.ones(2)) is arr and arr.tolist() == [1.0, 1.0]
    assert replace_in_place(3, 4) == 4  # immutable: the new value
    assert replace_in_place(np.zeros(2), np.ones(3)).shape == (3,)  # a shape change cannot be in place


# ----------------------------------------------------------------- random generators


def test_rng_state_round_trip_through_a_checkpoint() -> None:
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        random.seed(1)
        np.random.seed(2)
        saved = roundtrip(rng_state())
        expected = (random.random(), np.random.rand())
        random.seed(3)
        np.random.seed(4)
        set_rng_state(saved)
        assert (random.random(), np.random.rand()) == expected
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


# ----------------------------------------------------------------- frame locals


def test_set_frame_locals_in_a_function_frame() -> None:
    def body() -> tuple:
        best = 1.0
        history = [1]
        frame = sys._getframe()
        set_frame_locals(frame, {"best": 0.25, "history": [7, 8]})
        return best, history, id(history)

    best, history, _ = body()
    assert best == 0.25 and history == [7, 8]


def test_set_frame_locals_restores_containers_in_place() -> None:
    def body() -> bool:
        history = [1]
        before = id(history)
        set_frame_locals(sys._getframe(), {"history": [5]})
        return id(history) == before and history == [5]

    assert body()


def test_set_frame_locals_at_module_level() -> None:
    namespace: dict = {"set_frame_locals": set_frame_locals, "sys": sys}
    exec(compile("best = 1\nitems = [0]\nkeep = items\nset_frame_locals(sys._getframe(), {'best': 2, 'items': [3]})\n", "<m>", "exec"), namespace)
    assert namespace["best"] == 2 and namespace["items"] == [3]
    assert namespace["keep"] is namespace["items"]  # the list was refilled, not replaced


def test_capturable_locals_leaves_out_modules_functions_and_declared_objects() -> None:
    declared = np.zeros(2)

    def body() -> dict:
        loss = 0.5
        mod = np
        fn = len
        cls = Plain
        model = declared
        missing_is_fine = 1
        del missing_is_fine
        return capturable_locals(sys._getframe(), {"loss", "mod", "fn", "cls", "model", "missing_is_fine"}, {id(declared)})

    assert body() == {"loss": 0.5}


def test_loading_a_models_state_writes_only_the_tensors_that_differ() -> None:
    """A restore copies only what changed: a parameter holding the saved value already keeps
    its version counter, so a graph built from it before the restore can still be
    differentiated; one that differs gets the saved value."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    d = declare("model", model)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved["1.bias"] = torch.full((2,), 2.0)
    out = model[0](torch.randn(5, 3)).sum()  # a graph through 0.weight
    versions = {k: v._version for k, v in model.state_dict(keep_vars=True).items()}
    load_into(d, saved)
    after = model.state_dict(keep_vars=True)
    assert after["0.weight"]._version == versions["0.weight"]
    assert torch.equal(after["1.bias"], torch.full((2,), 2.0))
    out.backward()  # ("modified by an inplace operation" had the weight been copied into)
    assert model[0].weight.grad is not None


@pytest.mark.parametrize("make", ["meta", "nested", "quantized"])
def test_a_tensor_attribute_the_freezer_cannot_copy_is_left_out(make: str) -> None:
    """A module holding a meta, nested or quantized tensor as a plain attribute: taken with
    the model's tensor attributes, it failed every checkpoint's copy (none was kept)."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 2)
    model.odd = {"meta": lambda: torch.empty(3, device="meta"),
                 "nested": lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
                 "quantized": lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8)}[make]()
    model.fine = torch.ones(3)
    d = declare("model", model)
    extra = state_of(d)["__hindlog_attributes__"]
    assert list(extra["tensors"]) == ["0:fine"]
    Freezer().freeze(state_of(d), [])  # (raised for the odd one)
