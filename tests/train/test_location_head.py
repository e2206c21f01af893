"""The planner VLM's quadratic location head: the number tokens' rows of the output matrix are a free
part plus a parabola in the number, so the greedy number follows the hidden state linearly; exported as
an ordinary f32 ``output.weight`` that llama.cpp's quantiser leaves alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgebridge.train.planner.data import constant_phrases, vocab_texts  # noqa: E402
from edgebridge.train.planner.model import LOCATION_CENTRE, LOCATION_SCALE, PlannerVLM, VLMConfig  # noqa: E402
from edgebridge.train.planner.tokenizer import PlanTokenizer  # noqa: E402
from edgebridge.train.planner.trainer import model_config  # noqa: E402


@pytest.fixture(scope="module")
def tok() -> PlanTokenizer:
    return PlanTokenizer.build(vocab_texts(["put the mug in the bin"], 320, 240), constant_phrases(320, 240))


def model_for(tok: PlanTokenizer, head: str = "quadratic") -> PlannerVLM:
    torch.manual_seed(0)
    m = PlannerVLM(VLMConfig(vocab_size=len(tok), vit_width=64, vit_layers=1, vit_heads=2, vit_ff=128, patch=40,
                             lm_width=64, lm_layers=1, lm_heads=2, lm_ff=128, location_head=head))
    m.set_location_tokens(tok.number_ids)
    return m


def test_rows_are_free_plus_a_parabola(tok):
    m = model_for(tok)
    with torch.no_grad():
        m.loc_lin.normal_()
        m.loc_quad.normal_()
    w, free, g = m.output_weight().detach(), m.output.weight.detach(), m.config.location_gain
    for n in (-90, 0, 115, 200, 319):
        t = (n - LOCATION_CENTRE) / LOCATION_SCALE
        i = tok.number_ids[n]
        torch.testing.assert_close(w[i], free[i] + g * (t * m.loc_lin + t * t * m.loc_quad).detach())
    others = [i for i in range(len(tok)) if i not in set(tok.number_ids.values())]
    assert torch.equal(w[others], free[others])  # structural tokens keep their free rows


def test_greedy_number_follows_the_hidden_state_linearly(tok):
    """b.h = -q and a.h = 2 q t* put the peak of the number logits at t*: argmax = the nearest pixel."""
    m = model_for(tok)
    d = m.config.lm_width
    with torch.no_grad():
        m.output.weight.zero_()
        m.loc_quad.copy_(-torch.eye(d)[0])
        m.loc_lin.copy_(torch.eye(d)[1])
        w = m.output_weight()
        ids = torch.tensor(tok.u_ids)
        for target in (0.3, 37.0, 129.6, 250.4, 319.0):
            q = 2.0
            h = torch.zeros(d)
            h[0], h[1] = q, 2 * q * (target - LOCATION_CENTRE) / LOCATION_SCALE
            assert int((w[ids] @ h).argmax()) == round(target), target


def test_free_head_has_no_extra_parameters(tok):
    free, quad = model_for(tok, "free"), model_for(tok)
    assert not hasattr(free, "loc_lin")
    assert not any(k.startswith("loc_") for k in free.state_dict())  # older checkpoints load strictly
    assert torch.equal(free.output_weight(), free.output.weight)
    assert sum(p.numel() for p in quad.parameters()) - sum(p.numel() for p in free.parameters()) == 2 * 64
    with pytest.raises(ValueError, match="location_head"):
        VLMConfig(location_head="cubic")


def test_runs_written_before_the_head_load_as_free():
    saved = {"model": {**VLMConfig().to_dict(), "vocab_size": 10}}
    saved["model"].pop("location_head")
    assert model_config(saved).location_head == "free"
    assert model_config({"model": {**VLMConfig().to_dict(), "vocab_size": 10}}).location_head == "quadratic"


def test_export_keeps_the_output_matrix_f32(tok, tmp_path):
    pytest.importorskip("llama_cpp")
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from edgebridge.export.vlm import quantize
    from edgebridge.export.vlm_gguf import write_lm

    m = PlannerVLM(VLMConfig(vocab_size=len(tok), vit_width=64, vit_layers=1, vit_heads=2, vit_ff=128, patch=40,
                             lm_width=256, lm_layers=1, lm_heads=4, lm_ff=256))
    m.set_location_tokens(tok.number_ids)
    with torch.no_grad():
        m.loc_lin.normal_()
        m.loc_quad.normal_()
    f32 = write_lm(m, tok, tmp_path / "lm.gguf")
    q8 = quantize(f32, tmp_path / "lm-q8.gguf", "Q8_0", keep_output=True)
    plain = quantize(f32, tmp_path / "lm-q8-all.gguf", "Q8_0")
    types = {t.name: t for t in gguf.GGUFReader(str(q8)).tensors}
    assert types["output.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert types["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    want = m.output_weight().detach().numpy()
    got = np.asarray(types["output.weight"].data).reshape(want.shape)
    np.testing.assert_array_equal(got, want)
    out_plain = {t.name: t for t in gguf.GGUFReader(str(plain)).tensors}["output.weight"]
    assert out_plain.tensor_type != gguf.GGMLQuantizationType.F32  # without keep_output it is quantised


def test_yaw_weight_scales_only_the_yaw_term(tok):
    from edgebridge.train.planner.tokenizer import SLOT_YAW
    from edgebridge.train.planner.trainer import plan_loss

    answer = ('{"anchors": [{"point_2d": [312, 188], "gripper": "close"}, {"point_2d": [0, 239], "gripper": "open"}], '
              '"yaw": -30, "subtasks": [0]}')
    ids, slots, values = tok.encode_answer(answer)
    b = {"target": torch.tensor(ids), "slot": torch.tensor(slots), "value": torch.tensor(values, dtype=torch.float32)}
    torch.manual_seed(1)
    logits = torch.randn(len(ids), len(tok))
    n, y = len(ids), int((torch.tensor(slots) == SLOT_YAW).sum())
    base, heavy = plan_loss(logits, b, tok, 1.0, 3.0), plan_loss(logits, b, tok, 1.0, 3.0, yaw_weight=5.0)
    lp = torch.log_softmax(logits[torch.tensor(slots) == SLOT_YAW], -1)[:, tok.yaw_ids]
    d = torch.remainder(torch.arange(-90, 91, dtype=torch.float32) - (-30) + 90, 180) - 90
    yaw_term = -(torch.softmax(-0.5 * (d / 3.0) ** 2, -1) * lp).sum() / n
    assert y == 1
    torch.testing.assert_close(heavy - base, 4.0 * yaw_term)
