"""decompose with calibration data, end to end on tiny models: every method's output error on the
calibration inputs is below its weight-only fit's, the record states it, and a seed fixes the fit."""

import pytest
import torch

from tensorslim.compress.api import decompose
from tensorslim.compress.calibration import calibrate, calibration_data, slice_covariances
from tensorslim.compress.inplace import bank_of, grouping, layout, matrix_of
from tensorslim.decomposition.methods import get_method
from tensorslim.decomposition.slices import stack
from tensorslim.decomposition.weighted import weighted_error
from tiny_models import tiny_model, tiny_tokenizer

HEADS = {"bert": "masked_lm", "llama": "causal_lm"}


def text_file(path, words=4000, seed=0):
    """Token runs with a skewed distribution, so that the input moments are far from isotropic."""
    g = torch.Generator().manual_seed(seed)
    ids = (torch.rand(words, generator=g) ** 3 * 93).long() + 3
    path.write_text("\n".join(" ".join(f"w{int(i)}" for i in ids[k : k + 40]) for k in range(0, words, 40)) + "\n")
    return path


def output_error(teacher, student, moments) -> float:
    """sqrt(F / F(0)) of the student's factors against the teacher's weights (an independent sum)."""
    section = student.config.quantization_config
    keywords = grouping(get_method(section.method, **section.options))  # the student's groups
    groups, layouts, found = layout(teacher, "all", **keywords)
    stacks = stack({k: matrix_of(m) for k, m, _ in found}, groups, layouts)
    moments = slice_covariances(moments, layouts)
    bank = bank_of(student)
    err = sum(weighted_error(W, bank.reconstruct(n).detach(), moments[n]) for n, W in stacks.items())
    total = sum(weighted_error(W, None, moments[n]) for n, W in stacks.items())
    return (err / total) ** 0.5


@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("method", ["lowrank", "svd", "shared", "tucker"])
def test_calibrated_fit_lowers_the_output_error_on_the_calibration_inputs(tmp_path, model_type, method):
    teacher = tiny_model(model_type, HEADS[model_type])
    data = calibration_data(teacher.config, text_file(tmp_path / "t.txt"), tiny_tokenizer(), samples=24,
                            seq_length=32, seed=0)  # fmt: skip
    calibration = calibrate(teacher, data, ops="all")
    moments = calibration[0]
    weight_only, wo = decompose(tiny_model(model_type, HEADS[model_type]), method, rank=8, max_iter=5)
    aware, rec = decompose(
        tiny_model(model_type, HEADS[model_type]), method, rank=8, max_iter=5, calibration=calibration
    )
    assert wo["calibrated_error"] is None and wo["calibration"] is None
    assert rec["calibration"]["tokens"] == calibration[1]["tokens"] >= 80
    assert rec["calibrated_error"] == pytest.approx(output_error(teacher, aware, moments), rel=1e-4)
    assert rec["calibrated_error"] < 0.97 * output_error(teacher, weight_only, moments)
    if method in ("lowrank", "svd"):  # the per-matrix SVD is the weight-error optimum
        assert rec["relative_error"] >= wo["relative_error"] - 1e-6
    assert all(g["relative_error"] < 1 for g in wo["groups"].values())
    assert all(g["calibrated_error"] < 1 for g in rec["groups"].values())


def test_a_calibrated_decomposition_is_deterministic_for_a_seed(tmp_path):
    data = text_file(tmp_path / "t.txt")
    fits = []
    for _ in range(2):
        teacher = tiny_model("llama", "causal_lm")
        student, _ = decompose(teacher, "tucker", rank=8, max_iter=3, calibration=data, tokenizer=tiny_tokenizer(),
                               calibration_samples=8, calibration_seq_length=32, seed=3)  # fmt: skip
        fits.append({k: v.clone() for k, v in bank_of(student).state_dict().items()})
    assert fits[0].keys() == fits[1].keys()
    assert all(torch.equal(fits[0][k], fits[1][k]) for k in fits[0])


def test_a_teacher_passed_as_a_model_needs_its_tokenizer(tmp_path):
    from tensorslim.errors import TensorslimError

    with pytest.raises(TensorslimError, match="needs the teacher's tokenizer"):
        decompose(tiny_model("llama", "causal_lm"), "lowrank", rank=8, calibration=text_file(tmp_path / "t.txt"))
