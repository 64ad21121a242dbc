"""dcframe.torch.calibrate and `dcframe calibrate`: the statistics recorded per weight, checked against direct sums."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import dcframe  # noqa: E402
from dcframe.bindings import torchcalib  # noqa: E402
from dcframe.io.calibration import Calibration  # noqa: E402
from dcframe.torch import calibrate  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.fc = nn.Linear(6, 4)
        self.conv = nn.Conv2d(4, 6, 3, groups=2)
        self.unused = nn.Linear(3, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.emb(ids))  # [batch, 9, 4]
        return self.conv(h.transpose(1, 2).reshape(-1, 4, 3, 3)).sum()


def _batches(seed: int = 0, count: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 12, (2, 9), generator=g) for _ in range(count)]


@pytest.mark.parametrize("pending", [1, 50, None])  # X^T X after every batch, every few, or once at the end
def test_statistics_match_direct_sums_and_leave_the_model_unchanged(monkeypatch, pending):
    if pending is not None:
        monkeypatch.setattr(torchcalib, "PENDING_ELEMENTS", pending)
    torch.manual_seed(0)
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = _batches()
    seen = []
    calib = calibrate(net, batches, progress=seen.append)
    assert seen == [1, 2, 3, 4, 5] and calib.samples == 5
    assert set(calib.entries) == {"emb.weight", "fc.weight", "conv.weight"}  # the unused layer saw nothing
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    ids = torch.cat([b.reshape(-1) for b in batches])
    counts = np.bincount(ids.numpy(), minlength=12)
    assert np.array_equal(calib.entries["emb.weight"]["token_count"], counts)
    assert np.allclose(calib.entries["emb.weight"]["activation"][:, 0], counts / counts.sum())
    with torch.no_grad():
        x = torch.cat([net.emb(b).reshape(-1, 6) for b in batches]).double().numpy()
        h = torch.cat([net.fc(net.emb(b)).transpose(1, 2).reshape(-1, 4, 3, 3) for b in batches]).double().numpy()
    assert np.allclose(calib.entries["fc.weight"]["activation"], (x * x).mean(0)[None, :], rtol=1e-5)
    assert np.allclose(calib.entries["fc.weight"]["hessian"], x.T @ x / len(x), rtol=1e-4, atol=1e-6)
    per_channel = (h * h).mean(axis=(0, 2, 3))  # conv weight [6, 2, 3, 3], groups 2: outputs 0-2 read inputs 0-1
    act = calib.entries["conv.weight"]["activation"]
    assert act.shape == (6, 2, 1, 1)
    assert np.allclose(act[:3, :, 0, 0], per_channel[None, :2], rtol=1e-5)
    assert np.allclose(act[3:, :, 0, 0], per_channel[None, 2:], rtol=1e-5)


def test_inputs_the_model_overwrites_after_a_layer_are_recorded_as_the_layer_saw_them():
    class Reuses(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x * 2
            out = self.fc(h)
            h.zero_()  # the activation buffer is reused once the layer has read it
            return out.sum()

    torch.manual_seed(1)
    batches = [torch.randn(4, 5) for _ in range(3)]
    calib = calibrate(Reuses(), batches)
    x = torch.cat(batches).double().numpy() * 2
    assert np.allclose(calib.entries["fc.weight"]["hessian"], x.T @ x / len(x), rtol=1e-4, atol=1e-6)


def test_fisher_is_the_mean_squared_gradient_of_the_loss():
    torch.manual_seed(1)
    net = Net()
    batches = _batches(seed=1, count=3)
    calib = calibrate(net, batches, loss=lambda model, batch: model(batch) ** 2)
    assert net.fc.weight.grad is None  # gradients are not left behind
    expected = torch.zeros_like(net.fc.weight, dtype=torch.float64)
    for b in batches:
        net.zero_grad()
        (net(b) ** 2).backward()
        expected += net.fc.weight.grad.double() ** 2
    assert np.allclose(calib.entries["fc.weight"]["fisher"], (expected / 3).numpy(), rtol=1e-5)


def test_output_statistic_is_the_mean_squared_gradient_of_each_layer_output():
    torch.manual_seed(3)
    net = Net()
    batches = _batches(seed=3, count=3)
    calib = calibrate(net, batches, loss=lambda model, batch: model(batch) ** 2, fisher=False)
    assert "fisher" not in calib.entries["fc.weight"]
    outputs = {}
    net.fc.register_forward_hook(lambda m, i, o: outputs.__setitem__("fc", o))
    net.conv.register_forward_hook(lambda m, i, o: outputs.__setitem__("conv", o))
    fc = torch.zeros(4, dtype=torch.float64)
    conv = torch.zeros(6, dtype=torch.float64)
    for b in batches:
        net(b)  # the layer outputs of this batch, then the loss's gradients w.r.t. them
        grads = torch.autograd.grad(net.conv(net.fc(net.emb(b)).transpose(1, 2).reshape(-1, 4, 3, 3)).sum() ** 2,
                                    [outputs["fc"], outputs["conv"]])
        fc += grads[0].double().pow(2).sum((0, 1))
        conv += grads[1].double().pow(2).sum((0, 2, 3))
    assert calib.entries["fc.weight"]["output"].shape == (4, 1)  # one per row of the [out, in] weight
    assert np.allclose(calib.entries["fc.weight"]["output"][:, 0], (fc / 3).numpy(), rtol=1e-5)
    assert calib.entries["conv.weight"]["output"].shape == (6, 1, 1, 1)
    assert np.allclose(calib.entries["conv.weight"]["output"].ravel(), (conv / 3).numpy(), rtol=1e-5)
    assert "output" not in calib.entries["emb.weight"]
    assert "output" not in calibrate(net, batches).entries["fc.weight"]  # no loss: no gradients


def test_calibration_drives_wanda_through_compress_module(tmp_path):
    torch.manual_seed(2)
    net = Net()
    calib = calibrate(net, _batches(seed=2))
    calib.save(tmp_path / "c.safetensors")
    from dcframe.torch import compress_module, load_module

    with pytest.raises(dcframe.ConfigError, match="unused.weight"):  # a layer the batches never reached
        compress_module(net, tmp_path / "m.dcf", pipeline='prune(sparsity=0.5, criterion="wanda") | zstd',
                        calibration=tmp_path / "c.safetensors")
    report = compress_module(net, tmp_path / "m.dcf", pipeline='prune(sparsity=0.5, criterion="wanda") | zstd',
                             rules=["unused.*=zstd"], calibration=tmp_path / "c.safetensors")
    chains = {t["name"]: t["pipeline"] for t in report["tensors"]}
    assert "wanda" in chains["fc.weight"] and chains["fc.bias"] == _lossless_chain()
    restored = Net()
    load_module(tmp_path / "m.dcf", restored)
    assert float((restored.fc.weight == 0).float().mean()) == 0.5


def _lossless_chain() -> str:
    policy = dcframe.Policy()
    return str(policy.chain_for_pipeline(policy.lossless_pipeline()))


def test_no_batches_is_an_error():
    with pytest.raises(dcframe.ConfigError, match="no calibration batches"):
        calibrate(Net(), [])


transformers = pytest.importorskip("transformers")

from tiny_hf import tiny_bert  # noqa: E402


def test_cli_calibrate_then_compress_a_hugging_face_folder(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    tiny_bert(folder)
    text = tmp_path / "samples.txt"
    text.write_text("the cat sat on a mat\n\nthe dog ran\na dog sat on the cat\n")
    calib_path = tmp_path / "calib.safetensors"
    done = subprocess.run([sys.executable, "-m", "dcframe.cli", "calibrate", str(folder), "--text", str(text),
                           "-o", str(calib_path), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calib = Calibration.load(calib_path)
    assert calib.samples == 3  # the empty line is not a sample
    query = next(k for k in calib.entries if k.endswith("attention.self.query.weight"))
    assert calib.entries[query]["hessian"].shape == (16, 16)
    assert calib.entries[query]["output"].shape == (16, 1) and calib.entries[query]["output"].max() > 0
    assert "token_count" in calib.entries[next(k for k in calib.entries if "word_embeddings" in k)]
    weights = next(folder.glob("*.safetensors"))
    out = tmp_path / "m.dcf"
    done = subprocess.run([sys.executable, "-m", "dcframe.cli", "compress", str(weights), "-o", str(out), "--preset",
                           "pretrained-calibrated", "--calibration", str(calib_path), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert dcframe.verify(out)["ok"]


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "not a Hugging Face model folder"),
    (lambda d: (d / "config.json").write_text("{}"), "transformers cannot load it"),
])
def test_cli_calibrate_refuses_a_bad_folder_in_one_line(tmp_path, make, message):
    folder = tmp_path / "m"
    folder.mkdir()
    make(folder)
    text = tmp_path / "t.txt"
    text.write_text("hello\n")
    done = subprocess.run([sys.executable, "-m", "dcframe.cli", "calibrate", str(folder), "--text", str(text), "-o",
                           str(tmp_path / "c.safetensors")], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.safetensors").exists()
