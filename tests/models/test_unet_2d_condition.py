"""UNet2DConditionModel: shapes, argument checks, attention slicing, gradient checkpointing, save/load."""

import pytest
import torch

from torchdiffusion import UNet2DConditionModel, UNet2DConditionOutput

TINY = dict(
    sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=12,
    attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
XL = dict(
    TINY, addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 + 6 * 4,
    use_linear_projection=True, transformer_layers_per_block=(2, 1),
)


def _model(**overrides):
    torch.manual_seed(0)
    return UNet2DConditionModel(**dict(TINY, **overrides)).eval()


def _inputs(batch=2, size=8, ctx=12, seq=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 4, size, size, generator=g), torch.randn(batch, seq, ctx, generator=g)


def _xl_added(batch=2):
    return {"text_embeds": torch.randn(batch, 6), "time_ids": torch.ones(batch, 6)}


def test_output_shape_and_tuple():
    model = _model(out_channels=3)
    x, ctx = _inputs()
    with torch.no_grad():
        out = model(x, 5, ctx)
        assert isinstance(out, UNet2DConditionOutput)
        assert out.sample.shape == (2, 3, 8, 8)
        (tup,) = model(x, torch.tensor([5, 6]), ctx, return_dict=False)
        assert tup.shape == (2, 3, 8, 8)
        odd = model(torch.randn(1, 4, 7, 9), torch.tensor(3), ctx[:1]).sample
        assert odd.shape == (1, 3, 7, 9)


def test_channels_last_input_gives_same_result():
    model = _model()
    x, ctx = _inputs()
    with torch.no_grad():
        a = model(x, 5, ctx).sample
        b = model(x.contiguous(memory_format=torch.channels_last), 5, ctx).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)



def test_training_keeps_the_input_layout_and_gradients_match_channels_last():
    """Under autograd the model keeps the input's layout (NCHW stays NCHW through the attention blocks, whose token
    views are channels-last in memory); the values and gradients equal the channels-last run's."""
    from torchdiffusion.models.layers.cpu_kernels import records_graph, use_channels_last

    model = _model().train()
    x, ctx = _inputs()
    assert records_graph(model) and not use_channels_last(x, model) and use_channels_last(x)
    with torch.no_grad():
        assert not records_graph(model) and use_channels_last(x, model)
    layouts = []
    hook = model.down_blocks[0].attentions[0].register_forward_hook(
        lambda m, i, out: layouts.append(out.is_contiguous())
    )
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model.zero_grad()
        out = model(x.contiguous(memory_format=memory_format), 5, ctx).sample
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    hook.remove()
    assert layouts == [True, False]  # NCHW in, NCHW through the transformer; channels-last in, channels-last
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    frozen = _model().requires_grad_(False)
    assert not records_graph(frozen) and records_graph(frozen, x.requires_grad_())

def test_num_attention_heads_is_the_real_head_count():
    quirky = _model(attention_head_dim=4)
    explicit = _model(num_attention_heads=4, attention_head_dim=99)
    explicit.load_state_dict(quirky.state_dict())
    assert quirky.down_blocks[0].attentions[0].transformer_blocks[0].attn1.heads == 4
    x, ctx = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(quirky(x, 1, ctx).sample, explicit(x, 1, ctx).sample)


