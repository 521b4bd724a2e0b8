"""Each built-in check on real small training loops: fires with the right subject, stays quiet
on healthy training."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from checks_helpers import findings_of, only, serious


def sgd(model, lr=0.05):
    return torch.optim.SGD(model.parameters(), lr=lr)


def regression_step(batch=16, dim=8, out=1):
    def loop(model, opt, step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(batch, dim, generator=g)
        y = x.sum(1, keepdim=True).expand(batch, out)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    return loop


# -- healthy training: no warning, no error ---------------------------------------------------

def test_healthy_mlp_with_adam(tmp_path):
    build = lambda: (m := nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                        nn.Linear(32, 1)), torch.optim.Adam(m.parameters(), lr=1e-3))
    assert serious(findings_of(tmp_path, build, regression_step(), steps=40)) == []


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 4 * 4, 10))

    def forward(self, x):
        return self.head(self.features(x))


def test_healthy_cnn_with_batchnorm_and_dropout(tmp_path):
    from gradscope.demo import make_data

    images, labels = make_data(16 * 30)
    images = F.avg_pool2d(images, 2)

    def loop(model, opt, step):
        model.train()
        x, y = images[step * 16:(step + 1) * 16], labels[step * 16:(step + 1) * 16]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step % 10 == 9:  # validation in eval mode, without a step: not a finding
            model.eval()
            with torch.no_grad():
                model(x)

    build = lambda: (m := SmallCNN(), torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))
    assert serious(findings_of(tmp_path, build, loop, steps=30)) == []


# -- nonfinite --------------------------------------------------------------------------------

class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class Sqrt(nn.Module):
    def forward(self, x):
        return torch.sqrt(x)


def test_nonfinite_in_the_input(tmp_path):
    def loop(model, opt, step):
        x = torch.randn(4, 8)
        if step == 2:
            x[1, 3] = float("nan")
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()

    build = lambda: (m := nn.Linear(8, 2), sgd(m))
    found = only(findings_of(tmp_path, build, loop, steps=3), "nonfinite")
    assert [(f["subject"], f["step"], f["severity"]) for f in found] == [("input", 2, "error")]
    assert found[0]["evidence"]["nonfinite"] == 1 and found[0]["hint"]


def test_nonfinite_starts_in_the_first_module_that_makes_it(tmp_path):
    build = lambda: (m := nn.Sequential(nn.Linear(8, 8), Log(), nn.Linear(8, 1)), sgd(m, 0.0))
    found = only(findings_of(tmp_path, build, regression_step(), steps=2), "nonfinite")
    assert found[0]["subject"] == "1"
    assert "LogBackward0" in found[0]["message"]


def test_nonfinite_in_backward_names_the_first_gradient(tmp_path):
    def build():
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), Sqrt(), nn.Linear(8, 1))
        with torch.no_grad():
            model[0].bias.fill_(-100.0)  # ReLU outputs exact zeros: sqrt is fine, its gradient is not
        return model, sgd(model, 0.0)

    found = only(findings_of(tmp_path, build, regression_step(), steps=2), "nonfinite")
    assert found[0]["subject"] == "1" and "backward" in found[0]["message"]


# -- gradients through depth ------------------------------------------------------------------

def deep(n, act, std):
    layers = []
    for _ in range(n):
        layers += [nn.Linear(16, 16), act()]
    model = nn.Sequential(*layers[:-1])
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
    return model


def test_exploding_gradients_name_the_first_layer(tmp_path):
    build = lambda: (m := deep(6, nn.Identity, 1.5), sgd(m, 0.0))
    found = only(findings_of(tmp_path, build, regression_step(dim=16, out=16), steps=3), "exploding-grad")
    assert found and found[0]["subject"] == "0" and found[0]["evidence"]["ratio"] > 70


def test_vanishing_gradients_name_the_first_layer(tmp_path):
    build = lambda: (m := deep(6, nn.Sigmoid, 0.05), sgd(m, 0.0))
    found = only(findings_of(tmp_path, build, regression_step(dim=16, out=16), steps=3), "vanishing-grad")
    assert found and found[0]["subject"] == "0" and found[0]["evidence"]["ratio"] < 1e-3


# -- activations ------------------------------------------------------------------------------

def test_dead_relu_module(tmp_path):
    def build():
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        with torch.no_grad():
            model[0].bias.fill_(-10.0)
        return model, sgd(model)

    found = only(findings_of(tmp_path, build, regression_step(), steps=6), "dead-relu")
    assert [f["subject"] for f in found] == ["1"]
    assert found[0]["evidence"]["dead_fraction"] == 1.0


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def test_dead_functional_relu_names_the_layer_feeding_it(tmp_path):
    def build():
        model = FunctionalRelu()
        with torch.no_grad():
            model.fc1.bias.fill_(-10.0)
        return model, sgd(model)

    found = only(findings_of(tmp_path, build, regression_step(), steps=6), "dead-relu")
    assert [f["subject"] for f in found] == ["fc1"] and "ReLU applied to fc1" in found[0]["message"]


def test_saturated_tanh(tmp_path):
    def build():
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        with torch.no_grad():
            model[0].weight.mul_(40)
        return model, sgd(model, 1e-4)

    found = only(findings_of(tmp_path, build, regression_step(), steps=5), "saturation")
    assert [f["subject"] for f in found] == ["1"]


# -- update auditing --------------------------------------------------------------------------

def test_missing_zero_grad(tmp_path):
    def loop(model, opt, step):
        F.mse_loss(model(torch.ones(4, 8)), torch.zeros(4, 1)).backward()
        opt.step()

    build = lambda: (m := nn.Linear(8, 1), sgd(m, 1e-3))
    found = only(findings_of(tmp_path, build, loop, steps=5), "missing-zero-grad")
    assert found and found[0]["subject"] == "optimizer0"


def test_gradient_accumulation_is_not_missing_zero_grad(tmp_path):
    def loop(model, opt, step):
        for _ in range(4):  # four micro-batches per optimizer step
            F.mse_loss(model(torch.randn(4, 8)), torch.zeros(4, 1)).backward()
        opt.step()
        opt.zero_grad()

    build = lambda: (m := nn.Linear(8, 1), sgd(m, 1e-3))
    assert only(findings_of(tmp_path, build, loop, steps=6), "missing-zero-grad") == []


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.unused = nn.Linear(8, 8), nn.Linear(8, 1), nn.Linear(8, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_param_not_in_optimizer(tmp_path):
    build = lambda: (m := TwoLayers(), torch.optim.SGD(m.fc1.parameters(), lr=0.01))
    found = only(findings_of(tmp_path, build, regression_step(), steps=3), "param-not-in-optimizer")
    assert sorted(f["subject"] for f in found) == ["fc2.bias", "fc2.weight"]


def test_param_without_grad(tmp_path):
    build = lambda: (m := TwoLayers(), sgd(m, 0.01))
    found = only(findings_of(tmp_path, build, regression_step(), steps=4), "param-without-grad")
    assert sorted(f["subject"] for f in found) == ["unused.bias", "unused.weight"]


class AuxHead(TwoLayers):
    def forward(self, x, aux=False):
        h = torch.relu(self.fc1(x))
        return self.fc2(h) + (self.unused(h).sum(1, keepdim=True) if aux else 0)


def test_param_without_grad_judges_a_long_window(tmp_path):
    def loop(model, opt, step):  # the extra head trains on one batch in four
        x = torch.randn(16, 8)
        opt.zero_grad()
        F.mse_loss(model(x, aux=step % 4 == 3), x.sum(1, keepdim=True)).backward()
        opt.step()

    build = lambda: (m := AuxHead(), sgd(m, 0.01))
    assert serious(findings_of(tmp_path, build, loop, steps=8)) == []

    def build():  # frozen, but handed to the optimizer
        model = TwoLayers()
        model.unused.requires_grad_(False)
        return model, sgd(model, 0.01)

    assert only(findings_of(tmp_path, build, regression_step(), steps=4), "param-without-grad") == []


def test_update_ratio_too_high_and_too_low(tmp_path):
    build = lambda: (m := nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1)),
                     torch.optim.Adam(m.parameters(), lr=2.0))
    found = only(findings_of(tmp_path, build, regression_step(), steps=25), "update-ratio")
    assert found and "too large" in found[0]["message"] and found[0]["step"] >= 10  # after warm-up
    build = lambda: (m := nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1)), sgd(m, 1e-8))
    found = only(findings_of(tmp_path, build, regression_step(), steps=25), "update-ratio")
    assert found and "too small" in found[0]["message"] and found[0]["evidence"]["median_ratio"] < 1e-5


def test_update_ratio_follows_a_learning_rate_raised_from_zero(tmp_path):
    """The learning rate of each parameter is worked out again when the rates change: a run
    whose rate is 0 for its first steps (a warm-up's start) and too large after is judged on
    the new rate."""
    def loop(model, opt, step):
        opt.param_groups[0]["lr"] = 0.0 if step < 5 else 2.0
        regression_step()(model, opt, step)

    build = lambda: (m := nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1)), torch.optim.Adam(m.parameters(), lr=0.0))
    found = only(findings_of(tmp_path, build, loop, steps=32), "update-ratio")
    assert found and "too large" in found[0]["message"] and found[0]["step"] >= 25


def test_update_ratio_short_excursions_and_still_parameters_are_quiet(tmp_path):
    def loop(model, opt, step):
        opt.param_groups[0]["lr"] = 2.0 if step in (12, 13) else 1e-3  # two wild steps
        regression_step()(model, opt, step)

    build = lambda: (m := nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1)),
                     torch.optim.Adam(m.parameters(), lr=1e-3))
    assert only(findings_of(tmp_path, build, loop, steps=30), "update-ratio") == []

    def build():  # a group at lr=0 and frozen parameters, both inside the optimizer
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 1))
        model[0].requires_grad_(False)
        return model, torch.optim.Adam([{"params": [*model[0].parameters(), *model[1].parameters()], "lr": 0.0},
                                        {"params": model[2].parameters(), "lr": 1e-3}])

    assert only(findings_of(tmp_path, build, regression_step(), steps=30), "update-ratio") == []


def test_out_of_step_update(tmp_path):
    def loop(model, opt, step):
        regression_step()(model, opt, step)
        if step == 1:
            model[1].weight.data.mul_(0.5)  # behind the optimizer's back

    build = lambda: (m := nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1)), sgd(m, 0.01))
    found = only(findings_of(tmp_path, build, loop, steps=4), "out-of-step-update")
    assert [(f["subject"], f["step"]) for f in found] == [("1.weight", 2)]


def test_eval_mode_training(tmp_path):
    def build():
        model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 1))
        model.eval()
        return model, sgd(model, 0.01)

    found = only(findings_of(tmp_path, build, regression_step(), steps=2), "eval-mode-training")
    assert found and found[0]["subject"] == "1"


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_eval_mode_of_a_frozen_encoder_is_not_eval_mode_training(tmp_path):
    def build():  # linear probing: the encoder is frozen and kept in eval mode
        model = Probe()
        model.encoder.requires_grad_(False)
        model.encoder.eval()
        return model, sgd(model.head, 0.01)

    assert serious(findings_of(tmp_path, build, regression_step(), steps=4)) == []

    def build():  # the same encoder trained while in eval mode is the bug
        model = Probe()
        model.encoder.eval()
        return model, sgd(model, 0.01)

    found = only(findings_of(tmp_path, build, regression_step(), steps=2), "eval-mode-training")
    assert found and found[0]["subject"] == "encoder.1" and found[0]["evidence"]["modules"] == ["encoder.1", "encoder.2"]


# -- dropout-at-eval --------------------------------------------------------------------------

def test_dropout_at_eval(tmp_path):
    def loop(model, opt, step):
        regression_step()(model, opt, step)
        with torch.no_grad():  # validation that forgot model.eval()
            model(torch.randn(4, 8))

    build = lambda: (m := nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 1)), sgd(m, 0.01))
    found = only(findings_of(tmp_path, build, loop, steps=3), "dropout-at-eval")
    assert [(f["subject"], f["severity"]) for f in found] == [("1", "warning")]

    def loop(model, opt, step):
        model.train()
        regression_step()(model, opt, step)
        model.eval()
        with torch.no_grad():
            model(torch.randn(4, 8))

    assert only(findings_of(tmp_path, build, loop, steps=3), "dropout-at-eval") == []


# -- no-optimizer-step ------------------------------------------------------------------------

def test_no_optimizer_step(tmp_path):
    def loop(model, opt, step):
        opt.zero_grad()
        F.mse_loss(model(torch.randn(4, 8)), torch.zeros(4, 1)).backward()
        if step < 0:  # unreachable
            opt.step()

    build = lambda: (m := nn.Linear(8, 1), sgd(m, 0.01))
    found = only(findings_of(tmp_path, build, loop, steps=8), "no-optimizer-step")
    assert found and found[0]["severity"] == "error" and found[0]["subject"] == "optimizer0"
    assert found[0]["evidence"]["backwards"] == 8

    def by_hand(model, opt, step):
        model.zero_grad()
        F.mse_loss(model(torch.randn(4, 8)), torch.zeros(4, 1)).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad

    build = lambda: (nn.Linear(8, 1), None)
    assert serious(findings_of(tmp_path, build, by_hand, steps=8)) == []


# -- no-progress ------------------------------------------------------------------------------

def classify(shuffled):
    centers = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)) * 3

    def loop(model, opt, step):
        g = torch.Generator().manual_seed(step)
        y = torch.randint(0, 4, (32,), generator=g)
        x = centers[y] + torch.randn(32, 8, generator=g)
        if shuffled:  # labels shuffled apart from their inputs
            y = y[torch.randperm(32, generator=g)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return loop


def test_no_progress(tmp_path):
    build = lambda: (m := nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
                     torch.optim.Adam(m.parameters(), lr=1e-2))
    found = only(findings_of(tmp_path, build, classify(shuffled=True), steps=120), "no-progress")
    assert found and "chance" in found[0]["message"] and found[0]["evidence"]["classes"] == 4
    assert serious(findings_of(tmp_path, build, classify(shuffled=False), steps=120)) == []

    def fixed_batch(model, opt, step):
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        F.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
        opt.step()

    build = lambda: (m := nn.Linear(8, 1), sgd(m, 1e-9))  # the loss cannot move
    found = only(findings_of(tmp_path, build, fixed_batch, steps=110), "no-progress")
    assert found and found[0]["subject"] == "loss" and "not improved" in found[0]["message"]


# -- losses read from the graph ---------------------------------------------------------------

def test_loss_broadcast(tmp_path):
    def loop(model, opt, step):
        x = torch.randn(8, 8)
        opt.zero_grad()
        F.mse_loss(model(x), x.sum(1)).backward()  # [8, 1] against [8]
        opt.step()

    build = lambda: (m := nn.Linear(8, 1), sgd(m, 0.01))
    with pytest.warns(UserWarning):
        found = only(findings_of(tmp_path, build, loop, steps=2), "loss-broadcast")
    assert found and found[0]["subject"] == "MseLossBackward0" and found[0]["severity"] == "error"
    assert found[0]["evidence"]["original_shapes"] == [[8, 1]]


def test_softmax_before_cross_entropy(tmp_path):
    def loop(model, opt, step):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 8)), torch.randint(0, 4, (8,))).backward()
        opt.step()

    build = lambda: (m := nn.Sequential(nn.Linear(8, 4), nn.Softmax(-1)), sgd(m, 0.01))
    found = only(findings_of(tmp_path, build, loop, steps=2), "softmax-before-ce")
    assert found and found[0]["subject"] == "1"


class Flat(nn.Module):
    def forward(self, x):
        return x.view(-1, x.shape[-1])


def test_softmax_before_cross_entropy_through_views(tmp_path):
    def loop(model, opt, step):  # softmax -> view(-1, C) -> cross_entropy
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(2, 3, 8)), torch.randint(0, 4, (6,))).backward()
        opt.step()

    build = lambda: (m := nn.Sequential(nn.Linear(8, 4), nn.Softmax(-1), Flat()), sgd(m, 0.01))
    found = only(findings_of(tmp_path, build, loop, steps=2), "softmax-before-ce")
    assert [f["subject"] for f in found] == ["1"]

    def loop(model, opt, step):  # sigmoid -> squeeze(1) -> binary_cross_entropy_with_logits
        opt.zero_grad()
        out = model(torch.randn(8, 8)).squeeze(1)
        F.binary_cross_entropy_with_logits(out, torch.randint(0, 2, (8,)).float()).backward()
        opt.step()

    build = lambda: (m := nn.Sequential(nn.Linear(8, 1), nn.Sigmoid()), sgd(m, 0.01))
    found = only(findings_of(tmp_path, build, loop, steps=2), "softmax-before-ce")
    assert [f["subject"] for f in found] == ["1"] and found[0]["evidence"]["op"] == "SigmoidBackward0"


def test_confident_sigmoid_output_feeding_bce_is_not_saturation(tmp_path):
    def build():
        model = nn.Sequential(nn.Linear(8, 1), nn.Sigmoid())
        with torch.no_grad():
            model[0].weight.mul_(40)  # confident from the start
        return model, sgd(model, 1e-4)

    def loop(model, opt, step):
        x = torch.randn(16, 8)
        opt.zero_grad()
        F.binary_cross_entropy(model(x), (x @ model[0].weight.detach().T > 0).float()).backward()
        opt.step()

    assert only(findings_of(tmp_path, build, loop, steps=5), "saturation") == []


# -- mixed precision --------------------------------------------------------------------------

def amp_loop(bad_input=False):
    def loop(model, state, step):
        opt, scaler = state
        x = torch.randn(8, 8)
        if bad_input:
            x[0, 0] = float("inf")
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(x).float(), x.sum(1, keepdim=True))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return loop


def amp_run(tmp_path, bad_input, steps):
    import gradscope

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = sgd(model, 0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 22)  # overflows at first
    path = tmp_path / "amp.sqlite"
    with gradscope.watch(model, opt, record=path):
        for step in range(steps):
            amp_loop(bad_input)(model, (opt, scaler), step)
    return gradscope.open_record(path).findings()


def test_gradscaler_skipped_steps_are_recorded_not_errors(tmp_path):
    found = amp_run(tmp_path, bad_input=False, steps=20)
    assert serious(found) == []
    skipped = only(found, "nonfinite")
    assert [(f["severity"], f["subject"]) for f in skipped] == [("info", "optimizer0")]
    assert skipped[0]["count"] >= 2 and "GradScaler skipped" in skipped[0]["message"]


def test_gradscaler_persistent_overflow_warns(tmp_path):
    found = only(amp_run(tmp_path, bad_input=True, steps=12), "nonfinite")
    warned = [f for f in found if f["severity"] == "warning"]
    assert warned and warned[0]["step"] == 9 and warned[0]["subject"] == "input"
    assert [f for f in found if f["severity"] == "error"] == []


# -- causes before effects --------------------------------------------------------------------

def test_divergence_names_the_explosion_before_the_nan(tmp_path):
    build = lambda: (m := nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                        nn.Linear(32, 1)), sgd(m, 3.0))
    found = findings_of(tmp_path, build, regression_step(), steps=6)
    first_bad = min(f["step"] for f in only(found, "nonfinite"))
    explosion = [f for f in only(found, "exploding-grad") if "diverged" in f["message"]]
    assert len(explosion) == 1 and explosion[0]["step"] == first_bad - 1
    assert explosion[0]["evidence"]["update_ratio"] > 1
    cause = only(found, "nonfinite")[0]["evidence"]["caused_by"]
    assert (cause["step"], cause["layer"]) == (explosion[0]["step"], explosion[0]["subject"])


def test_nonfinite_since_names_the_step_that_broke_the_weights(tmp_path):
    def loop(model, opt, step):
        x = torch.randn(16, 8)
        opt.zero_grad()
        F.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
        if step == 23:  # the update of step 23 (no weight statistics then) writes NaN into them
            model[0].weight.grad[0, 0] = float("nan")
        opt.step()

    build = lambda: (m := nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1)), sgd(m, 0.01))
    found = [f for f in only(findings_of(tmp_path, build, loop, steps=27), "nonfinite") if "since" in f["evidence"]]
    assert found and found[0]["evidence"]["since"] == 23 and "since step 23" in found[0]["message"]


# -- custom backward --------------------------------------------------------------------------

class GoodScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x


class BadScale(GoodScale):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x  # forgot the 2


class Custom(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.pre, self.fc = nn.Linear(8, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.fc(self.fn.apply(self.pre(x)))


@pytest.mark.parametrize("fn, fires", [(BadScale, True), (GoodScale, False)])
def test_gradcheck_mismatch(tmp_path, fn, fires):
    build = lambda: (m := Custom(fn), sgd(m, 0.01))
    found = only(findings_of(tmp_path, build, regression_step(), steps=2), "gradcheck-mismatch")
    if fires:
        assert [f["subject"] for f in found] == ["BadScale in Custom"]
        assert found[0]["evidence"]["function"].endswith("BadScale")
        assert found[0]["evidence"]["numeric"] == pytest.approx(2 * found[0]["evidence"]["analytic"], rel=1e-4)
    else:
        assert found == []


def test_every_finding_is_complete(tmp_path):
    def loop(model, opt, step):
        x = torch.randn(16, 8)
        x[0, 0] = float("nan") if step == 4 else x[0, 0]
        opt.zero_grad()
        F.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
        opt.step()

    build = lambda: (m := TwoLayers(), torch.optim.SGD([*m.fc1.parameters(), *m.unused.parameters()], lr=0.01))
    found = findings_of(tmp_path, build, loop, steps=6)
    assert len({f["check"] for f in found}) >= 3
    for f in found:
        assert f["severity"] in ("error", "warning", "info")
        assert f["subject"] and f["message"] and f["hint"] and f["evidence"]
        assert f["step"] is not None and f["count"] >= 1 and f["last_step"] >= f["step"]


def test_gradscope_plugins_lists_eighteen_builtin_checks(run_cli):
    rows = [line.split() for line in run_cli("plugins", check=0).stdout.splitlines()]
    builtins = {row[0] for row in rows if len(row) > 2 and row[2] == "built-in"}
    assert len(builtins) == 18
    assert {"no-optimizer-step", "dropout-at-eval", "no-progress"} <= builtins
