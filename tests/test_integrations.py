"""seer_kernels.integrations: patching lightly (installed) and solo-learn (absent here;
its module layout is rebuilt in a temporary package to test the patch itself), and the
docs/swav.md example, executed."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_swav import RUNNABLE, cosine_scores, crops, default_backend_runs  # noqa: F401
from tolerance import assert_close_rule

from seer_kernels import integrations
from seer_kernels.swav import SwAVLoss, SwAVPrototypes

lightly_loss = pytest.importorskip("lightly.loss.swav_loss")
lightly_loss_pkg = pytest.importorskip("lightly.loss")
lightly_modules = pytest.importorskip("lightly.models.modules")
lightly_heads = pytest.importorskip("lightly.models.modules.heads")

LIGHTLY_ORIGINALS = {
    "sinkhorn": lightly_loss.sinkhorn,
    "SwaVLoss": lightly_loss.SwaVLoss,
    "SwaVPrototypes": lightly_heads.SwaVPrototypes,
}
# Code here passes backend=None (a lightly drop-in): give it a backend that runs.
pytestmark = pytest.mark.usefixtures("default_backend_runs")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "swav.md"


@pytest.fixture
def unpatched():
    """Every test leaves lightly as it found it, even when it fails half-way."""
    yield
    integrations.unpatch_lightly()
    assert lightly_loss.SwaVLoss is LIGHTLY_ORIGINALS["SwaVLoss"]
    assert lightly_loss.sinkhorn is LIGHTLY_ORIGINALS["sinkhorn"]
    assert lightly_modules.SwaVPrototypes is LIGHTLY_ORIGINALS["SwaVPrototypes"]


# ------------------------------------------------------------------------ lightly


def test_patch_lightly_replaces_in_place_and_restores(unpatched):
    x = crops(5, 16, 40, seed=2)
    queue = [cosine_scores(32, 40, seed=3 + i) for i in range(2)]
    before = lightly_loss_pkg.SwaVLoss()(x[:2], x[2:], queue)

    patched = integrations.patch_lightly()
    assert sorted(patched) == [
        "lightly.loss.SwaVLoss",
        "lightly.loss.swav_loss.SwaVLoss",
        "lightly.loss.swav_loss.sinkhorn",
    ]
    assert lightly_loss_pkg.SwaVLoss is SwAVLoss and lightly_loss.SwaVLoss is SwAVLoss
    assert lightly_loss.sinkhorn is integrations.lightly_sinkhorn
    assert lightly_modules.SwaVPrototypes is LIGHTLY_ORIGINALS["SwaVPrototypes"]  # opt-in only
    assert integrations.patch_lightly() == []  # idempotent
    after = lightly_loss_pkg.SwaVLoss()(x[:2], x[2:], queue)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=0)

    assert sorted(integrations.unpatch_lightly()) == sorted(patched)
    assert lightly_loss_pkg.SwaVLoss is LIGHTLY_ORIGINALS["SwaVLoss"]


def test_patch_lightly_prototypes(unpatched):
    patched = integrations.patch_lightly(loss=False, prototypes=True)
    assert sorted(patched) == [
        "lightly.models.modules.SwaVPrototypes",
        "lightly.models.modules.heads.SwaVPrototypes",
    ]
    heads = lightly_modules.SwaVPrototypes(16, [10, 5])
    assert isinstance(heads, SwAVPrototypes) and isinstance(heads(torch.randn(3, 16)), list)
    assert lightly_loss.SwaVLoss is LIGHTLY_ORIGINALS["SwaVLoss"]


@pytest.mark.parametrize("iterations", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lightly_sinkhorn_adapter(iterations, dtype):
    """Positional order (out, iterations, epsilon) and dtype kept, as lightly's."""
    if dtype == torch.float64 and "reference" not in RUNNABLE:
        pytest.skip("float64 runs on the reference backend only")
    scores = cosine_scores(48, 300, seed=5).to(dtype)
    ours = integrations.lightly_sinkhorn(scores, iterations, 0.04)
    theirs = LIGHTLY_ORIGINALS["sinkhorn"](scores, iterations, 0.04)
    assert ours.dtype == dtype
    oracle = LIGHTLY_ORIGINALS["sinkhorn"](scores.double(), iterations, 0.04)
    assert_close_rule(ours, theirs, oracle, dtype, what="lightly_sinkhorn")


