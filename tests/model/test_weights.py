"""WeightSource: tensors read one at a time equal safetensors' own, damaged files are BadInputErrors naming file and tensor."""

import io
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from signround.errors import BadInputError
from signround.model.weights import (INDEX_FILE, SAFETENSORS_DTYPES, ModuleSource, SafetensorsSource, TensorInfo,
                                     WeightSource)


def _sample(dtype: torch.dtype, shape=(3, 5), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 4).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g).to(dtype)


def _bytes(t: torch.Tensor) -> bytes:
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def _write_sharded(folder, shards: dict[str, dict[str, torch.Tensor]], index: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for file, tensors in shards.items():
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
    if index:
        (folder / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _raises(fn, *parts):
    with pytest.raises(BadInputError) as err:
        fn()
    for part in parts:
        assert part in str(err.value), f"{part!r} not in: {err.value}"
    return err.value


def test_every_dtype_reads_like_safetensors(tmp_path):
    tensors = {f"t.{name}": _sample(dt, seed=i) for i, (name, dt) in enumerate(SAFETENSORS_DTYPES.items())}
    tensors["scalar"] = torch.tensor(1.5)
    tensors["empty"] = torch.empty(0, 4, dtype=torch.bfloat16)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ref = load_file(str(tmp_path / "model.safetensors"))
    src = SafetensorsSource(tmp_path)
    assert isinstance(src, WeightSource)
    assert sorted(src.names()) == sorted(ref)
    for name, want in ref.items():
        got = src.read(name)
        assert got.dtype == want.dtype and got.shape == want.shape and got.device.type == "cpu", name
        assert _bytes(got) == _bytes(want), name
        if want.dtype.itemsize > 1:
            assert torch.equal(got, want), name
        out = io.BytesIO()
        assert src.copy_to(name, out) == want.numel() * want.dtype.itemsize == src.info(name).nbytes
        assert out.getvalue() == _bytes(want), name
        assert src.info(name) == TensorInfo(name, tuple(want.shape), want.dtype, str(tmp_path / "model.safetensors"))


def test_read_owns_its_memory(tmp_path):
    save_file({"w": _sample(torch.float32)}, str(tmp_path / "model.safetensors"))
    src = SafetensorsSource(tmp_path)
    a, b = src.read("w"), src.read("w")
    a.zero_()
    assert not torch.equal(a, b)  # two reads are two buffers, not views of a shared mapping


def test_names_in_file_order_and_stable(tmp_path):
    shards = {"model-00002-of-00002.safetensors": {"z.b": _sample(torch.float32), "a.b": _sample(torch.float16)},
              "model-00001-of-00002.safetensors": {"m": _sample(torch.int8)}}
    _write_sharded(tmp_path, shards)
    src = SafetensorsSource(tmp_path)
    first = [n for n in src.names() if n != "m"]
    assert src.names()[0] == "m" and sorted(first) == ["a.b", "z.b"]
    assert src.names() == SafetensorsSource(tmp_path).names()
    assert src.info("z.b").file == str(tmp_path / "model-00002-of-00002.safetensors")


def test_shards_without_index_are_scanned(tmp_path):
    _write_sharded(tmp_path, {"b.safetensors": {"y": _sample(torch.float32)}, "a.safetensors": {"x": _sample(torch.int32)}},
                   index=False)
    src = SafetensorsSource(tmp_path)
    assert src.names() == ["x", "y"]
    assert torch.equal(src.read("y"), _sample(torch.float32))


_RSS_PROBE = """
import sys
import torch
from signround.model.weights import SafetensorsSource

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

src = SafetensorsSource(sys.argv[1])
assert src.read("norm.weight").sum() == 2**22  # torch's one-off kernel set-up happens outside the count
before = rss_mb()
w = src.read("layer2.weight")
grown = rss_mb() - before
assert w[1] == 2.0 and w[4096] == 4096.0 and w.shape == (16 * 2**20,)
mapped = [line for line in open("/proc/self/maps") if ".safetensors" in line]
print(f"{grown:.1f} {len(mapped)}")
"""


@pytest.mark.slow
def test_reading_one_tensor_touches_only_that_tensor(tmp_path):
    """A 64 MB tensor of a 256 MB, 4-shard checkpoint: RSS grows by about that tensor, and no shard stays mapped.

    Measured in a fresh process: in this one, earlier tests leave the allocator in a state that moves RSS
    by tens of MB either way.
    """
    import os
    import subprocess
    import sys

    n = 16 * 2**20  # float32 elements: 64 MiB
    shards = {}
    for i in range(4):
        t = torch.full((n,), float(i))
        t[::4096] = torch.arange(0, n, 4096, dtype=torch.float32)
        shards[f"model-0000{i + 1}-of-00004.safetensors"] = {f"layer{i}.weight": t}
    shards["model-00001-of-00004.safetensors"]["norm.weight"] = torch.ones(2**22)
    _write_sharded(tmp_path, shards)
    del shards, t
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    grown, mapped = run.stdout.split()[-2:]
    assert 60 < float(grown) < 100, f"RSS grew by {grown} MB reading one 64 MB tensor"
    assert mapped == "0"


def test_truncated_file(tmp_path):
    save_file({"a": _sample(torch.float32), "b": _sample(torch.float32, (64, 64))}, str(tmp_path / "model.safetensors"))
    f = tmp_path / "model.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[: size - 100])
    _raises(lambda: SafetensorsSource(tmp_path), f"{f}: tensor b ends at byte {size} but the file has {size - 100} bytes",
            "truncated?")
    f.write_bytes(f.read_bytes()[:5])
    _raises(lambda: SafetensorsSource(tmp_path), str(f), "truncated?")


def test_file_truncated_after_opening(tmp_path):
    save_file({"a": _sample(torch.float32, (64, 64))}, str(tmp_path / "model.safetensors"))
    f = tmp_path / "model.safetensors"
    src = SafetensorsSource(tmp_path)
    f.write_bytes(f.read_bytes()[:-10])
    _raises(lambda: src.read("a"), f"{f}: tensor a ends at byte", "truncated?")
    _raises(lambda: src.copy_to("a", io.BytesIO()), f"{f}: tensor a", "truncated?")


def _raw_file(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_damaged_headers(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 5) + b"{nope")
    _raises(lambda: SafetensorsSource(tmp_path), str(f), "not valid JSON")
    _raw_file(f, {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, bytes(16))
    _raises(lambda: SafetensorsSource(tmp_path), f"{f}: tensor w spans 12 bytes", "needs 16")
    _raw_file(f, {"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16))
    _raises(lambda: SafetensorsSource(tmp_path), f"{f}: tensor w has dtype 'C64'")
    _raw_file(f, {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4))
    _raises(lambda: SafetensorsSource(tmp_path), f"{f}: tensor w has an invalid shape")
    _raw_file(f, {"__metadata__": {"format": "pt"}, "w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}},
              torch.tensor([1.0, 2.0], dtype=torch.float16).view(torch.uint8).numpy().tobytes())
    assert SafetensorsSource(tmp_path).read("w").tolist() == [1.0, 2.0]


def test_index_errors(tmp_path):
    shards = {"model-00001-of-00002.safetensors": {"a": _sample(torch.float32)},
              "model-00002-of-00002.safetensors": {"b": _sample(torch.float32)}}
    _write_sharded(tmp_path, shards)
    index = tmp_path / INDEX_FILE
    data = json.loads(index.read_text())

    data["weight_map"]["c"] = "model-00002-of-00002.safetensors"  # named by the index, absent from its file
    index.write_text(json.dumps(data))
    _raises(lambda: SafetensorsSource(tmp_path), str(tmp_path / "model-00002-of-00002.safetensors"), "tensor c is missing")

    data["weight_map"]["c"] = "model-00003-of-00003.safetensors"  # the file is missing
    index.write_text(json.dumps(data))
    _raises(lambda: SafetensorsSource(tmp_path), "tensor c", str(tmp_path / "model-00003-of-00003.safetensors"),
            "that file is missing")

    index.write_text("{\"weight_map\": ")
    _raises(lambda: SafetensorsSource(tmp_path), str(index), "not valid JSON")


def test_duplicate_across_shards(tmp_path):
    _write_sharded(tmp_path, {"a.safetensors": {"w": _sample(torch.float32)}, "b.safetensors": {"w": _sample(torch.float32)}},
                   index=False)
    _raises(lambda: SafetensorsSource(tmp_path), str(tmp_path / "b.safetensors"), "tensor w", "duplicate")


def test_missing_tensor_and_folder(tmp_path):
    _raises(lambda: SafetensorsSource(tmp_path / "nope"), str(tmp_path / "nope"))
    _raises(lambda: SafetensorsSource(tmp_path), f"no .safetensors files in {tmp_path}")
    save_file({"a": _sample(torch.float32)}, str(tmp_path / "model.safetensors"))
    src = SafetensorsSource(tmp_path)
    for fn in (src.info, src.read, lambda n: src.copy_to(n, io.BytesIO())):
        _raises(lambda: fn("zz"), str(tmp_path), "no tensor zz")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e5m2])
def test_non_finite_values(tmp_path, bad, dtype):
    t = torch.ones(8, 8)
    t[3, 4] = bad
    save_file({"ok": torch.ones(4), "layer.weight": t.to(dtype)}, str(tmp_path / "model.safetensors"))
    src = SafetensorsSource(tmp_path)
    assert src.read("ok").sum() == 4
    _raises(lambda: src.read("layer.weight"), f"{tmp_path / 'model.safetensors'}: layer.weight holds NaN/inf values")


def test_module_source(tiny):
    model = tiny("gpt2").to(torch.bfloat16)  # tied lm_head: both names are served
    src = ModuleSource(model)
    assert isinstance(src, WeightSource)
    sd = model.state_dict()
    assert src.names() == list(sd) and "lm_head.weight" in src.names() and "transformer.wte.weight" in src.names()
    w = src.read("transformer.h.0.mlp.c_fc.weight")
    assert w.dtype == torch.bfloat16 and w.data_ptr() == model.transformer.h[0].mlp.c_fc.weight.data_ptr()
    assert src.info("lm_head.weight") == TensorInfo("lm_head.weight", (512, 128), torch.bfloat16, "<memory>")
    out = io.BytesIO()
    assert src.copy_to("lm_head.weight", out) == 512 * 128 * 2
    assert out.getvalue() == _bytes(sd["lm_head.weight"])
    _raises(lambda: src.read("nope"), "GPT2LMHeadModel", "no tensor nope")


class _Sink(io.BytesIO):
    """Records the size of every write."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def write(self, b):
        self.sizes.append(len(b))
        return super().write(b)


def test_copy_to_writes_in_chunks(tmp_path, monkeypatch):
    import signround.model.weights as weights

    t = torch.arange(100, dtype=torch.float32)
    save_file({"t": t}, str(tmp_path / "model.safetensors"))
    holder = torch.nn.Module()
    holder.register_buffer("t", t)
    monkeypatch.setattr(weights, "CHUNK_BYTES", 64)
    for src in (SafetensorsSource(tmp_path), ModuleSource(holder)):
        sink = _Sink()
        assert src.copy_to("t", sink) == 400
        assert sink.getvalue() == _bytes(t) and max(sink.sizes) <= 64 and len(sink.sizes) == 7, src
        assert torch.equal(src.read("t"), t)  # the safetensors read goes in 64-byte pieces too
