"""Hugging Face transformers built from small configs (no weights can be downloaded): BERT and
GPT-2 reading token ids, ViT reading images, each pruned to half its FLOPs in one shot with
its heads pruned, and the exported file equal to the pruned model; Llama, Phi-3, Gemma and
Qwen3 (rotary embeddings, grouped-query heads, written-out RMSNorms, per-head q and k norms)
with heads and width; GPT-J (rotary embedding before the heads move forward); DeBERTa-v3,
MPNet and T5 (relative position scores and biases); BLOOM and MPT (ALiBi biases computed
from numbers).
GPT-2's attention splits one fused projection by width and concatenates keys and values with
an empty cache; BERT's passes the probabilities through dropout; both must still be found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compressor.measure.onnx_file import flops_per_sample
from models.vision import import_torchvision

import_torchvision()  # transformers imports torchvision's image transforms when present
import transformers  # the test extra installs it

SMALL = {"num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
         "num_labels": 3}


class Logits(nn.Module):
    """A model's `.logits` (compressor needs one tensor out)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).logits


def bert() -> Logits:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=64, max_position_embeddings=32,
                                     attn_implementation="eager", **SMALL)
    return Logits(transformers.BertForSequenceClassification(config))


def gpt2() -> Logits:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4,
                                     n_positions=32, num_labels=3, pad_token_id=0,
                                     bos_token_id=1, eos_token_id=2,
                                     attn_implementation="eager")
    return Logits(transformers.GPT2ForSequenceClassification(config))


def gptj() -> Logits:
    """GPT-J: q and k rotated in interleaved pairs (stacked, then flattened back) on part of
    each head's features while the heads are still third, [batch, tokens, heads, d]."""
    torch.manual_seed(0)
    config = transformers.GPTJConfig(vocab_size=100, n_embd=64, n_layer=2, n_head=4,
                                     n_positions=32, rotary_dim=8, num_labels=3,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                     attn_implementation="eager")
    return Logits(transformers.GPTJForSequenceClassification(config))


def vit() -> Logits:
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=64,
                                    attn_implementation="eager", **SMALL)
    return Logits(transformers.ViTForImageClassification(config))


