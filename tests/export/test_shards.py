"""The streamed shard writer gives the very bytes of save_file per shard, loads everywhere, and cleans up."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import BinaryIO

import pytest
import torch
from safetensors.torch import load_file, save_file

from signround.export.io import save_tensors
from signround.export.shards import ShardedSafetensorsWriter

ROOT = Path(__file__).resolve().parents[2]
FORMAT = {"format": "pt"}


def _reference(tensors: dict[str, torch.Tensor], folder: Path, limit: int, metadata: dict[str, str]) -> list[str]:
    """The in-memory algorithm signround used before the writer: save_file per shard."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous().cpu()
        size += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for shard, fname in zip(shards, names):
        save_file(shard, str(folder / fname), metadata=metadata)
        weight_map.update({k: fname for k in shard})
    if n > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return names


def _write(tensors: dict[str, torch.Tensor], folder: Path, limit: int, metadata: dict[str, str] | None = None) -> list[str]:
    with ShardedSafetensorsWriter(folder, limit, metadata) as w:
        for name, t in tensors.items():
            w.add(name, t)
        return w.close()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _mixed() -> dict[str, torch.Tensor]:
    """Many dtypes, 0-d and empty tensors, a non-contiguous one, names whose order differs from arrival."""
    g = torch.Generator().manual_seed(0)
    return {
        "z.weight": torch.randn(5, 3, generator=g),
        "a.bias": torch.randn(7, generator=g).to(torch.bfloat16),
        "m.half": torch.randn(2, 3, generator=g).half(),
        "b.ids": torch.randint(-9, 9, (4,), generator=g, dtype=torch.int32),
        "y.codes": torch.randint(0, 255, (3, 3), generator=g, dtype=torch.uint8),
        "c.long": torch.randint(-9, 9, (3,), generator=g, dtype=torch.int64),
        "x.mask": torch.randn(5, generator=g) > 0,
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4, dtype=torch.int64),
        "A.upper": torch.randn(3, 4, generator=g).t(),
        "é.unicode": torch.randn(2, generator=g),
        'q"uote\\back\nline\x01': torch.randn(1, generator=g).double(),
        "b.ids2": torch.arange(6, dtype=torch.int32),
    }


@pytest.mark.parametrize("limit", [10**9, 64, 24, 0])
def test_shards_are_byte_identical_to_save_file(tmp_path, limit):
    tensors = _mixed()
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    ours.mkdir()
    ref.mkdir()
    assert _write(tensors, ours, limit) == _reference(tensors, ref, limit, FORMAT)
    assert _files(ours) == _files(ref)  # every shard and the index, byte for byte; no hidden file left
    if limit < 100:
        assert (ours / "model.safetensors.index.json").exists()


def test_the_dtype_order_is_the_library_s(tmp_path):
    """Every dtype safetensors writes from torch, one shard, names in reverse of the data order."""
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.float8_e5m2, torch.float8_e4m3fn, torch.float8_e8m0fnu,
              torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.int16, torch.uint16, torch.float16,
              torch.bfloat16, torch.int32, torch.uint32, torch.float32, torch.complex64, torch.float64,
              torch.int64, torch.uint64]
    tensors = {f"t{i:02d}": torch.arange(2 * d.itemsize, dtype=torch.uint8).view(d) for i, d in enumerate(dtypes)}
    for i, metadata in enumerate([FORMAT, {}, {"quantized_by": "signround ✓"}]):
        ours, ref = tmp_path / f"ours{i}", tmp_path / f"ref{i}"
        ours.mkdir()
        ref.mkdir()
        _write(tensors, ours, 10**9, metadata)
        _reference(tensors, ref, 10**9, metadata)
        assert _files(ours) == _files(ref)


def test_several_metadata_keys_keep_the_caller_order(tmp_path):
    """The library's order for several keys is random per process, so only the content can match."""
    meta = {"format": "pt", "b": "2", "a": "1"}
    _write({"w": torch.ones(3)}, tmp_path, 10**9, meta)
    raw = (tmp_path / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert list(header["__metadata__"].items()) == list(meta.items())
    assert torch.equal(load_file(tmp_path / "model.safetensors")["w"], torch.ones(3))


def test_no_tensor_gives_one_file_like_save_file(tmp_path):
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    ours.mkdir()
    ref.mkdir()
    assert _write({}, ours, 10) == _reference({}, ref, 10, FORMAT) == ["model.safetensors"]
    assert _files(ours) == _files(ref)


def test_save_tensors_keeps_its_outputs(tmp_path):
    tensors = _mixed()
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    ours.mkdir()
    ref.mkdir()
    assert save_tensors(tensors, ours, 40) == _reference(tensors, ref, 40, FORMAT)
    assert _files(ours) == _files(ref)
    assert save_tensors(tensors, ours) == ["model.safetensors"]


def test_files_load_back(tmp_path):
    tensors = _mixed()
    names = _write(tensors, tmp_path, 48)
    assert len(names) > 2
    loaded: dict[str, torch.Tensor] = {}
    for name in names:
        loaded.update(load_file(tmp_path / name))
    assert loaded.keys() == tensors.keys()
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t), k


