import json
import os

import pytest
import torch

from tests.helpers import TinyModel
from torchdiffusion.weights import index_name, parse_size, weights_name


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_names():
    assert weights_name("safetensors") == "diffusion_pytorch_model.safetensors"
    assert weights_name("bin", "fp16") == "diffusion_pytorch_model.fp16.bin"
    assert index_name("safetensors", "fp16") == "diffusion_pytorch_model.safetensors.index.fp16.json"


def test_round_trip_single_file(tmp_path):
    m = TinyModel(width=6)
    m.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = TinyModel.from_pretrained(tmp_path)
    assert _equal(m, loaded) and not loaded.training and loaded.config.width == 6


def test_sharded_round_trip_and_stale_shards_removed(tmp_path):
    m = TinyModel(width=8, depth=3)
    m.save_pretrained(tmp_path, max_shard_size=400)
    shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert len(shards) > 1 and shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(m.state_dict())
    assert _equal(m, TinyModel.from_pretrained(tmp_path))
    m.save_pretrained(tmp_path)  # unsharded save over a sharded one: old shards and index go
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_variant_and_dtype(tmp_path):
    m = TinyModel().half()
    m.save_pretrained(tmp_path, variant="fp16")
    assert "diffusion_pytorch_model.fp16.safetensors" in os.listdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="variant='fp16'"):
        TinyModel.from_pretrained(tmp_path)
    loaded = TinyModel.from_pretrained(tmp_path, variant="fp16")
    assert loaded.dtype == torch.float32  # weights cast into the model's dtype
    loaded16 = TinyModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    assert loaded16.dtype == torch.float16 and _equal(m, loaded16)


def test_bin_loads_with_weights_only(tmp_path):
    m = TinyModel()
    m.save_pretrained(tmp_path, safe_serialization=False)
    assert "diffusion_pytorch_model.bin" in os.listdir(tmp_path)
    assert _equal(m, TinyModel.from_pretrained(tmp_path))
    with pytest.raises(FileNotFoundError):
        TinyModel.from_pretrained(tmp_path, use_safetensors=True)


def test_pickle_with_code_is_refused(tmp_path):
    TinyModel().save_config(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(OSError, match="diffusion_pytorch_model.bin"):
        TinyModel.from_pretrained(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_legacy_attention_names_load(tmp_path):
    m = TinyModel()
    state = {k.replace("to_q", "query").replace("to_out.0", "proj_attn"): v for k, v in m.state_dict().items()}
    assert "attn.query.weight" in state and "attn.proj_attn.bias" in state
    from safetensors.torch import save_file

    m.save_config(tmp_path)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    assert _equal(m, TinyModel.from_pretrained(tmp_path))


def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path):
    from safetensors.torch import save_file

    m = TinyModel()
    m.save_config(tmp_path)
    state = dict(m.state_dict())
    state.pop("layers.0.weight")
    state["extra.weight"] = torch.zeros(1)
    state["layers.1.bias"] = torch.zeros(7)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError) as err:
        TinyModel.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "layers.0.weight" in msg and "extra.weight" in msg and "layers.1.bias" in msg


def test_truncated_file_names_the_file(tmp_path):
    m = TinyModel()
    m.save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(OSError, match="diffusion_pytorch_model.safetensors"):
        TinyModel.from_pretrained(tmp_path)


def test_config_overrides_and_unknown_kwargs(tmp_path):
    TinyModel().save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="bogus"):
        TinyModel.from_pretrained(tmp_path, bogus=1)
    with pytest.raises(TypeError, match="torch_dtype"):
        TinyModel.from_pretrained(tmp_path, torch_dtype="float16")
    m = TinyModel.from_pretrained(tmp_path, act_fn="gelu")
    assert m.config.act_fn == "gelu"


def test_bad_save_arguments(tmp_path):
    m = TinyModel()
    with pytest.raises(ValueError, match="max_shard_size"):
        m.save_pretrained(tmp_path, max_shard_size="lots")
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size(0)
    with pytest.raises(ValueError, match="variant"):
        m.save_pretrained(tmp_path, variant="../x")
    assert parse_size("1KiB") == 1024 and parse_size("2MB") == 2_000_000


def test_gradient_checkpointing_switch():
    m = TinyModel()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        m.enable_gradient_checkpointing()
    assert m.num_parameters() == sum(p.numel() for p in m.parameters())


def test_load_goes_into_live_parameters_even_when_state_dict_hands_out_copies(tmp_path):
    m = TinyModel()
    m.save_pretrained(tmp_path)

    class Hooked(TinyModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._register_state_dict_hook(lambda mod, sd, prefix, meta: {k: v.clone() for k, v in sd.items()})

    loaded = Hooked.from_pretrained(tmp_path)
    for (name, a), b in zip(m.named_parameters(), loaded.parameters()):
        assert torch.equal(a, b), name


def test_save_function_writes_bin_files(tmp_path):
    """``save_function`` (accelerate's ``accelerator.save``) replaces torch.save for .bin; safetensors ignore it."""
    m = TinyModel()
    seen = []

    def save(state, path):
        seen.append(os.path.basename(path))
        torch.save(state, path)

    m.save_pretrained(tmp_path / "bin", safe_serialization=False, save_function=save)
    assert seen == ["diffusion_pytorch_model.bin"]
    assert _equal(m, TinyModel.from_pretrained(tmp_path / "bin"))
    m.save_pretrained(tmp_path / "st", save_function=save)
    assert seen == ["diffusion_pytorch_model.bin"]
    with pytest.raises(TypeError, match="save_function"):
        m.save_pretrained(tmp_path / "x", save_function="torch.save")


def test_malicious_bin_weights_are_refused_and_their_code_never_runs(tmp_path):
    from tests.helpers import write_malicious_pickle

    m = TinyModel(width=4)
    m.save_pretrained(tmp_path / "model", safe_serialization=False)
    weights = tmp_path / "model" / "diffusion_pytorch_model.bin"
    assert weights.is_file()
    marker = tmp_path / "pwned"
    write_malicious_pickle(weights, marker, m.state_dict())
    with pytest.raises(OSError, match="weights_only"):
        TinyModel.from_pretrained(tmp_path / "model")
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the control: a plain unpickler does run the payload
    assert marker.exists()