def llama() -> Logits:
    """Rotary position embeddings on q and k, 4 query heads over 2 key/value heads, RMSNorms
    written out op by op, a gated (SiLU) feed-forward."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=64, num_key_value_heads=2,
                                      max_position_embeddings=32, pad_token_id=0,
                                      attn_implementation="eager", **SMALL)
    return Logits(transformers.LlamaForSequenceClassification(config))


def phi3() -> Logits:
    """Llama's blocks with q, k, v cut out of one Linear by width and the gate and up
    projections fused into one, cut by chunk."""
    torch.manual_seed(0)
    config = transformers.Phi3Config(vocab_size=100, hidden_size=64, num_key_value_heads=2,
                                     max_position_embeddings=32, pad_token_id=0,
                                     eos_token_id=2, bos_token_id=1,
                                     attn_implementation="eager", **SMALL)
    return Logits(transformers.Phi3ForSequenceClassification(config))


def gemma(kv_heads: int = 2) -> Logits:
    """Llama's blocks with RMSNorms that scale by 1 + w and cast back with `type_as`, and its
    embeddings scaled by the square root of the width."""
    torch.manual_seed(0)
    config = transformers.GemmaConfig(vocab_size=100, hidden_size=64,
                                      num_key_value_heads=kv_heads, head_dim=16,
                                      max_position_embeddings=32, pad_token_id=0,
                                      attn_implementation="eager", **SMALL)
    return Logits(transformers.GemmaForSequenceClassification(config))


def qwen3() -> Logits:
    """Llama's blocks with each head's q and k normalized (RMSNorms over the head's features,
    written out) before the rotary embedding."""
    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=100, hidden_size=64, num_key_value_heads=2,
                                      head_dim=16, max_position_embeddings=32, pad_token_id=0,
                                      attn_implementation="eager", **SMALL)
    return Logits(transformers.Qwen3ForSequenceClassification(config))


def deberta() -> Logits:
    """DeBERTa-v3's disentangled attention: heads in the batch axis, its query and key Linears
    run again on the relative position embeddings, content-to-position and
    position-to-content scores gathered by relative position and added to the scores."""
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(
        vocab_size=100, hidden_size=64, max_position_embeddings=32, pad_token_id=0,
        relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=True,
        position_buckets=8, norm_rel_ebd="layer_norm", max_relative_positions=-1,
        position_biased_input=False, **SMALL)
    return Logits(transformers.DebertaV2ForSequenceClassification(config))


def mpnet() -> Logits:
    """MPNet (sentence-transformers' all-mpnet-base-v2): one relative position bias per head,
    computed once from one table and added in place to every layer's scores."""
    torch.manual_seed(0)
    config = transformers.MPNetConfig(vocab_size=100, hidden_size=64, max_position_embeddings=40,
                                      pad_token_id=0, **SMALL)
    return Logits(transformers.MPNetForSequenceClassification(config))


def t5() -> Logits:
    """T5 (encoder and decoder): one relative position bias per head in each stack, gathered
    once, masked by `where` and given to every layer's attention as its mask; a size read from
    the data (the end-of-sequence tokens the classifier reads)."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                   num_decoder_layers=2, num_heads=4, num_labels=3,
                                   pad_token_id=0, decoder_start_token_id=0)
    return Logits(transformers.T5ForSequenceClassification(config))


def _half_the_flops(run_cli, tmp_path: Path, arch: str, x: np.ndarray) -> tuple[dict, Path]:
    """`compress` of `arch` (saved as a state_dict) to 50% fewer FLOPs on `x`, one shot: its
    report, checked for the target's window and parity, and the file."""
    np.savez(tmp_path / "data.npz", x=x)
    model, out = tmp_path / f"{arch}.pt", tmp_path / f"{arch}.onnx"
    torch.save(globals()[arch]().eval().state_dict(), model)
    result = run_cli(model, "--arch", f"tests.graph.test_hf:{arch}", "--data",
                     tmp_path / "data.npz", "--target", "0.5", "--of", "flops", "-o", out,
                     "--no-latency", "--quiet")
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    assert 0.50 <= report["size"]["flop_reduction"] <= 0.52
    assert report["parity"]["max_abs_diff"] <= 1e-4
    return report, out


@pytest.mark.parametrize("arch", ["bert", "gpt2", "gptj", "vit"])
def test_half_the_flops_with_heads_pruned_and_parity(run_cli, tmp_path: Path, arch):
    g = np.random.default_rng(0)
    x = g.random((300, 3, 16, 16), dtype=np.float32) if arch == "vit" else \
        g.integers(3, 100, (300, 16))
    report, out = _half_the_flops(run_cli, tmp_path, arch, x)
    assert report["source"]["input"]["dtype"] == ("float32" if arch == "vit" else "int64")
    heads = [r for r in report["layers"] if r["note"] == "pruned heads"]
    assert len(heads) == 2 and any(r["out_after"] < r["out_before"] for r in heads)
    # the file's attention: q·kᵀ and probabilities·v per layer, [batch, heads, T, ...]
    proto = onnx.shape_inference.infer_shapes(onnx.load(out), data_prop=True)
    weights = {t.name for t in proto.graph.initializer}
    shapes = {v.name: v.type.tensor_type.shape.dim for v in proto.graph.value_info}
    exported = sorted(shapes[n.output[0]][1].dim_value for n in proto.graph.node
                      if n.op_type == "MatMul" and not set(n.input) & weights)
    per_layer = 16 * (3 if arch == "gpt2" else 1)  # q rows (q, k, v rows for GPT-2) per head
    assert exported == sorted(2 * [r["out_after"] // per_layer for r in heads])
    assert exported[0] < 4
    assert flops_per_sample(onnx.load(out)) == (report["size"]["flops_after"], ())  # = check


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_the_residual_width_of_a_pre_norm_model_is_rotated_and_cut(run_cli, tmp_path: Path,
                                                                   arch):
    """`--prune-stream`: GPT-2 (pre-norm, its token and position embeddings writing the
    stream) has its LayerNorms made RMSNorms and its width cut by a quarter in every layer;
    BERT (post-norm: a norm's output is the stream) keeps its features' basis and says why."""
    x = np.random.default_rng(0).integers(3, 100, (300, 16))
    np.savez(tmp_path / "data.npz", x=x)
    model, out = tmp_path / f"{arch}.pt", tmp_path / f"{arch}.onnx"
    torch.save(globals()[arch]().eval().state_dict(), model)
    result = run_cli(model, "--arch", f"tests.graph.test_hf:{arch}", "--data",
                     tmp_path / "data.npz", "--target", "0.5", "--of", "flops", "-o", out,
                     "--no-latency", "--prune-stream", "0.25")
    assert result.code == 0, result.err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert 0.50 <= report["size"]["flop_reduction"] <= 0.52
    stream = [r for r in report["layers"] if "residual stream" in r["note"]]
    assert stream and all(r["out_after"] == 48 for r in stream)
    ops = {n.op_type for n in onnx.load(out).graph.node}
    if arch == "gpt2":
        assert "rotates it to its principal directions" in result.err
        assert "LayerNormalization" not in ops
    else:
        assert "not rotated: the output of layer_norm goes back into the stream" in result.err


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma", "qwen3"])
def test_llama_loses_grouped_query_heads_through_its_rotary_embedding_and_its_width(
        run_cli, tmp_path: Path, arch):
    """Llama, Phi-3, Gemma and Qwen3: a unit is a key/value head with its two query heads,
    found through the rotary embedding on q and k (Phi-3's q, k and v cut out of one Linear,
    those cuts moved as heads go; its fused gate and up projections made two; Qwen3's norms
    of each head's q and k before it); with `--prune-stream`,
    their written-out RMSNorms read as norms, so the stream is rotated and cut."""
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(0).integers(3, 100, (300, 16)))
    model = tmp_path / f"{arch}.pt"
    torch.save(globals()[arch]().eval().state_dict(), model)
    for target, extra in (("0.7", ()), ("0.5", ("--prune-stream", "0.25"))):
        out = tmp_path / f"{arch}{target}.onnx"
        result = run_cli(model, "--arch", f"tests.graph.test_hf:{arch}", "--data",
                         tmp_path / "data.npz", "--target", target, "--of", "flops", "-o", out,
                         "--no-latency", *extra)
        assert result.code == 0, result.err
        report = json.loads(out.with_suffix(".json").read_text())
        assert float(target) <= report["size"]["flop_reduction"] <= float(target) + 0.02
        assert report["parity"]["max_abs_diff"] <= 1e-4
        assert flops_per_sample(onnx.load(out)) == (report["size"]["flops_after"], ())
        heads = [r for r in report["layers"] if r["note"] == "pruned heads"]
        assert len(heads) == 2
        if not extra:
            assert any(r["out_after"] < r["out_before"] for r in heads)
            k = [r for r in report["layers"] if r["name"].endswith("k_proj")]
            if arch != "phi3":
                assert [r["out_after"] for r in k] == [r["out_after"] // 2 for r in heads]
            else:
                gated = [r for r in report["layers"] if "gate_up_proj[" in r["name"]]
                assert len(gated) == 4 and gated[0]["note"] == "pruned"
        else:
            assert "RMSNorms folded into the layers that read them, so" in result.err
            stream = [r for r in report["layers"] if "residual stream" in r["note"]]
            assert stream and all(r["out_after"] == 48 for r in stream)


def gemma_multi_query() -> Logits:
    """Gemma-2B's attention: one key/value head for every query head, repeated by
    `repeat_kv`."""
    return gemma(kv_heads=1)


def falcon_multi_query() -> Logits:
    """Falcon-7B's attention: q heads, one k head and one v head out of one Linear, viewed
    [batch, tokens, heads + 2, d] and split by head."""
    torch.manual_seed(0)
    config = transformers.FalconConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_labels=3, pad_token_id=0,
                                       new_decoder_architecture=False, multi_query=True,
                                       attn_implementation="eager")
    return Logits(transformers.FalconForSequenceClassification(config))


def test_multi_query_attention_loses_query_heads_alone(run_cli, tmp_path: Path):
    """One key/value head read by every query head: each query head is a unit (its q rows,
    output columns and the head count `repeat_kv` writes); k and v stay whole. Falcon-7B's
    fused qkv keeps its k and v rows: 16 each beside the q heads left."""
    x = np.random.default_rng(0).integers(3, 100, (300, 16))
    report, _ = _half_the_flops(run_cli, tmp_path, "falcon_multi_query", x)
    fused = [r for r in report["layers"] if r["name"].endswith("query_key_value")]
    assert [r["note"] for r in fused] == ["pruned heads"] * 2
    assert all(r["out_after"] % 16 == 0 and r["out_after"] >= 48 for r in fused)
    assert any(r["out_after"] < 96 for r in fused)
    report, _ = _half_the_flops(run_cli, tmp_path, "gemma_multi_query", x)
    layers = {r["name"].removeprefix("inner.model."): r for r in report["layers"]}
    for block in (0, 1):
        q, k, v = (layers[f"layers.{block}.self_attn.{n}_proj"] for n in "qkv")
        assert q["note"] == "pruned heads" and k["out_after"] == v["out_after"] == 16
        assert k["note"] == v["note"] == "attention: one key/value head, read by every " \
                                         "query head (not pruned)"
    assert any(layers[f"layers.{b}.self_attn.q_proj"]["out_after"] < 64 for b in (0, 1))


@pytest.mark.parametrize("arch, key", [("deberta", "key_proj"), ("mpnet", "attn.k")])
def test_relative_position_scores_lose_the_removed_heads(run_cli, tmp_path: Path, arch, key):
    """DeBERTa-v3: the rows of a head in the query and key Linears go from both of their uses
    (the tokens and the position embeddings), the head count from every view and index on the
    way, and the position scores' products from the FLOPs as the file counts them. MPNet: each
    layer gets its own copy of the shared bias table and loses its own heads' columns."""
    x = np.random.default_rng(0).integers(3, 100, (300, 16))
    report, out = _half_the_flops(run_cli, tmp_path, arch, x)
    heads = [r for r in report["layers"] if r["note"] == "pruned heads"]
    keys = [r for r in report["layers"] if r["name"].endswith(key)]
    assert len(heads) == 2 and any(r["out_after"] < r["out_before"] for r in heads)
    assert [r["out_after"] for r in keys] == [r["out_after"] for r in heads]
    assert flops_per_sample(onnx.load(out)) == (report["size"]["flops_after"], ())


def test_t5_loses_heads_in_every_attention_through_its_shared_masked_position_bias(
        run_cli, tmp_path: Path):
    x = np.random.default_rng(0).integers(3, 100, (300, 16))
    x[:, -1] = 1  # T5's classifier reads the end-of-sequence token
    report, out = _half_the_flops(run_cli, tmp_path, "t5", x)
    heads = [r for r in report["layers"] if r["note"] == "pruned heads"]
    assert {r["name"].split(".")[2] for r in heads} == {"encoder", "decoder"}
    assert any(r["out_after"] < r["out_before"] for r in heads)
    assert flops_per_sample(onnx.load(out)) == (report["size"]["flops_after"], ())


def bloom() -> Logits:
    """BLOOM: ALiBi, a slope per head times each key's position, computed from numbers once,
    repeated over the batch and added to every layer's scores by `baddbmm`, whose heads are
    in the batch axis."""
    torch.manual_seed(0)
    config = transformers.BloomConfig(vocab_size=100, hidden_size=64, n_layer=2, n_head=4,
                                      num_labels=3, pad_token_id=0,
                                      attn_implementation="eager")
    return Logits(transformers.BloomForSequenceClassification(config))


def mpt() -> Logits:
    """MPT: ALiBi computed from numbers over the longest sequence, and each layer's slice of
    it for the sequence's length added to the scores; q, k, v chunked out of one Linear."""
    torch.manual_seed(0)
    config = transformers.MptConfig(vocab_size=100, d_model=64, n_heads=4, n_layers=2,
                                    expansion_ratio=2, max_seq_len=32, num_labels=3,
                                    pad_token_id=0)
    return Logits(transformers.MptForSequenceClassification(config))


@pytest.mark.parametrize("arch", ["bloom", "mpt"])
def test_alibi_loses_the_removed_heads_slopes(run_cli, tmp_path: Path, arch):
    """Each layer's ALiBi bias, [heads, 1, keys] in the file, keeps the rows of the heads it
    keeps: slopes of the dense model's."""
    x = np.random.default_rng(0).integers(3, 100, (300, 16))
    report, out = _half_the_flops(run_cli, tmp_path, arch, x)
    heads = [r["out_after"] // 48 for r in report["layers"] if r["note"] == "pruned heads"]
    assert len(heads) == 2 and min(heads) < 4
    proto = onnx.load(out)
    tables = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer
              if list(t.dims[1:]) == [1, 16]]
    assert {len(t) for t in tables} == set(heads)  # (the file holds equal tables once)
    dense_slopes = {0.25 ** k for k in range(1, 5)}  # 2^(-8/4 · k) for 4 heads
    for table in tables:  # a head's bias grows by its slope from one key to the next
        slopes = table[:, 0, -1] - table[:, 0, -2]
        assert all(min(abs(s - d) for d in dense_slopes) < 1e-6 for s in slopes)
    assert flops_per_sample(proto) == (report["size"]["flops_after"], ())