def test_patch_lightly_absent_warns(monkeypatch):
    for name in [n for n in sys.modules if n == "lightly" or n.startswith("lightly.")]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import lightly...` fail
    with pytest.warns(UserWarning, match="lightly is not importable"):
        assert integrations.patch_lightly() == []


# ------------------------------------------------------------------------ solo-learn

# solo-learn 1.0.2 pins torch 1.9 and pytorch-lightning 1.4 and does not import next to
# this torch; these modules rebuild the part of its layout the patch touches, with the
# functions written from solo-learn's definitions.
FAKE_SOLO = {
    "solo/__init__.py": "",
    "solo/losses/__init__.py": "from solo.losses.swav import swav_loss_func\n",
    "solo/losses/swav.py": """
        import torch

        def swav_loss_func(preds, assignments, temperature=0.1):
            losses = []
            for v1, a in enumerate(assignments):
                for v2 in [v for v in range(len(preds)) if v != v1]:
                    log_p = torch.log_softmax(preds[v2] / temperature, dim=1)
                    losses.append(-torch.mean(torch.sum(a * log_p, dim=1)))
            return sum(losses) / len(losses)
        """,
    "solo/utils/__init__.py": "",
    "solo/utils/sinkhorn_knopp.py": """
        import torch

        class SinkhornKnopp(torch.nn.Module):
            def __init__(self, num_iters=3, epsilon=0.05, world_size=1):
                super().__init__()
                self.num_iters, self.epsilon, self.world_size = num_iters, epsilon, world_size

            @torch.no_grad()
            def forward(self, Q):
                Q = torch.exp(Q / self.epsilon).t()
                B, K = Q.shape[1] * self.world_size, Q.shape[0]
                Q /= torch.sum(Q)
                for _ in range(self.num_iters):
                    Q /= torch.sum(Q, dim=1, keepdim=True)
                    Q /= K
                    Q /= torch.sum(Q, dim=0, keepdim=True)
                    Q /= B
                return (Q * B).t()
        """,
    "solo/methods/__init__.py": "",
    "solo/methods/swav.py": """
        from solo.losses.swav import swav_loss_func
        from solo.utils.sinkhorn_knopp import SinkhornKnopp
        """,
}


@pytest.fixture
def fake_solo(tmp_path, monkeypatch):
    for rel, text in FAKE_SOLO.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    integrations.unpatch_solo_learn()
    for name in [n for n in sys.modules if n == "solo" or n.startswith("solo.")]:
        del sys.modules[name]


def test_patch_solo_learn(fake_solo):
    import solo.losses.swav
    import solo.utils.sinkhorn_knopp

    original_loss, original_sk = solo.losses.swav.swav_loss_func, solo.utils.sinkhorn_knopp.SinkhornKnopp
    x = crops(2, 16, 50, seed=8)
    codes_before = original_sk(3, 0.05)(torch.cat((x[0], x[1])).detach())
    assignments = [codes_before[:16], codes_before[16:]]
    loss_before = original_loss(x, assignments, 0.1)

    patched = integrations.patch_solo_learn()
    assert sorted(patched) == [
        "solo.losses.swav.swav_loss_func",
        "solo.losses.swav_loss_func",
        "solo.methods.swav.SinkhornKnopp",
        "solo.methods.swav.swav_loss_func",
        "solo.utils.sinkhorn_knopp.SinkhornKnopp",
    ]
    import solo.methods.swav

    assert solo.methods.swav.swav_loss_func is integrations.solo_swav_loss_func
    codes = solo.methods.swav.SinkhornKnopp(3, 0.05)(torch.cat((x[0], x[1])).detach())
    torch.testing.assert_close(codes, codes_before, rtol=1e-4, atol=1e-7)
    loss = solo.methods.swav.swav_loss_func(x, assignments, 0.1)
    torch.testing.assert_close(loss, loss_before, rtol=1e-5, atol=0)
    for a, b in zip(torch.autograd.grad(loss, x), torch.autograd.grad(loss_before, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)

    # solo-learn's multi-crop call: assignments of the 2 large crops, 6 predictions.
    multi = crops(6, 16, 50, seed=9)
    multi_codes = [original_sk(3, 0.05)(m.detach()) for m in multi[:2]]
    loss = solo.methods.swav.swav_loss_func(multi, multi_codes, 0.1)
    expected = original_loss(multi, multi_codes, 0.1)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    for a, b in zip(torch.autograd.grad(loss, multi), torch.autograd.grad(expected, multi), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)

    assert len(integrations.unpatch_solo_learn()) == len(patched)
    assert solo.methods.swav.swav_loss_func is original_loss


def test_patch_solo_learn_absent_warns(monkeypatch):
    monkeypatch.setitem(sys.modules, "solo", None)
    with pytest.warns(UserWarning, match="solo-learn is not importable"):
        assert integrations.patch_solo_learn() == []


# ------------------------------------------------------------------------ docs


def test_docs_example_runs(unpatched):
    """Every ```python block of docs/swav.md, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
    assert isinstance(namespace["criterion"], SwAVLoss)
    assert namespace["patched"] == [
        "lightly.loss.SwaVLoss",
        "lightly.loss.swav_loss.SwaVLoss",
        "lightly.loss.swav_loss.sinkhorn",
    ]
    assert namespace["SwaVLoss"] is SwAVLoss  # the patched lightly name resolved to ours
    assert namespace["queue"].length == 16 and namespace["queue"].is_full
    assert namespace["queue_outputs"] is not None and namespace["queue_outputs"].shape == (2, 16, 30)
    assert torch.isfinite(namespace["loss"]).all()
