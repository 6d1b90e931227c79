"""The HF Trainer's optim names are accepted wherever an optimizer is named."""

from __future__ import annotations

import pytest

from bench import cell as cellmod, optimizer_names
from bench.errors import UserError


@pytest.mark.parametrize(
    "hf, ours",
    [
        ("adamw_torch_fused", "adamw"),
        ("adamw_torch", "adamw-foreach"),
        ("paged_adamw_8bit", "adamw-8bit"),
        ("adamw_bnb_8bit", "adamw-8bit"),
        ("sgd", "sgd"),
        ("adafactor", "adafactor"),
        ("ADAMW_TORCH_FUSED", "adamw"),
    ],
)
def test_trainer_names_become_the_same_cell(hf, ours):
    a = cellmod.normalize({"model": "gpt2", "gpu": "h100-80gb", "optimizer": hf})
    b = cellmod.normalize({"model": "gpt2", "gpu": "h100-80gb", "optimizer": ours})
    assert a.optimizer == ours and a == b and a.cell_id == b.cell_id


def test_the_trainer_names_are_its_own():
    """Each accepted spelling is a real ``TrainingArguments.optim`` value."""
    from transformers.training_args import OptimizerNames

    assert set(optimizer_names.HF_NAMES) <= {o.value for o in OptimizerNames}


def test_an_unknown_optimizer_is_one_line_with_every_allowed_name():
    with pytest.raises(UserError) as e:
        cellmod.normalize({"model": "gpt2", "gpu": "h100-80gb", "optimizer": "lion_8bit"})
    (line,) = e.value.problems
    assert line.startswith("optimizer: 'lion_8bit' is not allowed; allowed: adamw, adamw-foreach")
    assert "adamw_torch_fused" in line and "paged_adamw_8bit" in line


def test_matrix_sweeps_and_excludes_take_trainer_names(write_matrix):
    from bench import matrix

    m = matrix.load(
        write_matrix(
            "gpu: h100-80gb\nsweep: {model: [gpt2], optimizer: [adamw_torch_fused, adamw_torch, sgd]}\n"
            "exclude: [{optimizer: adamw}]\n"
        )
    )
    assert [c.optimizer for c in m.cells] == ["adamw-foreach", "sgd"]
    cells = matrix.load(write_matrix("gpu: h100-80gb\nsweep: {model: [gpt2]}\n"), ["optimizer=paged_adamw_8bit"]).cells
    assert [c.optimizer for c in cells] == ["adamw-8bit"]
