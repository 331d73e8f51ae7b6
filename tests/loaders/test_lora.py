"""LoRA without the Diffusers oracle: the model-level adapter API (what training scripts call), saving and loading
round trips (safetensors, ``.bin`` with ``weights_only``, a Hub id from the offline cache), the thread-safe
per-call scale, all-or-nothing loading, and an error naming the argument for every bad input."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import torchdiffusion as td
from tests.sd_fixtures import tiny_sd_components, tiny_unet

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
from peft.utils import get_peft_model_state_dict  # noqa: E402

ATTN = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _unet_lora(targets=ATTN, r=4, alpha=4, seed=0):
    """A PEFT-layout LoRA state dict for the tiny UNet (keys without prefix)."""
    unet = tiny_unet(td)
    unet.add_adapter(peft.LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))
    _randomise(unet, seed)
    return get_peft_model_state_dict(unet)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 32, generator=g)


def _out(unet, **kwargs):
    x, t, ctx = _inputs()
    with torch.no_grad():
        return unet(x, t, ctx, **kwargs).sample


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


def _pipe(tok):
    p = td.StableDiffusionPipeline(**tiny_sd_components(td, tok), requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe, scale=None, callback=None):
    kwargs = {} if scale is None else {"cross_attention_kwargs": {"scale": scale}}
    return pipe("the cat", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent",
                callback_on_step_end=callback, **kwargs).images


def _lora_pipe(tok):
    """A pipeline with one adapter on the UNet and the text encoder (randomised)."""
    pipe = _pipe(tok)
    lora = {f"unet.{k}": v for k, v in _unet_lora().items()}
    text = td.StableDiffusionPipeline(**tiny_sd_components(td, tok), requires_safety_checker=False).text_encoder
    peft.inject_adapter_in_model(peft.LoraConfig(r=2, lora_alpha=2, target_modules=TEXT), text)
    _randomise(text, 1)
    lora.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(text).items()})
    pipe.load_lora_weights(lora, adapter_name="style")
    return pipe


def _snapshot(pipe):
    return {
        "unet": {k: v.clone() for k, v in pipe.unet.state_dict().items()},
        "text": {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()},
        "adapters": pipe.get_list_adapters(),
        "active": pipe.get_active_adapters(),
        "grads": [p.requires_grad for p in pipe.unet.parameters()],
    }


def _assert_unchanged(pipe, before):
    after = _snapshot(pipe)
    for part in ("unet", "text"):
        assert list(after[part]) == list(before[part])
        assert all(torch.equal(after[part][k], before[part][k]) for k in before[part])
    assert after["adapters"] == before["adapters"] and after["active"] == before["active"]
    assert after["grads"] == before["grads"]


# ---- model level -------------------------------------------------------------------------------------------
def test_import_does_not_import_peft():
    code = ("import sys, torchdiffusion as td; td.UNet2DConditionModel; td.StableDiffusionPipeline; "
            "import torchdiffusion.loaders; print('peft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_model_adapter_api_as_training_scripts_use_it(tmp_path):
    unet = tiny_unet(td)
    base = _out(unet)
    assert _out(unet, cross_attention_kwargs={"scale": 0.5}).equal(base)  # no adapters: the scale is harmless
    config = peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=ATTN)
    unet.add_adapter(config)
    assert unet.active_adapters() == ["default"]
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.allclose(_out(unet), base, atol=1e-6)  # gaussian init: B = 0
    _randomise(unet)
    with_lora = _out(unet)
    assert (with_lora - base).abs().max() > 1e-2
    # training step: gradients reach the adapters through our attention path
    x, t, ctx = _inputs()
    unet(x, t, ctx).sample.square().mean().backward()
    assert all(p.grad is not None for n, p in unet.named_parameters() if "lora_" in n)
    unet.disable_adapters()
    assert torch.allclose(_out(unet), base, atol=1e-6)
    unet.enable_adapters()
    assert torch.allclose(_out(unet), with_lora, atol=1e-6)
    assert torch.allclose(_out(unet, cross_attention_kwargs={"scale": 0.0}), base, atol=1e-6)
    half = _out(unet, cross_attention_kwargs={"scale": 0.5})
    assert 1e-3 < (half - base).abs().max() < (with_lora - base).abs().max()
    state = get_peft_model_state_dict(unet)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in state)
    assert len(state) == 16 * 2 * 4 * 2  # transformer blocks x attn1/attn2 x q,k,v,out x A,B
    diffusers_keys = td.utils.convert_state_dict_to_diffusers(state)
    assert all(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in diffusers_keys)
    assert td.utils.convert_state_dict_to_peft(diffusers_keys).keys() == state.keys()
    # save_lora_adapter -> load_lora_adapter into a fresh model gives the same outputs
    unet.save_lora_adapter(tmp_path, adapter_name="default")
    fresh = tiny_unet(td)
    fresh.load_lora_adapter(str(tmp_path), prefix=None, adapter_name="again")
    assert fresh.active_adapters() == ["again"]
    assert torch.allclose(_out(fresh), with_lora, atol=1e-6)
    # a second adapter, switching, deleting, unloading
    unet.add_adapter(peft.LoraConfig(r=2, target_modules=["to_q"]), adapter_name="other")
    assert unet.active_adapters() == ["other"]
    unet.set_adapter(["default", "other"])
    assert unet.active_adapters() == ["default", "other"]
    unet.set_adapters(["default", "other"], weights=[0.0, 1.0])
    assert torch.allclose(_out(unet), base, atol=1e-6)  # "other" is still zero-initialised
    unet.delete_adapters("other")
    assert list(unet.peft_config) == ["default"]
    unet.unload_lora()
    assert all("lora" not in k and "base_layer" not in k for k in unet.state_dict())
    assert torch.allclose(_out(unet), base, atol=1e-6)


def test_model_bad_inputs():
    unet = tiny_unet(td)
    with pytest.raises(ValueError, match="active_adapters|adapter"):
        unet.active_adapters()
    with pytest.raises(ValueError, match="adapter_config"):
        unet.add_adapter({"r": 4})
    config = peft.LoraConfig(r=2, target_modules=["to_q"])
    with pytest.raises(ValueError, match="adapter_name"):
        unet.add_adapter(config, adapter_name="a.b")
    unet.add_adapter(config)
    with pytest.raises(ValueError, match="adapter_name"):
        unet.add_adapter(peft.LoraConfig(r=2, target_modules=["to_q"]))
    with pytest.raises(ValueError, match="adapter_name"):
        unet.set_adapter("missing")
    with pytest.raises(ValueError, match="adapter_names"):
        unet.delete_adapters(["missing"])
    with pytest.raises(ValueError, match="weights"):
        unet.set_adapters(["default"], weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="weights"):
        unet.set_adapters("default", weights="strong")
    with pytest.raises(ValueError, match="lora_scale"):
        unet.fuse_lora(lora_scale=float("nan"))
    with pytest.raises(ValueError, match="scale"):
        _out(unet, cross_attention_kwargs={"scale": "high"})
    with pytest.raises(TypeError, match="colour"):
        unet.load_lora_adapter({}, colour=1)
    with pytest.raises(ValueError, match="prefix"):
        unet.load_lora_adapter({f"unet.{k}": v for k, v in _unet_lora().items()})  # Diffusers' default "transformer"


# ---- pipeline level: files ---------------------------------------------------------------------------------
def test_save_and_load_round_trip_safetensors_and_bin(tok, tmp_path):
    pipe = _lora_pipe(tok)
    expected = _run(pipe)
    unet_layers = td.utils.convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name="style"))
    text_layers = get_peft_model_state_dict(pipe.text_encoder, adapter_name="style")
    td.StableDiffusionPipeline.save_lora_weights(tmp_path / "st", unet_lora_layers=unet_layers,
                                                 text_encoder_lora_layers=text_layers)
    td.StableDiffusionPipeline.save_lora_weights(tmp_path / "bin", unet_lora_layers=unet_layers,
                                                 text_encoder_lora_layers=text_layers, safe_serialization=False)
    assert os.listdir(tmp_path / "st") == ["pytorch_lora_weights.safetensors"]
    assert os.listdir(tmp_path / "bin") == ["pytorch_lora_weights.bin"]
    for folder in ("st", "bin"):
        fresh = _pipe(tok)
        fresh.load_lora_weights(str(tmp_path / folder))
        assert fresh.get_list_adapters() == {"unet": ["default_0"], "text_encoder": ["default_0"]}
        assert torch.allclose(_run(fresh), expected, atol=1e-5)
    state, alphas = td.StableDiffusionPipeline.lora_state_dict(str(tmp_path / "st"))
    assert alphas is None
    assert set(state) == {f"unet.{k}" for k in unet_layers} | {f"text_encoder.{k}" for k in text_layers}


class NotATensor:
    pass


def test_bin_is_read_weights_only(tok, tmp_path):
    torch.save({"unet.x.lora_A.weight": NotATensor()}, tmp_path / "pytorch_lora_weights.bin")
    pipe = _pipe(tok)
    with pytest.raises(OSError, match="weights_only"):
        pipe.load_lora_weights(str(tmp_path))


def test_hub_id_from_offline_cache(tok, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--tiny-lora"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    lora = {f"unet.{k}": v for k, v in _unet_lora().items()}
    save_file(lora, repo / "snapshots" / commit / "pytorch_lora_weights.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe, reference = _pipe(tok), _pipe(tok)
    pipe.load_lora_weights("someone/tiny-lora", cache_dir=str(tmp_path / "cache"))
    reference.load_lora_weights(lora)
    assert torch.equal(_run(pipe), _run(reference))
    with pytest.raises((FileNotFoundError, OSError), match="pytorch_lora_weights"):
        pipe.load_lora_weights("someone/not-cached", cache_dir=str(tmp_path / "cache"))


# ---- the per-call scale in threads -------------------------------------------------------------------------
def test_per_call_scale_is_thread_safe(tok):
    pipe = _lora_pipe(tok)
    scales = (0.0, 1.0, 0.4)
    sequential = [_run(pipe, s) for s in scales]
    assert (sequential[0] - sequential[1]).abs().max() > 1e-2
    barrier = threading.Barrier(len(scales), timeout=60)

    def step_together(p, i, t, tensors):
        barrier.wait()  # every thread finishes step i before any starts step i + 1: the steps interleave
        return tensors

    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(k):
        try:
            results[k] = _run(pipe, scales[k], callback=step_together)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(scales))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for k in range(len(scales)):
        assert torch.equal(results[k], sequential[k]), scales[k]


# ---- all-or-nothing ----------------------------------------------------------------------------------------
def test_bad_shape_or_key_changes_nothing(tok):
    pipe = _lora_pipe(tok)
    before = _snapshot(pipe)
    lora = {f"unet.{k}": v for k, v in _unet_lora(seed=3).items()}
    bad_key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"
    wrong_shape = dict(lora)
    wrong_shape[bad_key] = torch.zeros(9, 4)
    with pytest.raises(ValueError, match=r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q"):
        pipe.load_lora_weights(wrong_shape, adapter_name="new")
    unknown = dict(lora)
    unknown["unet.down_blocks.0.nothing.lora_A.weight"] = torch.zeros(4, 8)
    unknown["unet.down_blocks.0.nothing.lora_B.weight"] = torch.zeros(8, 4)
    with pytest.raises(ValueError, match=r"down_blocks\.0\.nothing"):
        pipe.load_lora_weights(unknown, adapter_name="new")
    odd = dict(lora)
    odd["vae.encoder.conv_in.lora_A.weight"] = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"vae\.encoder\.conv_in"):
        pipe.load_lora_weights(odd, adapter_name="new")
    half = {k: v for k, v in lora.items() if "lora_B" not in k}
    with pytest.raises(ValueError, match="down and up"):
        pipe.load_lora_weights(half, adapter_name="new")
    kohya = {"lora_unet_down_blocks_0_nothing.lora_down.weight": torch.zeros(4, 8),
             "lora_unet_down_blocks_0_nothing.lora_up.weight": torch.zeros(8, 4)}
    with pytest.raises(ValueError, match="lora_unet_down_blocks_0_nothing"):
        pipe.load_lora_weights(kohya, adapter_name="new")
    with pytest.raises(ValueError, match="adapter_name"):
        pipe.load_lora_weights(lora, adapter_name="style")  # in use
    _assert_unchanged(pipe, before)


def test_failure_in_the_second_component_undoes_the_first(tok, monkeypatch):
    from torchdiffusion.loaders import loading

    pipe = _lora_pipe(tok)
    before = _snapshot(pipe)
    expected = _run(pipe)
    fresh = _pipe(tok)
    fresh_before = _snapshot(fresh)
    real = loading.inject_lora

    def flaky(model, *args):
        real(model, *args)
        if model is not pipe.unet and model is not fresh.unet:
            raise RuntimeError("injected failure")

    monkeypatch.setattr(loading, "inject_lora", flaky)
    text = get_peft_model_state_dict(pipe.text_encoder, adapter_name="style")
    text = {f"text_encoder.{k}": v for k, v in text.items()}
    lora = {**{f"unet.{k}": v for k, v in _unet_lora(seed=4).items()}, **text}
    for target, snap in ((pipe, before), (fresh, fresh_before)):  # with and without adapters already loaded
        with pytest.raises(RuntimeError, match="injected failure"):
            target.load_lora_weights(lora, adapter_name="new")
        _assert_unchanged(target, snap)
    assert torch.equal(_run(pipe), expected)


# ---- pipeline level: bad inputs ----------------------------------------------------------------------------
def test_pipeline_bad_inputs(tok, tmp_path):
    pipe = _lora_pipe(tok)
    with pytest.raises(TypeError, match="pretrained_model_name_or_path_or_dict"):
        pipe.load_lora_weights(123)
    with pytest.raises(ValueError, match="pretrained_model_name_or_path_or_dict"):
        pipe.load_lora_weights({"unet.a.lora_A.weight": [1.0]})
    with pytest.raises(ValueError, match="weight_name"):
        pipe.load_lora_weights(str(tmp_path), weight_name="../escape.safetensors")
    with pytest.raises(TypeError, match="colour"):
        pipe.load_lora_weights({}, colour="red")
    with pytest.raises(ValueError, match="empty"):
        pipe.load_lora_weights({})
    with pytest.raises(FileNotFoundError, match="weight_name"):
        pipe.load_lora_weights(str(tmp_path))
    with pytest.raises(ValueError, match="adapter_name"):
        pipe.load_lora_weights({"unet.x.lora_A.weight": torch.zeros(1)}, adapter_name="")
    with pytest.raises(ValueError, match="adapter_names"):
        pipe.set_adapters("nope")
    with pytest.raises(ValueError, match="adapter_weights"):
        pipe.set_adapters(["style"], adapter_weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="adapter_weights"):
        pipe.set_adapters("style", adapter_weights="strong")
    with pytest.raises(ValueError, match="adapter_weights"):
        pipe.set_adapters("style", adapter_weights={"vae": 1.0})
    with pytest.raises(ValueError, match="adapter_names"):
        pipe.delete_adapters("nope")
    with pytest.raises(ValueError, match="lora_scale"):
        pipe.fuse_lora(lora_scale="0.5")
    with pytest.raises(ValueError, match="components"):
        pipe.fuse_lora(components=["vae"])
    with pytest.raises(ValueError, match="adapter_names"):
        pipe.fuse_lora(adapter_names=["nope"])
    with pytest.raises(ValueError, match=r'cross_attention_kwargs\["scale"\]'):
        _run(pipe, scale="strong")
    with pytest.raises(ValueError, match="unet_lora_layers"):
        td.StableDiffusionPipeline.save_lora_weights(tmp_path)
    with pytest.raises(TypeError, match="unet_lora_layers"):
        td.StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers={"a": 1.0})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="save_directory"):
        td.StableDiffusionPipeline.save_lora_weights(tmp_path / "file", unet_lora_layers={"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="weight_name"):
        td.StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers={"a": torch.zeros(1)},
                                                     weight_name="a/b.safetensors")
    with pytest.raises(ValueError, match="hotswap"):
        pipe.load_lora_weights({}, hotswap=True)


def test_other_sd_pipelines_have_the_lora_api(tok):
    parts = tiny_sd_components(td, tok)
    img2img = td.StableDiffusionImg2ImgPipeline(**parts, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    img2img.load_lora_weights({f"unet.{k}": v for k, v in _unet_lora().items()}, adapter_name="x")
    assert img2img.get_active_adapters() == ["x"]
    image = torch.rand(1, 3, 64, 64)
    run = lambda s: img2img("the cat", image=image, num_inference_steps=3, strength=0.6, output_type="np",  # noqa: E731
                            generator=torch.Generator().manual_seed(0), cross_attention_kwargs={"scale": s}).images
    assert np.abs(run(0.0) - run(1.0)).max() > 1e-4
    assert td.StableDiffusionInpaintPipeline.load_lora_weights is td.StableDiffusionPipeline.load_lora_weights


def test_model_load_with_prefix_and_network_alphas():
    lora = {f"unet.{k}": v for k, v in _unet_lora().items()}
    lora["text_encoder.other.lora_A.weight"] = torch.zeros(1)  # another component's key: skipped by the prefix
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    unet = tiny_unet(td)
    unet.load_lora_adapter(lora, prefix="unet", adapter_name="a",
                           network_alphas={f"unet.{path}.alpha": 8.0, "text_encoder.x.alpha": 1.0})
    layer = unet.get_submodule(path)
    assert layer.scaling["a"] == 2.0  # alpha 8 / rank 4
    assert unet.get_submodule(path.replace("to_q", "to_k")).scaling["a"] == 1.0  # no alpha: rank


def test_model_load_reads_the_prefixed_header_of_a_pipeline_file(tmp_path):
    lora = {k: v for k, v in _unet_lora().items()}
    td.StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=lora,
                                                 unet_lora_adapter_metadata={"r": 4, "lora_alpha": 2})
    unet = tiny_unet(td)
    unet.load_lora_adapter(str(tmp_path), prefix="unet")
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v.scaling["default_0"] == 0.5