def test_add_raw_streams_bytes_from_a_file(tmp_path):
    t = torch.randn(100, 7)
    src = tmp_path / "src.bin"
    src.write_bytes(t.numpy().tobytes())

    def copy(f: BinaryIO) -> int:
        n = 0
        with open(src, "rb") as s:
            while chunk := s.read(256):
                n += f.write(chunk)
        return n

    out, ref = tmp_path / "out", tmp_path / "ref"
    out.mkdir()
    ref.mkdir()
    with ShardedSafetensorsWriter(out, 3000) as w:
        w.add("first", torch.ones(2))
        w.add_raw("raw", torch.float32, (100, 7), copy)
        w.add("last", torch.zeros(3, dtype=torch.int64))
    _reference({"first": torch.ones(2), "raw": t, "last": torch.zeros(3, dtype=torch.int64)}, ref, 3000, FORMAT)
    assert _files(out) == _files(ref)


@pytest.mark.parametrize("returned, written", [(11, 12), (12, 11), (11, 11)])
def test_add_raw_with_a_wrong_byte_count_fails_and_leaves_nothing(tmp_path, returned, written):
    w = ShardedSafetensorsWriter(tmp_path, 16)
    w.add("a", torch.ones(4))
    w.add("b", torch.ones(4))  # the first shard is finished on disk
    with pytest.raises(ValueError, match="12 bytes"):
        w.add_raw("c", torch.float32, (3,), lambda f: (f.write(b"x" * written), returned)[1])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="aborted"):
        w.add("d", torch.ones(1))


@pytest.mark.parametrize("after_close", [False, True])
def test_an_exception_in_the_block_leaves_no_file(tmp_path, after_close):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardedSafetensorsWriter(tmp_path, 16) as w:
            for i in range(5):
                w.add(f"t{i}", torch.ones(4))
            if after_close:
                assert len(w.close()) == 5
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_misuse_is_refused(tmp_path):
    w = ShardedSafetensorsWriter(tmp_path)
    w.add("a", torch.ones(1))
    with pytest.raises(ValueError, match="already added"):
        w.add("a", torch.ones(1))
    with pytest.raises(ValueError, match="invalid tensor name"):
        w.add("__metadata__", torch.ones(1))
    with pytest.raises(ValueError, match="cannot be written"):
        w.add("f4", torch.zeros(2, dtype=torch.uint8).view(torch.float4_e2m1fn_x2))
    assert w.close() == w.close() == ["model.safetensors"]
    with pytest.raises(ValueError, match="closed"):
        w.add("b", torch.ones(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    with pytest.raises(ValueError, match="metadata"):
        ShardedSafetensorsWriter(tmp_path, metadata={"n": 1})  # type: ignore[dict-item]


def test_a_tiny_model_saved_in_shards_loads_with_transformers(tmp_path):
    import transformers

    from signround.export.io import float_state_dict
    from signround.testing import tiny_model

    model = tiny_model("llama")
    state = float_state_dict(model)
    names = _write(state, tmp_path, sum(t.numel() * t.element_size() for t in state.values()) // 3)
    assert len(names) >= 3
    model.config.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    for k, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], t), k
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


_MEMORY_SCRIPT = """
import sys, torch
from pathlib import Path
from signround.export.shards import ShardedSafetensorsWriter

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

n = 16 * 2**20  # 64 MiB of float32
with ShardedSafetensorsWriter(Path(sys.argv[1]), 3 * 4 * n) as w:
    w.add("warmup", torch.ones(4))
    before = hwm()
    for i in range(8):
        t = torch.full((n,), float(i))
        w.add(f"t{i}", t)
        del t
print(hwm() - before)
"""


@pytest.mark.slow
def test_memory_stays_about_one_tensor(tmp_path):
    """8 tensors of 64 MiB, three shards: the peak grows by one tensor plus the copy buffer, not more."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_MEMORY_SCRIPT), str(tmp_path)], env=env,
                         capture_output=True, text=True, check=True)
    growth = int(out.stdout.strip())
    tensor = 64 * 2**20
    assert growth < 1.5 * tensor, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "model.safetensors.index.json"
    assert len(list(tmp_path.iterdir())) == 4  # three shards and the index, no hidden file