@pytest.mark.parametrize(
    ("overrides", "match", "error"),
    [
        (dict(up_block_types=("UpBlock2D",)), "up_block_types", ValueError),
        (dict(block_out_channels=(16, 32, 64)), "block_out_channels", ValueError),
        (dict(down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D")), "down_block_types", ValueError),
        (dict(up_block_types=("UpBlock2D", "Bogus")), "up_block_types", ValueError),
        (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "mid_block_type", ValueError),
        (dict(attention_head_dim=5), "attention_head_dim", ValueError),
        (dict(num_attention_heads=(4, 5)), "num_attention_heads", ValueError),
        (dict(attention_head_dim=(4, 4, 4)), "attention_head_dim", ValueError),
        (dict(dual_cross_attention=True), "dual_cross_attention", ValueError),
        (dict(layers_per_block=(1, 1, 1)), "layers_per_block", ValueError),
        (dict(layers_per_block=0), "layers_per_block", ValueError),
        (dict(cross_attention_dim=(12,)), "cross_attention_dim", ValueError),
        (dict(only_cross_attention=(True,)), "only_cross_attention", ValueError),
        (dict(norm_num_groups=5), "norm_num_groups", ValueError),
        (dict(norm_num_groups=None), "norm_num_groups", ValueError),
        (dict(transformer_layers_per_block=((1,), (1,))), "reverse_transformer_layers_per_block", ValueError),
        (dict(transformer_layers_per_block=(1, 1, 1)), "transformer_layers_per_block", ValueError),
        (dict(addition_embed_type="text_time"), "addition_time_embed_dim", ValueError),
        (dict(addition_embed_type="text_time", addition_time_embed_dim=4), "projection_class_embeddings_input_dim",
         ValueError),
        (dict(addition_embed_type="image"), "addition_embed_type", NotImplementedError),
        (dict(class_embed_type="bogus"), "class_embed_type", ValueError),
        (dict(class_embed_type="projection"), "projection_class_embeddings_input_dim", ValueError),
        (dict(time_embedding_type="learned"), "time_embedding_type", ValueError),
        (dict(resnet_time_scale_shift="spatial"), "resnet_time_scale_shift", ValueError),
        (dict(conv_in_kernel=2), "conv_in_kernel", ValueError),
        (dict(conv_out_kernel=0), "conv_out_kernel", ValueError),
        (dict(encoder_hid_dim_type="image_proj", encoder_hid_dim=8), "encoder_hid_dim_type", NotImplementedError),
        (dict(encoder_hid_dim_type="text_proj"), "encoder_hid_dim", ValueError),
        (dict(attention_type="gated"), "attention_type", NotImplementedError),
        (dict(time_embedding_type="fourier", time_embedding_dim=33), "time_embedding_dim", ValueError),
    ],
)
def test_bad_constructor_arguments(overrides, match, error):
    with pytest.raises(error, match=match):
        UNet2DConditionModel(**dict(TINY, **overrides))


def test_bad_forward_arguments():
    model = _model()
    x, ctx = _inputs()
    cases = [
        (dict(sample=torch.randn(2, 3, 8, 8)), "sample"),
        (dict(sample=torch.randn(4, 8, 8)), "sample"),
        (dict(encoder_hidden_states=torch.randn(2, 3, 13)), "encoder_hidden_states"),
        (dict(encoder_hidden_states=torch.randn(3, 3, 12)), "encoder_hidden_states"),
        (dict(encoder_hidden_states=torch.randn(2, 12)), "encoder_hidden_states"),
        (dict(encoder_hidden_states=None), "encoder_hidden_states"),
        (dict(timestep=torch.tensor([1, 2, 3])), "timestep"),
        (dict(timestep=torch.ones(2, 1)), "timestep"),
        (dict(timestep_cond=torch.randn(2, 3)), "timestep_cond"),
        (dict(mid_block_additional_residual=torch.zeros(2, 32, 4, 4)), "down_block_additional_residuals"),
        (dict(down_block_additional_residuals=(torch.zeros(1),), mid_block_additional_residual=torch.zeros(1)),
         "down_block_additional_residuals"),
    ]
    for kwargs, match in cases:
        call = {"sample": x, "timestep": 3, "encoder_hidden_states": ctx, **kwargs}
        with pytest.raises(ValueError, match=match):
            model(**call)
    with pytest.raises(TypeError, match="timestep"):
        model(x, "3", ctx)


def test_class_labels_required():
    model = _model(num_class_embeds=3)
    x, ctx = _inputs()
    with pytest.raises(ValueError, match="class_labels"):
        model(x, 1, ctx)
    assert model(x, 1, ctx, class_labels=torch.tensor([0, 2])).sample.shape == x.shape


def test_text_time_conditioning_checks():
    torch.manual_seed(0)
    model = UNet2DConditionModel(**XL).eval()
    x, ctx = _inputs()
    with torch.no_grad():
        assert model(x, 1, ctx, added_cond_kwargs=_xl_added()).sample.shape == x.shape
    bads = [
        None,
        {},
        {"text_embeds": torch.randn(2, 6)},
        {"text_embeds": torch.randn(2, 7), "time_ids": torch.ones(2, 6)},
        {"text_embeds": torch.randn(1, 6), "time_ids": torch.ones(1, 6)},
    ]
    for bad in bads:
        with pytest.raises(ValueError, match="added_cond_kwargs"):
            model(x, 1, ctx, added_cond_kwargs=bad)


def test_attention_slicing_same_result_and_checks():
    model = _model(attention_head_dim=8)
    x, ctx = _inputs()
    with torch.no_grad():
        want = model(x, 2, ctx).sample
        for size in ("auto", "max", 2, None):
            model.set_attention_slice(size)
            torch.testing.assert_close(model(x, 2, ctx).sample, want, atol=1e-5, rtol=0)
        n = len(model._sliceable())
        model.set_attention_slice([1] * n)
        torch.testing.assert_close(model(x, 2, ctx).sample, want, atol=1e-5, rtol=0)
        model.set_default_attn_processor()
    for bad in (0, 99, [1], "half", 1.5):
        with pytest.raises(ValueError, match="slice_size"):
            model.set_attention_slice(bad)


def test_gradient_checkpointing_gives_same_gradients():
    x, ctx = _inputs()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = UNet2DConditionModel(**XL).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert model.is_gradient_checkpointing
        model(x, 3, ctx, added_cond_kwargs=_xl_added()).sample.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def test_save_and_load_round_trip(tmp_path):
    model = _model(attention_head_dim=(2, 4), only_cross_attention=True, encoder_hid_dim=5)
    assert model.config.encoder_hid_dim_type == "text_proj"
    model.save_pretrained(tmp_path)
    loaded = UNet2DConditionModel.from_pretrained(tmp_path)
    assert loaded.config.attention_head_dim == [2, 4] or tuple(loaded.config.attention_head_dim) == (2, 4)
    x, _ = _inputs()
    ctx = torch.randn(2, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 4, ctx).sample, model(x, 4, ctx).sample)
