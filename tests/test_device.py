"""The engine's device policies: channels-last only where the layout means something (2-D
convolution weights, 4-D activations; never the FFT filters or 5-D spectral weights), the TF32
switch (``RunConfig.tf32``, train ``--tf32``), the CPUs a process may use (affinity, SLURM,
cgroup quota), cuDNN's benchmark switch, and a process group initialised by a library caller
(joined as it is, the CUDA device set, its collectives run even with one process)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import spectrascope
from spectrascope.engine import device as DV
from spectrascope.engine import dist as D
from spectrascope.engine.runner import RunConfig, Runner
from spectrascope.errors import OptionError


@pytest.fixture
def keep_backend_flags():
    """Every test here may flip PyTorch's process-wide switches: they are restored after it."""
    state = DV.tf32_state()
    bench = torch.backends.cudnn.benchmark
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = state["matmul"], state["cudnn"]
    torch.backends.cudnn.benchmark = bench


#: a tiny AFFNet configuration (cvnets' layer dictionary)
AFF_TINY = {
    "layer1": {"out_channels": 16, "expand_ratio": 2, "num_blocks": 1, "stride": 1, "block_type": "mv2"},
    "layer2": {"out_channels": 16, "expand_ratio": 2, "num_blocks": 1, "stride": 2, "block_type": "mv2"},
    **{f"layer{k}": {"out_channels": c, "transformer_channels": c, "ffn_dim": 2 * c, "transformer_blocks": 1,
                     "patch_h": 2, "patch_w": 2, "stride": 2, "mv_expand_ratio": 2, "head_dim": None,
                     "num_heads": None, "block_type": "aff_block"} for k, c in [(3, 16), (4, 24), (5, 32)]},
    "last_layer_exp_factor": 4,
}


def _tiny(name):
    kw = {"dfformer_s18": dict(depths=[1, 1, 1, 1], dims=[16, 32, 48, 64]),
          "gfnet_ti": dict(depth=2, embed_dim=32),
          "gfnet_h_ti": dict(depth=[1, 1, 1, 1], embed_dim=[8, 16, 24, 32]),
          "affnet_fno": dict(config=AFF_TINY)}[name]
    torch.manual_seed(0)
    return spectrascope.create_model(name, num_classes=3, img_size=64, **kw).eval()


def _is_conv2d_weight(model, pname):
    mod_name, _, leaf = pname.rpartition(".")
    mod = model.get_submodule(mod_name)
    return leaf == "weight" and isinstance(mod, nn.Conv2d)


@pytest.mark.parametrize("name", ["dfformer_s18", "gfnet_ti", "gfnet_h_ti", "affnet_fno"])
def test_channels_last_converts_convolution_weights_only(name):
    model = _tiny(name)
    before = {n: (p.stride(), p) for n, p in model.named_parameters()}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    assert DV.to_memory_format(model) is model
    convs = 0
    for n, p in model.named_parameters():
        assert p is before[n][1], f"{n}: a new Parameter object (optimisers would lose it)"
        if _is_conv2d_weight(model, n) and p.ndim == 4:
            convs += 1
            assert p.is_contiguous(memory_format=torch.channels_last), n
        else:                          # FFT filters (H, W//2+1, N, 2), FNO's 5-D weights, everything else
            assert p.stride() == before[n][0], f"{n} changed its layout"
    assert convs > 0
    filters = [n for n, p in model.named_parameters() if "complex_weight" in n or n.endswith(("weights1", "weights2"))]
    assert filters and all(model.get_parameter(n).is_contiguous() for n in filters)
    xl = DV.to_memory_format(x)
    assert xl.is_contiguous(memory_format=torch.channels_last) and torch.equal(xl, x)
    with torch.no_grad():
        out = model(xl)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)        # a layout never changes the values


def test_channels_last_leaves_other_ranks_and_can_be_off():
    for shape in [(3, 4, 5), (2, 3, 4, 5, 2), (7,)]:
        t = torch.randn(shape)
        assert DV.to_memory_format(t) is t
    t = torch.randn(2, 3, 4, 5)
    assert DV.to_memory_format(t, False) is t
    m = nn.Conv2d(3, 4, 3)
    stride = m.weight.stride()
    assert DV.to_memory_format(m, False).weight.stride() == stride


