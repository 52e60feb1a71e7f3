"""Fisher weights (compress.fisher) against the exact expectation over every label, summed by hand
from per-label gradients, and the `fisher` weighting of a data-aware fit end to end."""

import pytest
import torch

from tensorslim.compress.api import decompose
from tensorslim.compress.calibration import calibrate, calibration_data, input_moments, slice_covariances
from tensorslim.compress.fisher import output_fisher
from tensorslim.compress.inplace import bank_of, grouping, layout, matrix_of, targets
from tensorslim.decomposition.methods import get_method
from tensorslim.decomposition.slice_weights import fisher_weights
from tensorslim.decomposition.slices import stack
from tensorslim.decomposition.weighted import weighted_error
from tensorslim.errors import TensorslimError
from test_calibrated_decompose import text_file
from tiny_models import tiny_inputs, tiny_model, tiny_tokenizer


def exact_fisher(model, batch) -> dict[str, torch.Tensor]:
    """sum over prediction rows and labels y of p(y) (d -log p(y) / d output)^2, per output unit,
    over the real tokens, divided by their count: the expectation the sampled labels estimate."""
    found = targets(model)
    outputs = {}
    handles = [m.register_forward_hook(lambda m_, a, o, k=k: outputs.__setitem__(k, o)) for k, m, _ in found]
    handles.append(model.get_input_embeddings().register_forward_hook(lambda m_, a, o: o.detach().requires_grad_()))
    logits = model(**batch).logits
    for h in handles:
        h.remove()
    mask = batch["attention_mask"].bool()
    rows = logits if logits.dim() == 2 else logits[mask]  # (rows, classes)
    log_p = rows.log_softmax(-1)
    keys = list(outputs)
    total = {k: torch.zeros(outputs[k].shape[-1], dtype=torch.float64) for k in keys}
    for r in range(rows.shape[0]):
        for y in range(rows.shape[1]):
            grads = torch.autograd.grad(-log_p[r, y], [outputs[k] for k in keys], retain_graph=True)
            for k, g in zip(keys, grads, strict=True):
                total[k] += log_p[r, y].exp().item() * (g[mask].double() ** 2).sum(0)
    return {k: v / int(mask.sum()) for k, v in total.items()}


@pytest.mark.parametrize(
    ("model_type", "head", "batch", "draws"),
    [
        ("bert", "sequence_classification", dict(batch=3, length=10), 400),
        ("llama", "causal_lm", dict(batch=2, length=5), 120),
    ],
)
def test_sampled_fisher_estimates_the_exact_expectation(model_type, head, batch, draws):
    model = tiny_model(model_type, head)
    inputs = tiny_inputs(**batch)  # the first sequence right-padded
    exact = exact_fisher(model, inputs)
    sampled = output_fisher(model, [inputs] * draws, seed=0)
    assert sampled.keys() == exact.keys() == {k for k, _, _ in targets(model)}
    for key, want in exact.items():
        got = sampled[key]
        assert got.dtype == torch.float64 and got.shape == want.shape
        assert got.mean().item() == pytest.approx(want.mean().item(), rel=0.12), key  # a slice's phi
        assert ((got - want).norm() / want.norm()).item() < 0.15, key  # each output unit's D
    assert not any(p.grad is not None for p in model.parameters())


def test_fisher_is_deterministic_for_a_seed():
    model, batches = tiny_model("llama", "causal_lm"), [tiny_inputs(seed=s) for s in (1, 2)]
    a, b, c = (output_fisher(model, batches, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


def test_each_slice_takes_the_mean_fisher_of_its_outputs():
    model = tiny_model("bert", "sequence_classification")
    batches = [tiny_inputs(batch=3, length=24, seed=s) for s in (1, 2, 3)]
    moments = input_moments(model, batches)
    moments.fisher = output_fisher(model, batches)
    groups, layouts, _ = layout(model)
    (name,) = groups
    w = slice_covariances(moments, layouts)[name]
    rows, cols, D = w.rows_index.tolist(), w.cols_index.tolist(), 32
    for i in range(2):  # per layer: q, k, v, o, ffn_in.0-3 ([out, in]: input on the columns), ffn_out.0-3
        assert w.rows_fisher[rows.index(12 * i)] == moments.fisher[f"{i}.attention.self.query"].mean()
        for a in range(4):
            ffn_in = moments.fisher[f"{i}.intermediate.dense"][a * D : (a + 1) * D].mean()
            assert w.cols_fisher[cols.index(12 * i + 4 + a)] == ffn_in
            assert w.rows_fisher[rows.index(12 * i + 8 + a)] == moments.fisher[f"{i}.output.dense"].mean()
    scaled = fisher_weights(w)
    torch.testing.assert_close(scaled.rows_cov, w.rows_cov * w.rows_fisher[:, None, None])
    torch.testing.assert_close(scaled.cols_cov, w.cols_cov * w.cols_fisher[:, None, None])
    moments.fisher = None
    assert slice_covariances(moments, layouts)[name].rows_fisher is None
    with pytest.raises(TensorslimError, match="calibrate with fisher=True"):
        fisher_weights(slice_covariances(moments, layouts)[name])


def fisher_objective(teacher, student, moments) -> float:
    """sum_i phi_i f_i of the student's factors against the teacher's weights (an independent sum)."""
    section = student.config.quantization_config
    groups, layouts, found = layout(teacher, "all", **grouping(get_method(section.method, **section.options)))
    stacks = stack({k: matrix_of(m) for k, m, _ in found}, groups, layouts)
    weights = {n: fisher_weights(w) for n, w in slice_covariances(moments, layouts).items()}
    bank = bank_of(student)
    return sum(weighted_error(W, bank.reconstruct(n).detach(), weights[n]) for n, W in stacks.items())


def test_the_fisher_weighted_fit_lowers_the_fisher_weighted_error(tmp_path):
    teacher = tiny_model("llama", "causal_lm")
    data = calibration_data(teacher.config, text_file(tmp_path / "t.txt"), tiny_tokenizer(), samples=24,
                            seq_length=32, seed=0)  # fmt: skip
    calibration = calibrate(teacher, data, ops="all", fisher=True)
    assert calibration[1]["fisher"] is True and calibration[0].fisher is not None
    options = dict(rank=6, max_iter=6, layer_window=0, calibration=calibration)
    plain, _ = decompose(tiny_model("llama", "causal_lm"), "tucker", weighting="absolute", **options)
    fisher, record = decompose(tiny_model("llama", "causal_lm"), "tucker", weighting="fisher", **options)
    assert record["calibration"]["fisher"] is True
    assert fisher_objective(teacher, fisher, calibration[0]) < 0.97 * fisher_objective(teacher, plain, calibration[0])


def test_the_fisher_weighting_is_refused_without_its_weights_or_a_head(tmp_path):
    data = text_file(tmp_path / "t.txt")
    teacher = tiny_model("llama", "causal_lm")
    read = calibration_data(teacher.config, data, tiny_tokenizer(), samples=8, seq_length=32, seed=0)
    without = calibrate(teacher, read, ops="all")
    with pytest.raises(TensorslimError, match="calibrated without them"):
        decompose(teacher, "tucker", rank=6, weighting="fisher", calibration=without)
    with pytest.raises(TensorslimError, match="no prediction head"):
        decompose(tiny_model("llama"), "tucker", rank=6, weighting="fisher", calibration=data,
                  tokenizer=tiny_tokenizer(), calibration_samples=8, calibration_seq_length=32)  # fmt: skip