def test_affnet_fno_trains_with_channels_last():
    """FNO's 5-D spectral weights made ``model.to(memory_format=channels_last)`` fail; the
    engine's policy leaves them alone, and forward + backward match the contiguous model."""
    ref, model = _tiny("affnet_fno"), _tiny("affnet_fno")
    DV.to_memory_format(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for m, inp in ((ref, x), (model, DV.to_memory_format(x))):
        m.train()
        m(inp).square().mean().backward()
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    for (n, a), b in zip(ref.named_parameters(), model.parameters()):
        assert (a.grad - b.grad).abs().max().item() <= 1e-4 * scale, n


def test_runner_applies_the_memory_format_policy_and_the_tf32_switch(keep_backend_flags):
    model = _tiny("dfformer_s18")
    Runner(RunConfig(channels_last=True, tf32="on")).prepare(model)
    assert DV.tf32_state() == {"matmul": True, "cudnn": True}
    assert model.downsample_layers[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.stages[0][0].token_mixer.complex_weights.is_contiguous()
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(DV.tf32_state()))
    runner = Runner(RunConfig())                               # the analyses' default: off
    assert runner.config.tf32 == "off"
    runner.forward(model, torch.randn(1, 3, 64, 64))
    assert seen == [{"matmul": False, "cudnn": False}]
    with pytest.raises(OptionError, match="--tf32"):
        RunConfig(tf32="fast")


def test_tf32_switch_and_context_restore(keep_backend_flags):
    DV.set_tf32("off")
    with DV.tf32("on"):
        assert DV.tf32_state() == {"matmul": True, "cudnn": True}
    assert DV.tf32_state() == {"matmul": False, "cudnn": False}
    assert DV.set_tf32(True) == {"matmul": False, "cudnn": False}
    with pytest.raises(OptionError, match="--tf32: 'maybe' is not accepted"):
        DV.set_tf32("maybe")
    torch.backends.cudnn.benchmark = False
    with DV.cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.benchmark


def test_available_cpus_takes_the_smallest_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    none = tmp_path / "none"
    assert DV.available_cpus({}, cgroup_root=none, proc_cgroup=none / "cgroup") == 12
    assert DV.available_cpus({"SLURM_CPUS_PER_TASK": "6"}, cgroup_root=none, proc_cgroup=none / "x") == 6
    assert DV.available_cpus({"SLURM_CPUS_PER_TASK": "junk"}, cgroup_root=none, proc_cgroup=none / "x") == 12
    # cgroup v2: a quota of 2.5 CPUs on the job's cgroup, none on its parent -> 3
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "job" / "cpu.max").write_text("250000 100000\n")
    (v2 / "job" / "step" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "cgroup2"
    proc.write_text("0::/job/step\n")
    assert DV.available_cpus({}, cgroup_root=v2, proc_cgroup=proc) == 3
    assert DV.available_cpus({"SLURM_CPUS_PER_TASK": "2"}, cgroup_root=v2, proc_cgroup=proc) == 2
    # cgroup v1: cpu,cpuacct controller with a quota of 4 CPUs; -1 means none
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "docker").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    proc1 = tmp_path / "cgroup1"
    proc1.write_text("12:memory:/docker\n4:cpu,cpuacct:/docker\n")
    assert DV.available_cpus({}, cgroup_root=v1, proc_cgroup=proc1) == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert DV.available_cpus({}, cgroup_root=v1, proc_cgroup=proc1) == 1


@pytest.fixture
def library_group(tmp_path, monkeypatch):
    """A one-process gloo group initialised the way a library caller would (not by spectrascope)."""
    import torch.distributed as td
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    td.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        td.destroy_process_group()
        D.shutdown()


def test_a_callers_group_is_joined_and_sets_the_cuda_device(library_group, monkeypatch):
    set_to = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: set_to.append(torch.device(dev)))
    d, dev = D.init("cuda")
    assert (d.rank, d.world, d.backend, d.enabled) == (0, 1, "gloo", True)
    assert dev == torch.device("cuda", 1) and set_to == [dev]            # the caller's current GPU
    d, dev = D.init("cuda:0")
    assert dev == torch.device("cuda", 0) and set_to[-1] == dev
    monkeypatch.setenv("LOCAL_RANK", "1")
    d, dev = D.init("cuda:0")                                           # a launcher's local rank wins
    assert dev == torch.device("cuda", 1) and set_to[-1] == dev
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(OptionError, match="local rank 2 has no GPU"):
        D.init("cuda")


def test_a_one_process_group_runs_every_collective(library_group):
    from spectrascope.engine.reducers import Reducer

    class Sums(Reducer):
        def __init__(self):
            self.s = {"x": torch.tensor([1.5, 2.0], dtype=torch.float64), "n": 3}

        def state(self):
            return self.s

        def load_state(self, state):
            self.s = state

    d, dev = D.init("cpu")
    assert d.enabled and d.backend == "gloo" and dev.type == "cpu"
    t = torch.tensor([1.0, -2.0])
    for op in ("sum", "max", "min"):
        out = d.all_reduce(t, op)
        assert out is not t and torch.equal(out, t)
    assert d.all_gather_object({"a": 1}) == [{"a": 1}] and d.gather_object(5) == [5]
    assert d.broadcast_object("x") == "x" and d.any(True) and not d.any(False)
    d.barrier()
    r = Sums()
    r.all_reduce(d)
    assert torch.equal(r.s["x"], torch.tensor([1.5, 2.0], dtype=torch.float64)) and r.s["n"] == 3


def test_data_parallel_keeps_every_gradient_in_its_parameters_layout(library_group):
    """DDP (a one-process gloo group) around a channels-last DFFormer at 32 px, whose last filter
    grid is 1x1: the gradients are DDP's bucket views in their parameters' layout from the start,
    so DDP neither warns nor copies over two steps; they equal those of the plain model."""
    import warnings
    d, dev = D.init("cpu")
    kw = dict(num_classes=3, img_size=32, depths=[1, 1, 1, 1], dims=[16, 32, 48, 64])
    ref, model = spectrascope.create_model("dfformer_s18", **kw), spectrascope.create_model("dfformer_s18", **kw)
    model.load_state_dict(ref.state_dict())
    DV.to_memory_format(model)
    ddp = D.data_parallel(model, dev)
    assert all(p.grad is not None and p.grad.stride() == p.stride() for p in model.parameters())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            for p in model.parameters():
                p.grad.zero_()
            ddp(DV.to_memory_format(x)).square().mean().backward()
            seen.append({n: p.grad.data_ptr() for n, p in model.named_parameters()})
    assert not [w for w in caught if "strides" in str(w.message)], [str(w.message)[:200] for w in caught]
    assert seen[1] == seen[2]          # once DDP rebuilt its buckets: the same tensors, accumulated in place
    ref(x).square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.ndim > 1 and 1 in p.shape]      # the case in point
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref.get_parameter(n).grad, atol=1e-6, rtol=1e-4), n
